//! Templates for broadcasts and campaigns: the same engine as replies
//! (minijinja, no HTML escaping, unknown variables refused when checked),
//! with the variables a mass send can know at send time.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

/// What a broadcast template can use.
pub const BROADCAST_VARIABLES: [&str; 7] = [
    "date",
    "weekday",
    "time",
    "followers",
    "account",
    "app_key",
    "platform_day",
];

/// The values of [`BROADCAST_VARIABLES`] at send time.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastVars {
    /// Local date of the schedule's time zone, `YYYY-MM-DD`.
    pub date: String,
    /// Local weekday, `mon`..`sun`.
    pub weekday: String,
    /// Local time, `HH:MM`.
    pub time: String,
    /// Followers pubbot tracks for the account.
    pub followers: i64,
    /// The account.
    pub account: String,
    /// The app.
    pub app_key: String,
    /// The platform's natural day (UTC+8), `YYYY-MM-DD`.
    pub platform_day: String,
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
}

/// Checks that `source` is a template that uses only
/// [`BROADCAST_VARIABLES`].
///
/// # Errors
/// The template error, or the unknown variables.
pub fn check_broadcast_template(source: &str) -> Result<(), String> {
    let env = env();
    let tpl = env
        .template_from_str(source)
        .map_err(|e| format!("template error: {e}"))?;
    let filters = crate::render::unknown_filters(&env, source);
    if !filters.is_empty() {
        return Err(format!(
            "template uses the filter {}, which does not exist",
            filters.join(", ")
        ));
    }
    let mut unknown: Vec<String> = tpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !BROADCAST_VARIABLES.contains(&v.as_str()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(format!(
        "template uses {}, which a broadcast does not know; the variables are {}",
        unknown.join(", "),
        BROADCAST_VARIABLES.join(", ")
    ))
}

/// Renders `source` with `vars`.
///
/// # Errors
/// The template or render error.
pub fn render_broadcast(source: &str, vars: &BroadcastVars) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(source.to_owned());
    }
    env()
        .render_str(source, vars)
        .map_err(|e| format!("render error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_checked_and_rendered() {
        let vars = BroadcastVars {
            date: "2026-11-26".into(),
            weekday: "thu".into(),
            time: "09:00".into(),
            followers: 1050,
            account: "shop".into(),
            app_key: "app".into(),
            platform_day: "2026-11-26".into(),
        };
        check_broadcast_template(
            "Good morning ({{ weekday }} {{ date }}), {{ followers }} of you!",
        )
        .unwrap();
        assert_eq!(
            render_broadcast("{{ followers }} on {{ platform_day }}", &vars).unwrap(),
            "1050 on 2026-11-26"
        );
        let e = check_broadcast_template("hi {{ user }}").unwrap_err();
        assert!(e.contains("user") && e.contains("followers"), "{e}");
        assert!(check_broadcast_template("{{ unclosed").is_err());
    }
}
