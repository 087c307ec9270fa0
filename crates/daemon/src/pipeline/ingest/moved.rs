//! Pushes copied in from another database when their app moves here
//! (`crate::admin::moves`): ingest owns `inbound_messages`, so the copy's
//! statement is here.

/// Inserts `rows` (a JSON array of `inbound_messages` rows read from the
/// app's old database, every one `done`) with ids of this database, and
/// marks `done` the pushes this database stored meanwhile that the old one
/// had already (a platform retry that arrived after the switch: answered
/// there, never to be decided here). Returns (copied, duplicates).
///
/// # Errors
/// Database errors.
pub(crate) async fn copy_in(
    tx: &mut sqlx::PgConnection,
    rows: &serde_json::Value,
) -> Result<(i64, i64), sqlx::Error> {
    let r = sqlx::query!(
        r#"WITH src AS (SELECT * FROM json_populate_recordset(NULL::inbound_messages, $1::json)),
           ins AS (
             INSERT INTO inbound_messages (id, day, app_key, mcid, user_id, msg_type, dedup_key, msg_id,
                                           create_time, message, raw, trace_id, received_at, status,
                                           processed_at, state_change)
             SELECT pubbot_id(day, nextval('inbound_messages_id_seq')), day, app_key, mcid, user_id,
                    msg_type, dedup_key, msg_id, create_time, message, raw, trace_id, received_at,
                    status, processed_at, state_change
               FROM src ORDER BY id
             ON CONFLICT DO NOTHING
             RETURNING 1),
           dup AS (
             UPDATE inbound_messages d SET status = 'done', processed_at = now()
               FROM src
              WHERE d.app_key = src.app_key AND d.mcid = src.mcid AND d.dedup_key = src.dedup_key
                AND d.day = src.day AND d.status = 'pending'
             RETURNING 1)
           SELECT (SELECT count(*) FROM ins) AS "copied!", (SELECT count(*) FROM dup) AS "duplicates!""#,
        rows
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((r.copied, r.duplicates))
}
