//! Templates (minijinja, sandboxed) and the platform's limits on what they
//! render (R9).
//!
//! Limits policy: a rendered text longer than 2000 bytes is **truncated** on
//! a UTF-8 boundary and the truncation is reported as a problem; an article
//! description wider than 2000 (CJK counts 2) likewise. A text that renders
//! empty, or a template that fails at run time, drops that one reply and is
//! reported; the other replies go out.

use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior, Value};
use regex::Captures;

use crate::decision::{Article, Context, Incoming, Media, PlannedReply};
use crate::model::ArticleTemplate;

pub use pubbot_protocol::limits::{ARTICLES_MAX, DESCRIPTION_MAX_WIDTH, TEXT_MAX_BYTES};

/// The variables a reply template can use.
pub const VARIABLES: [&str; 12] = [
    "user", "account", "app_key", "text", "kind", "captures", "named", "now", "date", "time",
    "weekday", "state",
];

/// minijinja's own globals (functions and the loop variable).
const GLOBALS: [&str; 5] = ["range", "dict", "namespace", "debug", "loop"];

/// The filters `source` applies that `env` does not have, sorted. minijinja
/// looks a filter up only when it runs, so a misspelt one (`{{ user |
/// uper }}`) would compile and then fail every render: each name that
/// follows a `|` inside `{{ }}` or `{% %}` (string literals left out) is
/// tried on `env` itself, which is the authority on what exists.
pub(crate) fn unknown_filters(env: &Environment<'_>, source: &str) -> Vec<String> {
    use std::sync::LazyLock;
    static BLOCK: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}").expect("valid"));
    static STRING: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#).expect("valid")
    });
    static FILTER: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"\|\s*([A-Za-z_][A-Za-z0-9_]*)").expect("valid"));
    let mut names: Vec<String> = BLOCK
        .find_iter(source)
        .flat_map(|block| {
            let code = STRING.replace_all(block.as_str(), "\"\"").into_owned();
            FILTER
                .captures_iter(&code)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names.retain(|name| {
        let probe = format!("{{{{ x | {name} }}}}");
        matches!(
            env.render_str(&probe, minijinja::context! { x => "" }),
            Err(e) if e.kind() == minijinja::ErrorKind::UnknownFilter
        )
    });
    names
}

/// A reply as compiled: templates ready to render.
pub(crate) enum CompiledReply {
    Text(Tmpl),
    Image(Media),
    Voice(Media),
    News(Vec<ArticleTmpl>),
}

/// A text field: a literal needs no engine at all.
pub(crate) enum Tmpl {
    Literal(String),
    /// A template by name, and the variables it reads (bits by place in
    /// [`VARIABLES`]): only those are computed when it renders.
    Template(String, u16),
}

/// The bits of the [`VARIABLES`] a template reads.
fn uses(names: &std::collections::HashSet<String>) -> u16 {
    VARIABLES
        .iter()
        .enumerate()
        .filter(|(_, v)| names.contains(**v))
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

pub(crate) struct ArticleTmpl {
    title: Tmpl,
    description: Option<Tmpl>,
    url: Option<String>,
    picurl: String,
}

pub(crate) struct Templates {
    env: Environment<'static>,
    /// Some template reads `state`.
    pub(crate) uses_state: bool,
}

impl Templates {
    pub(crate) fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        // Plain text out: no HTML escaping of what users typed.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        Self {
            env,
            uses_state: false,
        }
    }

    pub(crate) fn add(&mut self, name: &str, source: &str) -> Result<Tmpl, String> {
        if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
            return Ok(Tmpl::Literal(source.to_owned()));
        }
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|e| format!("template error: {e}"))?;
        // A variable that does not exist renders as nothing (lenient), which
        // would be a silent gap in a reply: refused when the rule compiles.
        let tpl = self
            .env
            .get_template(name)
            .map_err(|e| format!("template error: {e}"))?;
        let names = tpl.undeclared_variables(false);
        let mut unknown: Vec<String> = names
            .iter()
            .filter(|v| !VARIABLES.contains(&v.as_str()) && !GLOBALS.contains(&v.as_str()))
            .cloned()
            .collect();
        if names.contains("state") {
            self.uses_state = true;
        }
        let filters = unknown_filters(&self.env, source);
        if !filters.is_empty() {
            return Err(format!(
                "template uses the filter {}, which does not exist (the filters are minijinja's builtins: upper, lower, title, capitalize, trim, replace, default, length, join, first, last, ...)",
                filters.join(", ")
            ));
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!(
                "template uses {}, which {} not defined; the variables are {}",
                unknown.join(", "),
                if unknown.len() == 1 { "is" } else { "are" },
                VARIABLES.join(", ")
            ));
        }
        Ok(Tmpl::Template(name.to_owned(), uses(&names)))
    }

    fn render(&self, t: &Tmpl, vars: &Vars<'_>) -> Result<String, String> {
        match t {
            Tmpl::Literal(s) => Ok(s.clone()),
            Tmpl::Template(name, uses) => self
                .env
                .get_template(name)
                .and_then(|tpl| tpl.render(vars.value(*uses)))
                .map_err(|e| format!("render error: {e}")),
        }
    }
}

