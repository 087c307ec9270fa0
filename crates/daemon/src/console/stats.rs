//! The Statistics page: pushes, replies sent, failed replies and
//! broadcasts per day, and replies per rule, as server-rendered SVG bar
//! charts (no script, readable as a table too), from the tables the
//! pipeline writes — the same rows `/metrics` counts as they happen.

use axum::extract::{Query, State};
use axum::response::Html;
use axum::Extension;
use chrono::NaiveDate;

use super::auth::Staff;
use super::{escape, PageError, ScopeQuery, Shared};

/// Days the charts cover.
const DAYS: i32 = 14;

/// One bar chart as SVG: `bars` are (label, value); the height scales to
/// the largest value. Labels and title are escaped.
pub(crate) fn bar_chart(title: &str, bars: &[(String, i64)], colour: &str) -> String {
    let (w, h, pad, bottom) = (640.0_f64, 200.0_f64, 36.0_f64, 40.0_f64);
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let n = bars.len().max(1) as f64;
    let slot = (w - pad) / n;
    let mut out = format!(
        "<svg role=\"img\" aria-label=\"{t}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\"><title>{t}</title>",
        t = escape(title)
    );
    out.push_str(&format!(
        "<line x1=\"{pad}\" y1=\"{y}\" x2=\"{w}\" y2=\"{y}\" class=\"axis\"/><text x=\"2\" y=\"14\" class=\"tick\">{max}</text><text x=\"2\" y=\"{y}\" class=\"tick\">0</text>",
        y = h - bottom,
        max = max as i64
    ));
    for (i, (label, v)) in bars.iter().enumerate() {
        let bh = (*v as f64 / max) * (h - bottom - 10.0);
        let x = pad + i as f64 * slot + slot * 0.15;
        let y = h - bottom - bh;
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{l}: {v}</title></rect>",
            bw = slot * 0.7,
            l = escape(label)
        ));
        if bars.len() <= 16 || i % 2 == 0 {
            out.push_str(&format!(
                "<text x=\"{tx:.1}\" y=\"{ty}\" class=\"label\" text-anchor=\"middle\">{l}</text>",
                tx = x + slot * 0.35,
                ty = h - bottom + 14.0,
                l = escape(label)
            ));
        }
    }
    out.push_str("</svg>");
    out
}

fn per_day(rows: &[(NaiveDate, i64)], days: &[NaiveDate]) -> Vec<(String, i64)> {
    days.iter()
        .map(|d| {
            (
                d.format("%m-%d").to_string(),
                rows.iter().find(|r| r.0 == *d).map_or(0, |r| r.1),
            )
        })
        .collect()
}

/// `GET /stats`.
pub(crate) async fn page(
    State(c): Shared,
    Extension(staff): Extension<Staff>,
    Query(q): Query<ScopeQuery>,
) -> Result<Html<String>, PageError> {
    let scope = c.scope(&q).await?;
    let (app, mcid) = scope.picked.clone().unwrap_or_default();
    let tz = c.settings.timezone.clone();
    let today = c
        .clock
        .now()
        .with_timezone(
            &tz.parse::<chrono_tz::Tz>()
                .unwrap_or(chrono_tz::Asia::Shanghai),
        )
        .date_naive();
    let days: Vec<NaiveDate> = (0..DAYS)
        .rev()
        .filter_map(|i| today.checked_sub_days(chrono::Days::new(i as u64)))
        .collect();
    let pushes: Vec<(NaiveDate, i64)> = sqlx::query!(
        r#"SELECT (received_at AT TIME ZONE $3)::date AS "day!", count(*) AS "n!" FROM inbound_messages
            WHERE app_key = $1 AND mcid = $2 AND received_at > now() - make_interval(days => $4)
            GROUP BY 1"#,
        app, mcid, tz, DAYS + 1
    )
    .fetch_all(&c.pool)
    .await?
    .into_iter()
    .map(|r| (r.day, r.n))
    .collect();
    let replies = sqlx::query!(
        r#"SELECT (created_at AT TIME ZONE $3)::date AS "day!",
                  count(*) FILTER (WHERE status = 'sent') AS "sent!",
                  count(*) FILTER (WHERE status IN ('failed', 'expired')) AS "failed!"
             FROM outbound_messages
            WHERE app_key = $1 AND mcid = $2 AND created_at > now() - make_interval(days => $4)
            GROUP BY 1"#,
        app,
        mcid,
        tz,
        DAYS + 1
    )
    .fetch_all(&c.pool)
    .await?;
    let sent: Vec<(NaiveDate, i64)> = replies.iter().map(|r| (r.day, r.sent)).collect();
    let failed: Vec<(NaiveDate, i64)> = replies.iter().map(|r| (r.day, r.failed)).collect();
    let broadcasts: Vec<(NaiveDate, i64)> = sqlx::query!(
        r#"SELECT platform_day AS "day!", count(*) AS "n!" FROM broadcasts
            WHERE app_key = $1 AND mcid = $2 AND state = 'sent' AND platform_day > current_date - $3::int4
            GROUP BY 1"#,
        app, mcid, DAYS + 1
    )
    .fetch_all(&c.pool)
    .await?
    .into_iter()
    .map(|r| (r.day, r.n))
    .collect();
    let per_rule: Vec<(String, i64)> = sqlx::query!(
        r#"SELECT rule_name, count(*) AS "n!" FROM outbound_messages
            WHERE app_key = $1 AND mcid = $2 AND created_at > now() - make_interval(days => $3)
            GROUP BY 1 ORDER BY 2 DESC LIMIT 12"#,
        app,
        mcid,
        DAYS
    )
    .fetch_all(&c.pool)
    .await?
    .into_iter()
    .map(|r| (r.rule_name, r.n))
    .collect();
    let series = [
        ("Pushes received", per_day(&pushes, &days), "#2563eb"),
        ("Replies sent", per_day(&sent, &days), "#16a34a"),
        (
            "Replies failed or expired",
            per_day(&failed, &days),
            "#dc2626",
        ),
        ("Broadcasts sent", per_day(&broadcasts, &days), "#9333ea"),
    ];
    let charts: Vec<_> = series
        .iter()
        .map(|(title, bars, colour)| {
            minijinja::context! {
                title => title, svg => minijinja::Value::from_safe_string(bar_chart(title, bars, colour)),
                total => bars.iter().map(|b| b.1).sum::<i64>(),
                rows => bars.iter().map(|(l, v)| minijinja::context! { label => l, value => v }).collect::<Vec<_>>(),
            }
        })
        .collect();
    let rules_chart =
        minijinja::Value::from_safe_string(bar_chart("Replies per rule", &per_rule, "#0891b2"));
    let rule_rows: Vec<_> = per_rule
        .iter()
        .map(|(l, v)| minijinja::context! { label => l, value => v })
        .collect();
    c.render(
        "stats.html",
        minijinja::context! { base => c.base, staff => staff.value(), page => "stats", scope => scope.value(), charts, rules_chart, rule_rows, days => DAYS, timezone => tz },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chart_escapes_its_labels_and_scales_to_the_largest_bar() {
        let svg = super::bar_chart("a <b>", &[("x&y".into(), 5), ("z".into(), 10)], "#000");
        assert!(
            svg.contains("a &lt;b&gt;") && svg.contains("x&amp;y"),
            "{svg}"
        );
        assert!(!svg.contains("<b>"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(
            svg.contains(">10<"),
            "the axis names the largest value: {svg}"
        );
    }
}
