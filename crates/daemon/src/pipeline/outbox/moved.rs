//! Replies copied in from another database when their app moves here
//! (`crate::admin::moves`): the outbox owns `outbound_messages`, so the
//! copy's statement is here.

/// Inserts `rows` (a JSON array of settled `outbound_messages` rows read
/// from the app's old database, each with `inbound_dedup_key`, the R6 key
/// of its push) with ids of this database, each linked to its push as
/// copied by `ingest::moved::copy_in` (found by its key). Returns how many.
///
/// # Errors
/// Database errors.
pub(crate) async fn copy_in(
    tx: &mut sqlx::PgConnection,
    rows: &serde_json::Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH src AS (
             SELECT r.*, e->>'inbound_dedup_key' AS k
               FROM json_array_elements($1::json) e,
                    LATERAL json_populate_record(NULL::outbound_messages, e) r),
           ins AS (
             INSERT INTO outbound_messages (id, day, inbound_id, reply_index, sub_index, app_key, mcid,
                                            user_id, rule_name, payload, trace_id, status, attempts,
                                            next_attempt_at, last_error, created_at, sent_at, handler)
             SELECT pubbot_id(src.day, nextval('outbound_messages_id_seq')), src.day, i.id,
                    src.reply_index, src.sub_index, src.app_key, src.mcid, src.user_id, src.rule_name,
                    src.payload, src.trace_id, src.status, src.attempts, src.next_attempt_at,
                    src.last_error, src.created_at, src.sent_at, src.handler
               FROM src
               LEFT JOIN inbound_messages i
                 ON i.app_key = src.app_key AND i.mcid = src.mcid AND i.dedup_key = src.k
                AND i.day = src.day
              ORDER BY src.id
             ON CONFLICT DO NOTHING
             RETURNING 1)
           SELECT count(*) AS "copied!" FROM ins"#,
        rows
    )
    .fetch_one(&mut *tx)
    .await
}