pub(crate) fn compile_articles(
    templates: &mut Templates,
    key: &str,
    articles: &[ArticleTemplate],
) -> Result<Vec<ArticleTmpl>, String> {
    if articles.is_empty() || articles.len() > ARTICLES_MAX {
        return Err(format!(
            "news has {} articles, 1 to {ARTICLES_MAX} are allowed",
            articles.len()
        ));
    }
    let mut out = Vec::with_capacity(articles.len());
    for (i, a) in articles.iter().enumerate() {
        if a.title.trim().is_empty() {
            return Err(format!("article {}: title is required", i + 1));
        }
        if a.picurl.trim().is_empty() {
            return Err(format!("article {}: picurl is required", i + 1));
        }
        let title = templates.add(&format!("{key}/a{i}/title"), &a.title)?;
        let description = match &a.description {
            Some(d) => Some(templates.add(&format!("{key}/a{i}/description"), d)?),
            None => None,
        };
        out.push(ArticleTmpl {
            title,
            description,
            url: a.url.clone(),
            picurl: a.picurl.clone(),
        });
    }
    Ok(out)
}

/// Template variables: `user`, `account`, `app_key`, `text`, `kind`,
/// `captures` (list: 0 is the whole match), `named` (map of named
/// captures), `now` (`YYYY-MM-DD HH:MM` local), `date`, `time`, `weekday`,
/// `state`. Computed when a template renders, and only those it reads:
/// literal replies never pay for them, and `ack {{ captures[1] }}` does not
/// format four dates (it showed in the daemon's profile).
pub(crate) struct Vars<'a> {
    msg: &'a Incoming<'a>,
    ctx: &'a Context,
    tz: Tz,
    captures: Option<&'a Captures<'a>>,
    names: &'a [Option<&'a str>],
}

impl<'a> Vars<'a> {
    pub(crate) fn new(
        msg: &'a Incoming<'a>,
        ctx: &'a Context,
        tz: Tz,
        captures: Option<&'a Captures<'a>>,
        names: &'a [Option<&'a str>],
    ) -> Self {
        Self {
            msg,
            ctx,
            tz,
            captures,
            names,
        }
    }

    /// The context of a template that reads the variables `uses` (bits by
    /// place in [`VARIABLES`]).
    fn value(&self, uses: u16) -> Value {
        let local = self.ctx.now.with_timezone(&self.tz);
        let captures = || {
            let mut list = Vec::new();
            let mut named = std::collections::BTreeMap::new();
            if let Some(c) = self.captures {
                for (i, m) in c.iter().enumerate() {
                    let text = m.map(|m| m.as_str().to_owned()).unwrap_or_default();
                    if let Some(Some(name)) = self.names.get(i) {
                        named.insert((*name).to_owned(), text.clone());
                    }
                    list.push(text);
                }
            }
            (list, named)
        };
        let mut vars: Vec<(&'static str, Value)> = Vec::with_capacity(4);
        for (i, name) in VARIABLES.iter().enumerate() {
            if uses & (1 << i) == 0 {
                continue;
            }
            let v = match *name {
                "user" => Value::from(self.msg.user),
                "account" => Value::from(self.msg.mcid),
                "app_key" => Value::from(self.msg.app_key),
                "text" => Value::from(self.msg.text),
                "kind" => Value::from_serialize(self.msg.kind),
                "captures" => Value::from_serialize(captures().0),
                "named" => Value::from_serialize(captures().1),
                "now" => Value::from(local.format("%Y-%m-%d %H:%M").to_string()),
                "date" => Value::from(local.format("%Y-%m-%d").to_string()),
                "time" => Value::from(local.format("%H:%M").to_string()),
                "weekday" => Value::from(local.format("%a").to_string().to_lowercase()),
                "state" => Value::from_serialize(
                    self.msg
                        .state
                        .cloned()
                        .unwrap_or_else(|| serde_json::json!({})),
                ),
                _ => continue,
            };
            vars.push((name, v));
        }
        vars.into_iter().collect()
    }
}

pub use pubbot_protocol::width;

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_bytes(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

fn truncate_width(s: &mut String, max: usize) -> bool {
    let mut w = 0;
    for (i, c) in s.char_indices() {
        w += width(c.encode_utf8(&mut [0; 4]));
        if w > max {
            s.truncate(i);
            return true;
        }
    }
    false
}

/// Renders one reply: the planned reply (None when dropped) and notes.
pub(crate) fn reply(
    t: &Templates,
    reply: &CompiledReply,
    vars: &Vars<'_>,
) -> Result<(Option<PlannedReply>, Vec<String>), String> {
    let mut notes = Vec::new();
    let planned = match reply {
        CompiledReply::Text(tmpl) => {
            let mut content = t.render(tmpl, vars)?;
            if content.trim().is_empty() {
                return Err("text rendered empty; reply dropped".into());
            }
            if truncate_bytes(&mut content, TEXT_MAX_BYTES) {
                notes.push(format!("text truncated to {TEXT_MAX_BYTES} bytes"));
            }
            PlannedReply::Text { content }
        }
        CompiledReply::Image(m) => PlannedReply::Image { media: m.clone() },
        CompiledReply::Voice(m) => PlannedReply::Voice { media: m.clone() },
        CompiledReply::News(articles) => {
            let mut out = Vec::with_capacity(articles.len());
            for a in articles {
                let title = t.render(&a.title, vars)?;
                if title.trim().is_empty() {
                    return Err("article title rendered empty; reply dropped".into());
                }
                let description = match &a.description {
                    Some(d) => {
                        let mut d = t.render(d, vars)?;
                        if truncate_width(&mut d, DESCRIPTION_MAX_WIDTH) {
                            notes.push(format!(
                                "description truncated to width {DESCRIPTION_MAX_WIDTH}"
                            ));
                        }
                        Some(d)
                    }
                    None => None,
                };
                out.push(Article {
                    title,
                    description,
                    url: a.url.clone(),
                    picurl: a.picurl.clone(),
                });
            }
            PlannedReply::News { articles: out }
        }
    };
    Ok((Some(planned), notes))
}
