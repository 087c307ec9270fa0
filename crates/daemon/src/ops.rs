//! The operator commands of the binary: broadcasts, campaigns, followers.
//! Output on stdout (a table, or `--json`), errors through `main`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand, ValueEnum};
use pubbot::broadcast::{self, BroadcastContent};
use pubbot::clock::{platform_day, Clock, SystemClock};
use pubbot::config::Settings;
use secrecy::SecretString;

/// What to send: exactly one of these.
#[derive(Args, Debug, Clone)]
pub struct ContentArgs {
    /// Text (a template: {{ date }}, {{ weekday }}, {{ time }},
    /// {{ followers }}, {{ account }}, {{ platform_day }}).
    #[arg(long)]
    text: Option<String>,
    /// An image by URL.
    #[arg(long)]
    image_url: Option<String>,
    /// An uploaded image by media_id.
    #[arg(long)]
    image_media_id: Option<String>,
    /// A voice by URL.
    #[arg(long)]
    voice_url: Option<String>,
    /// An uploaded voice by media_id.
    #[arg(long)]
    voice_media_id: Option<String>,
    /// Uploaded news material by media_id (mpnews).
    #[arg(long)]
    mpnews: Option<String>,
    /// A TOML or JSON file with the content, e.g. inline news:
    /// `type = "news"` and `[[articles]]` with title, description, url,
    /// picurl.
    #[arg(long)]
    content: Option<PathBuf>,
}

impl ContentArgs {
    fn content(&self) -> anyhow::Result<BroadcastContent> {
        let mut given = Vec::new();
        if let Some(t) = &self.text {
            given.push(BroadcastContent::Text { text: t.clone() });
        }
        if self.image_url.is_some() || self.image_media_id.is_some() {
            given.push(BroadcastContent::Image {
                url: self.image_url.clone(),
                media_id: self.image_media_id.clone(),
            });
        }
        if self.voice_url.is_some() || self.voice_media_id.is_some() {
            given.push(BroadcastContent::Voice {
                url: self.voice_url.clone(),
                media_id: self.voice_media_id.clone(),
            });
        }
        if let Some(m) = &self.mpnews {
            given.push(BroadcastContent::Mpnews {
                media_id: m.clone(),
            });
        }
        if let Some(path) = &self.content {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let c: BroadcastContent = if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)
                    .with_context(|| format!("{} is not broadcast content", path.display()))?
            } else {
                toml::from_str(&text)
                    .with_context(|| format!("{} is not broadcast content", path.display()))?
            };
            given.push(c);
        }
        match given.len() {
            1 => Ok(given.remove(0)),
            0 => bail!("say what to send: --text, --image-url, --image-media-id, --voice-url, --voice-media-id, --mpnews or --content FILE"),
            _ => bail!("give one content option, not {}", given.len()),
        }
    }
}

/// The account an operation is for.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// App key (default: the only configured app).
    #[arg(long)]
    app: Option<String>,
    /// Account (mcid); must be hosted by the app (apps.accounts).
    #[arg(long)]
    account: String,
}

impl Target {
    fn resolve(&self, settings: &Settings) -> anyhow::Result<(String, String)> {
        let app = match (&self.app, settings.apps.as_slice()) {
            (Some(a), _) => settings
                .apps
                .iter()
                .find(|x| &x.key == a)
                .with_context(|| format!("app {a:?} is not configured (apps.key)"))?,
            (None, [only]) => only,
            (None, []) => bail!("no app is configured ([[apps]])"),
            (None, _) => bail!("several apps are configured: say which with --app"),
        };
        if !app.accounts.hosts(&self.account) {
            bail!(
                "account {:?} is not hosted by app {:?} (apps.accounts)",
                self.account,
                app.key
            );
        }
        Ok((app.key.clone(), self.account.clone()))
    }
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum Outcome {
    Sent,
    Failed,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum ExportFormat {
    Csv,
    Json,
}

/// `pubbot broadcast ...`
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum BroadcastCommand {
    /// A daily broadcast at a local time of day.
    #[command(
        after_help = "Example:\n  pubbot broadcast schedule --account shop --name morning --at 09:00 \\\n    --text 'Good morning! {{ followers }} of you read us on {{ weekday }}.'\n\nThe platform allows one mass send a natural day in UTC+8 (R11); each\noccurrence takes its platform day in the ledger, and a day another\nbroadcast took is skipped."
    )]
    Schedule {
        #[command(flatten)]
        target: Target,
        /// Name, unique per account.
        #[arg(long)]
        name: String,
        /// Local time of day, HH:MM.
        #[arg(long)]
        at: String,
        /// Time zone of --at (default: broadcast.timezone).
        #[arg(long)]
        timezone: Option<String>,
        #[command(flatten)]
        content: ContentArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A one-off broadcast: now, or at a local date and time.
    #[command(
        after_help = "Examples:\n  pubbot broadcast once --account shop --now --text 'We are open late today'\n  pubbot broadcast once --account shop --at '2026-11-26 18:00' --image-url http://x/p.jpg\n\nRefused when its platform day is taken, naming the broadcast that took it."
    )]
    Once {
        #[command(flatten)]
        target: Target,
        /// Local date and time, `YYYY-MM-DD HH:MM`.
        #[arg(long, conflicts_with = "now")]
        at: Option<String>,
        /// Send at once.
        #[arg(long)]
        now: bool,
        /// Time zone of --at (default: broadcast.timezone).
        #[arg(long)]
        timezone: Option<String>,
        #[command(flatten)]
        content: ContentArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Daily schedules and broadcasts not yet sent.
    #[command(after_help = "Example:\n  pubbot broadcast list")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// One broadcast, with what was sent and the platform's answer.
    #[command(after_help = "Example:\n  pubbot broadcast show 42")]
    Show {
        /// Broadcast id.
        id: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a scheduled broadcast, or a daily schedule (--schedule).
    #[command(
        after_help = "Examples:\n  pubbot broadcast cancel 42\n  pubbot broadcast cancel --schedule 3"
    )]
    Cancel {
        /// Broadcast id (or schedule id with --schedule).
        id: i64,
        /// The id is a daily schedule's.
        #[arg(long)]
        schedule: bool,
    },
    /// Past and coming broadcasts, newest platform day first.
    #[command(after_help = "Example:\n  pubbot broadcast history --account shop --limit 30")]
    History {
        /// Only this account.
        #[arg(long)]
        account: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 30)]
        limit: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Settle a broadcast left `unknown` by a crash during its call.
    #[command(
        after_help = "Example:\n  pubbot broadcast resolve 42 sent    # the followers got it (check the platform)"
    )]
    Resolve {
        /// Broadcast id.
        id: i64,
        /// What happened.
        outcome: Outcome,
    },
}

/// `pubbot campaign ...`
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum CampaignCommand {
    /// Send a message to every tracked follower, or to the users of a file,
    /// by batchsend in chunks of 100 under the app's rate limit.
    #[command(
        after_help = "Examples:\n  pubbot campaign send --account shop --followers --text 'New menu today'\n  pubbot campaign send --account shop --users vip.txt --image-url http://x/p.jpg\n\nNot limited to once a day. Resumable: replicas share the chunks, a crash\nloses at most the chunk in flight, an accepted chunk is never sent again."
    )]
    Send {
        #[command(flatten)]
        target: Target,
        /// Every follower in the followers table, as of now.
        #[arg(long, conflicts_with = "users")]
        followers: bool,
        /// A file of user ids, one per line.
        #[arg(long)]
        users: Option<PathBuf>,
        #[command(flatten)]
        content: ContentArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Chunks and users by state.
    #[command(after_help = "Example:\n  pubbot campaign status 7")]
    Status {
        /// Campaign id.
        id: i64,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending the chunks not yet sent.
    #[command(after_help = "Example:\n  pubbot campaign cancel 7")]
    Cancel {
        /// Campaign id.
        id: i64,
    },
}

/// `pubbot followers ...`
#[derive(Subcommand, Debug)]
pub enum FollowersCommand {
    /// How many followers the account has (from subscribe events and the
    /// subscribe API).
    #[command(after_help = "Example:\n  pubbot followers count --account shop")]
    Count {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The followers, by user id.
    #[command(after_help = "Example:\n  pubbot followers list --account shop --limit 20")]
    List {
        #[command(flatten)]
        target: Target,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Every follower as CSV or JSON on stdout.
    #[command(
        after_help = "Example:\n  pubbot followers export --account shop --format csv > followers.csv"
    )]
    Export {
        #[command(flatten)]
        target: Target,
        /// Format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
    },
    /// Follow the account for the users of a file (/mc/subscribe.json, 50
    /// a call), and record them.
    #[command(after_help = "Example:\n  pubbot followers subscribe --account shop users.txt")]
    Subscribe {
        #[command(flatten)]
        target: Target,
        /// User ids, one per line.
        file: PathBuf,
    },
    /// Unfollow for the users of a file (/mc/unsubscribe.json).
    #[command(after_help = "Example:\n  pubbot followers unsubscribe --account shop gone.txt")]
    Unsubscribe {
        #[command(flatten)]
        target: Target,
        /// User ids, one per line.
        file: PathBuf,
    },
}

fn tz_of(settings: &Settings, given: &Option<String>) -> anyhow::Result<(Tz, String)> {
    let name = given
        .clone()
        .unwrap_or_else(|| settings.broadcast.timezone.clone());
    let tz: Tz = name.parse().map_err(|_| {
        anyhow::anyhow!("unknown time zone {name:?} (an IANA name, like Asia/Shanghai)")
    })?;
    Ok((tz, name))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn line(b: &broadcast::Broadcast) -> String {
    format!(
        "#{:<5} {:<10} day {} due {} {}/{} {}{}",
        b.id,
        b.state,
        b.platform_day,
        b.due_at.format("%Y-%m-%d %H:%M UTC"),
        b.app_key,
        b.mcid,
        b.msg_id
            .as_deref()
            .map_or_else(String::new, |m| format!("msg_id {m} ")),
        b.error.as_deref().unwrap_or("")
    )
}

/// `pubbot broadcast ...`
pub async fn broadcast_cmd(
    cmd: BroadcastCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    let clock = SystemClock;
    match cmd {
        BroadcastCommand::Schedule {
            target,
            name,
            at,
            timezone,
            content,
            json,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let (tz, tz_name) = tz_of(settings, &timezone)?;
            let time = NaiveTime::parse_from_str(&at, "%H:%M")
                .with_context(|| format!("--at {at:?}: a local time of day, HH:MM"))?;
            let content = content.content()?;
            let s = broadcast::schedule_daily(
                pool,
                &clock,
                broadcast::NewSchedule {
                    app_key: &app,
                    mcid: &mcid,
                    name: &name,
                    time_of_day: time,
                    timezone: &tz_name,
                    content: &content,
                },
            )
            .await?;
            let today = clock.now().with_timezone(&tz).date_naive();
            let next = (0..2)
                .filter_map(|d| {
                    broadcast::local_instant(tz, today + chrono::Duration::days(d), time)
                })
                .find(|t| *t > clock.now());
            if json {
                return print_json(&s);
            }
            println!(
                "schedule #{} {:?}: every day at {} {tz_name} for {app}/{mcid}",
                s.id, s.name, s.time_of_day
            );
            if let Some(next) = next {
                println!(
                    "next: {} UTC, platform day {} (UTC+8)",
                    next.format("%Y-%m-%d %H:%M"),
                    platform_day(next)
                );
            }
        }
        BroadcastCommand::Once {
            target,
            at,
            now,
            timezone,
            content,
            json,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let when = match (at, now) {
                (_, true) => clock.now(),
                (Some(at), false) => {
                    let (tz, _) = tz_of(settings, &timezone)?;
                    let naive = NaiveDateTime::parse_from_str(&at, "%Y-%m-%d %H:%M")
                        .with_context(|| format!("--at {at:?}: YYYY-MM-DD HH:MM"))?;
                    tz.from_local_datetime(&naive)
                        .earliest()
                        .with_context(|| format!("--at {at:?} does not exist in that time zone"))?
                        .with_timezone(&Utc)
                }
                (None, false) => bail!("say when: --now or --at 'YYYY-MM-DD HH:MM'"),
            };
            let b = broadcast::schedule_once(pool, &app, &mcid, when, &content.content()?).await?;
            if json {
                return print_json(&b);
            }
            println!("{}", line(&b));
        }
        BroadcastCommand::List { json } => {
            let schedules = broadcast::schedules(pool).await?;
            let coming: Vec<_> = broadcast::history(pool, None, 1000)
                .await?
                .into_iter()
                .filter(|b| b.state == "scheduled" || b.state == "sending" || b.state == "unknown")
                .collect();
            if json {
                return print_json(
                    &serde_json::json!({"schedules": schedules, "broadcasts": coming}),
                );
            }
            println!(
                "{:>5}  {:<20} {:<16} {:<8} {:<18} CONTENT",
                "ID", "ACCOUNT", "NAME", "AT", "TIMEZONE"
            );
            for s in &schedules {
                println!(
                    "{:>5}  {:<20} {:<16} {:<8} {:<18} {}",
                    s.id,
                    format!("{}/{}", s.app_key, s.mcid),
                    s.name,
                    s.time_of_day.format("%H:%M"),
                    s.timezone,
                    s.content
                );
            }
            println!();
            for b in &coming {
                println!("{}", line(b));
            }
        }
        BroadcastCommand::Show { id, json } => {
            let b = broadcast::show(pool, id).await?;
            if json {
                return print_json(&b);
            }
            println!("{}", line(&b));
            println!("content:  {}", b.content);
            if let Some(r) = &b.rendered {
                println!("sent as:  {r}");
            }
        }
        BroadcastCommand::Cancel { id, schedule } => {
            let n = broadcast::cancel(pool, &clock, id, schedule).await?;
            if schedule {
                println!("cancelled schedule #{id} and {n} scheduled broadcast(s) of it");
            } else {
                println!("cancelled broadcast #{id}");
            }
        }
        BroadcastCommand::History {
            account,
            limit,
            json,
        } => {
            let rows = broadcast::history(pool, account.as_deref(), limit).await?;
            if json {
                return print_json(&rows);
            }
            for b in &rows {
                println!("{}", line(b));
            }
        }
        BroadcastCommand::Resolve { id, outcome } => {
            broadcast::resolve(pool, &clock, id, matches!(outcome, Outcome::Sent)).await?;
            println!("broadcast #{id} resolved as {outcome:?}");
        }
    }
    Ok(())
}

/// `pubbot campaign ...`
pub async fn campaign_cmd(
    cmd: CampaignCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    match cmd {
        CampaignCommand::Send {
            target,
            followers,
            users,
            content,
            json,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let list = match (followers, users) {
                (true, _) => None,
                (false, Some(path)) => Some(pubbot::followers::read_users(&path)?),
                (false, None) => bail!("say to whom: --followers or --users FILE"),
            };
            let (id, chunks) =
                broadcast::start_campaign(pool, &app, &mcid, &content.content()?, list).await?;
            if json {
                return print_json(&serde_json::json!({"id": id, "chunks": chunks}));
            }
            println!("campaign #{id}: {chunks} chunk(s) of up to 100 users; `pubbot campaign status {id}` follows it");
        }
        CampaignCommand::Status { id, json } => {
            let s = broadcast::campaign_status(pool, id).await?;
            if json {
                return print_json(&s);
            }
            println!(
                "campaign #{} {}/{} {} ({} users)",
                s.id, s.app_key, s.mcid, s.state, s.users
            );
            let mut states: Vec<_> = s.chunks.keys().cloned().collect();
            states.sort();
            for st in states {
                println!(
                    "  {:<10} {:>5} chunk(s) {:>7} user(s)",
                    st,
                    s.chunks[&st],
                    s.users_by_state.get(&st).copied().unwrap_or(0)
                );
            }
        }
        CampaignCommand::Cancel { id } => {
            let n = broadcast::cancel_campaign(pool, &SystemClock, id).await?;
            println!("campaign #{id} cancelled ({n} chunk(s) not sent)");
        }
    }
    Ok(())
}

fn client(settings: &Settings, app_key: &str) -> anyhow::Result<pubbot_api_client::Client> {
    let app = settings
        .apps
        .iter()
        .find(|a| a.key == app_key)
        .with_context(|| format!("app {app_key:?} is not configured"))?;
    let secret: SecretString = app.signing_secret()?;
    Ok(
        pubbot_api_client::Client::builder(app.key.clone(), secret, app.api_base_url.clone())
            .timestamp_unit(app.timestamp_unit.into())
            .build()?,
    )
}

/// `pubbot followers ...`
pub async fn followers_cmd(
    cmd: FollowersCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use pubbot::followers;
    match cmd {
        FollowersCommand::Count { target, json } => {
            let (app, mcid) = target.resolve(settings)?;
            let n = followers::count(pool, &app, &mcid).await?;
            if json {
                return print_json(
                    &serde_json::json!({"app_key": app, "mcid": mcid, "followers": n}),
                );
            }
            println!("{n}");
        }
        FollowersCommand::List { target, limit } => {
            let (app, mcid) = target.resolve(settings)?;
            println!("{:<32} FOLLOWED AT", "USER");
            for f in followers::list(pool, &app, &mcid, limit).await? {
                println!(
                    "{:<32} {}",
                    f.user_id,
                    f.followed_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
        }
        FollowersCommand::Export { target, format } => {
            let (app, mcid) = target.resolve(settings)?;
            let all = followers::list(pool, &app, &mcid, i64::MAX).await?;
            match format {
                ExportFormat::Json => print_json(&all)?,
                ExportFormat::Csv => {
                    println!("user_id,followed_at");
                    for f in all {
                        println!("{},{}", f.user_id, f.followed_at.to_rfc3339());
                    }
                }
            }
        }
        FollowersCommand::Subscribe { target, file } => {
            subscribe_cmd(target, file, true, settings, pool).await?;
        }
        FollowersCommand::Unsubscribe { target, file } => {
            subscribe_cmd(target, file, false, settings, pool).await?;
        }
    }
    Ok(())
}

/// `pubbot followers subscribe|unsubscribe FILE`.
pub async fn subscribe_cmd(
    target: Target,
    file: PathBuf,
    follow: bool,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    let (app, mcid) = target.resolve(settings)?;
    let users = pubbot::followers::read_users(&file)?;
    let client = client(settings, &app)?;
    let changed = pubbot::followers::subscribe(pool, &client, &app, &mcid, &users, follow).await?;
    let verb = if follow { "subscribed" } else { "unsubscribed" };
    println!("{verb} {} user(s) to {app}/{mcid}", changed.done);
    for (chunk, why) in &changed.failed {
        println!(
            "not {verb}: {} user(s) ({}...): {why}",
            chunk.len(),
            chunk[0]
        );
    }
    if !changed.failed.is_empty() {
        bail!("{} chunk(s) refused by the platform", changed.failed.len());
    }
    Ok(())
}

/// `pubbot account ...`
#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// Make the platform's accounts match a file: add, refresh, set the
    /// route url and switch — the plan first, then what was done.
    #[command(
        after_help = "Example:\n  pubbot account apply config/examples/accounts.toml --dry-run\n\nThe route url defaults to {http.public_base_url}/webhook/{app}."
    )]
    Apply {
        /// The accounts file (TOML).
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// The platform's view of an account.
    #[command(after_help = "Example:\n  pubbot account info shop")]
    Info {
        /// The account (mcid).
        mcid: String,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
}

/// `pubbot menu ...`
#[derive(Subcommand, Debug)]
pub enum MenuCommand {
    /// Make an account's menu match a file with the fewest calls.
    #[command(
        after_help = "Example:\n  pubbot menu apply --account shop config/examples/menu.toml\n\nAn invalid file changes nothing and names the item."
    )]
    Apply {
        #[command(flatten)]
        target: Target,
        /// The menu file (TOML: [[item]] name, url, [[item.children]]).
        file: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
    },
    /// The menu pubbot created (the platform cannot list one).
    #[command(after_help = "Example:\n  pubbot menu show --account shop")]
    Show {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum UploadKind {
    Image,
    Voice,
    Thumb,
}

/// `pubbot media ...`
#[derive(Subcommand, Debug)]
pub enum MediaCommand {
    /// Upload an image, voice or thumb (format and size checked first, R9);
    /// the same file again reuses its media_id.
    #[command(
        after_help = "Example:\n  pubbot media upload banner.png --type image --name welcome-banner\n\nRules then say: { type = \"image\", media = \"welcome-banner\" }."
    )]
    Upload {
        /// The file.
        file: PathBuf,
        /// What it is.
        #[arg(long = "type", value_enum)]
        kind: UploadKind,
        /// Local name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Upload news material ([[article]] thumb_media_id, title,
    /// content_source_url, ...).
    #[command(
        after_help = "Example:\n  pubbot media news config/examples/articles.toml --name weekly"
    )]
    News {
        /// The articles file (TOML).
        file: PathBuf,
        /// Local name.
        #[arg(long)]
        name: Option<String>,
        /// App key (default: the only configured app).
        #[arg(long)]
        app: Option<String>,
    },
    /// Uploaded media by local name.
    #[command(after_help = "Example:\n  pubbot media list --json")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `pubbot outbound ...`
#[derive(Subcommand, Debug)]
pub enum OutboundCommand {
    /// Failed replies with the platform's code and message.
    #[command(after_help = "Example:\n  pubbot outbound failed --since 1h")]
    Failed {
        /// How far back (30m, 1h, 2d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send failed replies again, once, as the rules in force answer their
    /// push now (fix the rule first).
    #[command(
        after_help = "Examples:\n  pubbot outbound retry 812 813\n  pubbot outbound retry --all-failed --since 1h"
    )]
    Retry {
        /// Reply ids (from `outbound failed` or `conversation`).
        ids: Vec<i64>,
        /// Every failed reply of the period.
        #[arg(long)]
        all_failed: bool,
        /// The period of --all-failed.
        #[arg(long, default_value = "1h")]
        since: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn app_of(settings: &Settings, app: &Option<String>) -> anyhow::Result<String> {
    match (app, settings.apps.as_slice()) {
        (Some(a), _) if settings.apps.iter().any(|x| &x.key == a) => Ok(a.clone()),
        (Some(a), _) => bail!("app {a:?} is not configured (apps.key)"),
        (None, [only]) => Ok(only.key.clone()),
        (None, []) => bail!("no app is configured ([[apps]])"),
        (None, _) => bail!("several apps are configured: say which with --app"),
    }
}

/// `pubbot account ...`
pub async fn account_cmd(cmd: AccountCommand, settings: &Settings) -> anyhow::Result<()> {
    use pubbot::manage;
    match cmd {
        AccountCommand::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let desired: manage::AccountsFile = toml::from_str(&text)
                .with_context(|| format!("{} is not an accounts file", file.display()))?;
            let app = app_of(settings, &desired.app)?;
            let default_route = match settings.route_url(&app) {
                Ok(u) => u,
                Err(e) if desired.accounts.iter().all(|a| a.route_url.is_some()) => {
                    let _ = e;
                    String::new()
                }
                Err(e) => return Err(e.into()),
            };
            let client = client(settings, &app)?;
            let plan = manage::plan_accounts(&client, &desired.accounts, &default_route).await?;
            println!("plan for {app}:");
            for step in &plan {
                println!("  {step}");
            }
            if dry_run {
                return Ok(());
            }
            manage::apply_accounts(&client, &desired.accounts, &default_route, &plan).await?;
            let changes = plan
                .iter()
                .filter(|s| {
                    !matches!(
                        s,
                        manage::AccountStep::Same(_) | manage::AccountStep::Warn(..)
                    )
                })
                .count();
            println!("done: {changes} change(s)");
        }
        AccountCommand::Info { mcid, app } => {
            let app = app_of(settings, &app)?;
            let info = client(settings, &app)?
                .account_info(&mcid.as_str().into())
                .await
                .with_context(|| format!("reading account {mcid}"))?;
            print_json(&info)?;
        }
    }
    Ok(())
}

/// `pubbot menu ...`
pub async fn menu_cmd(
    cmd: MenuCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use pubbot::manage;
    match cmd {
        MenuCommand::Apply {
            target,
            file,
            dry_run,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let menu: manage::MenuFile = toml::from_str(&text)
                .with_context(|| format!("{} is not a menu file", file.display()))?;
            let client = client(settings, &app)?;
            let plan = manage::apply_menu(pool, &client, &app, &mcid, &menu, dry_run).await?;
            if plan.is_empty() {
                println!("menu of {app}/{mcid}: no change");
                return Ok(());
            }
            for d in &plan.delete {
                println!("  - delete {d}");
            }
            for a in &plan.add {
                println!("  + add {a}");
            }
            if plan.order {
                println!("  ~ order");
            }
            println!(
                "{} ({} deleted, {} added)",
                if dry_run { "plan only" } else { "done" },
                plan.delete.len(),
                plan.add.len()
            );
        }
        MenuCommand::Show { target, json } => {
            let (app, mcid) = target.resolve(settings)?;
            let items = manage::stored_menu(pool, &app, &mcid).await?;
            if json {
                return print_json(&items);
            }
            for top in items.iter().filter(|i| i.level == 1) {
                println!(
                    "{} {}{}",
                    top.position,
                    top.name,
                    if top.url.is_empty() {
                        String::new()
                    } else {
                        format!(" -> {}", top.url)
                    }
                );
                for c in items
                    .iter()
                    .filter(|i| i.parent_id.as_deref() == Some(top.menu_id.as_str()))
                {
                    println!(
                        "  {} {}{}",
                        c.position,
                        c.name,
                        if c.url.is_empty() {
                            String::new()
                        } else {
                            format!(" -> {}", c.url)
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// `pubbot media ...`
pub async fn media_cmd(
    cmd: MediaCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use pubbot::manage;
    match cmd {
        MediaCommand::Upload {
            file,
            kind,
            name,
            app,
        } => {
            let app = app_of(settings, &app)?;
            let kind = match kind {
                UploadKind::Image => pubbot_api_client::MediaKind::Image,
                UploadKind::Voice => pubbot_api_client::MediaKind::Voice,
                UploadKind::Thumb => pubbot_api_client::MediaKind::Thumb,
            };
            let up = manage::upload(
                pool,
                &client(settings, &app)?,
                &app,
                kind,
                &file,
                name.as_deref(),
            )
            .await?;
            println!(
                "{} {} as {:?}: media_id {}",
                if up.reused { "reused" } else { "uploaded" },
                file.display(),
                up.media.name,
                up.media.media_id
            );
        }
        MediaCommand::News { file, name, app } => {
            let app = app_of(settings, &app)?;
            let up =
                manage::upload_news(pool, &client(settings, &app)?, &app, &file, name.as_deref())
                    .await?;
            println!(
                "uploaded news {:?}: media_id {}",
                up.media.name, up.media.media_id
            );
        }
        MediaCommand::List { json } => {
            let all = manage::list_media(pool).await?;
            if json {
                return print_json(&all);
            }
            println!(
                "{:<12} {:<24} {:<6} {:>9}  MEDIA_ID",
                "APP", "NAME", "KIND", "BYTES"
            );
            for m in all {
                println!(
                    "{:<12} {:<24} {:<6} {:>9}  {}",
                    m.app_key, m.name, m.kind, m.bytes, m.media_id
                );
            }
        }
    }
    Ok(())
}

/// `pubbot conversation USER`.
pub async fn conversation_cmd(
    user: &str,
    account: Option<&str>,
    limit: i64,
    json: bool,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    let all = pubbot::inspect::conversation(pool, user, account, limit).await?;
    if json {
        return print_json(&all);
    }
    if all.is_empty() {
        println!("no pushes from {user}");
    }
    for e in all {
        println!(
            "{} {user} -> {}: {} (push #{}, trace {}{})",
            e.received_at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.mcid,
            e.summary,
            e.id,
            e.trace_id,
            if e.status == "pending" {
                ", not decided yet"
            } else {
                ""
            }
        );
        if e.replies.is_empty() && e.status == "done" {
            println!("    (no reply)");
        }
        for r in e.replies {
            let what = r
                .payload
                .get("content")
                .and_then(|c| c.as_str())
                .map_or_else(|| r.payload.to_string(), str::to_owned);
            println!(
                "    reply #{} [{}] rule {:?}: {}{}{}",
                r.id,
                r.status,
                r.rule,
                what,
                r.latency_ms
                    .map_or_else(String::new, |ms| format!(" ({ms} ms)")),
                r.error.map_or_else(String::new, |e| format!(" — {e}"))
            );
        }
    }
    Ok(())
}

/// `pubbot outbound ...`
pub async fn outbound_cmd(
    cmd: OutboundCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use pubbot::inspect;
    match cmd {
        OutboundCommand::Failed { since, json } => {
            let since =
                chrono::Utc::now() - inspect::parse_since(&since).map_err(anyhow::Error::msg)?;
            let all = inspect::failed(pool, since).await?;
            if json {
                return print_json(&all);
            }
            println!(
                "{:>7}  {:<19}  {:<20} {:<16} {:<16} ERROR",
                "ID", "PLANNED", "TO", "RULE", ""
            );
            for f in all {
                println!(
                    "{:>7}  {}  {:<20} {:<16} {}",
                    f.id,
                    f.created_at.format("%Y-%m-%d %H:%M:%S"),
                    format!("{}/{}", f.mcid, f.user_id),
                    f.rule_name,
                    f.last_error.unwrap_or_default()
                );
            }
        }
        OutboundCommand::Retry {
            ids,
            all_failed,
            since,
            json,
        } => {
            let ids = if all_failed {
                let since = chrono::Utc::now()
                    - inspect::parse_since(&since).map_err(anyhow::Error::msg)?;
                inspect::failed(pool, since)
                    .await?
                    .into_iter()
                    .map(|f| f.id)
                    .collect()
            } else if ids.is_empty() {
                bail!("give reply ids, or --all-failed --since 1h");
            } else {
                ids
            };
            let options = pubbot_rules::Options::with_timezone(&settings.timezone)
                .map_err(anyhow::Error::msg)?;
            let done = inspect::retry(pool, &options, &ids).await?;
            if json {
                return print_json(&done);
            }
            for r in &done {
                println!("reply #{}: {}", r.id, r.outcome);
            }
        }
    }
    Ok(())
}

/// `pubbot handler ...`
#[derive(Subcommand, Debug)]
pub enum HandlerCommand {
    /// Add (or replace) a handler bot that rules call with `handler = "NAME"`.
    #[command(
        after_help = "Example:\n  pubbot handler add orders --url http://127.0.0.1:9000/hook --secret-file orders.secret\n\nCalls are signed the Standard Webhooks way (webhook-id, webhook-timestamp,\nwebhook-signature); a secret `whsec_<base64>` is used as that scheme's key."
    )]
    Add {
        /// Name (what rules say).
        name: String,
        /// Where to POST the events.
        #[arg(long)]
        url: String,
        /// The signing secret.
        #[arg(long, conflicts_with = "secret_file")]
        secret: Option<String>,
        /// A file holding the signing secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// One call's timeout, milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The handlers (secrets never shown).
    #[command(after_help = "Example:\n  pubbot handler list")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Call a handler with a sample text message and print its answer and
    /// how long it took (nothing is sent to the platform).
    #[command(
        after_help = "Example:\n  pubbot handler test orders --text 'order 42' --user alice --account shop"
    )]
    Test {
        /// The handler.
        name: String,
        /// The text the sample user writes.
        #[arg(long)]
        text: String,
        /// The sample user.
        #[arg(long, default_value = "someone")]
        user: String,
        /// The account.
        #[arg(long, default_value = "shop")]
        account: String,
        /// App key (default: the only configured app, or "app").
        #[arg(long)]
        app: Option<String>,
    },
}

/// `pubbot handler ...`
pub async fn handler_cmd(
    cmd: HandlerCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    use pubbot::handlers;
    match cmd {
        HandlerCommand::Add {
            name,
            url,
            secret,
            secret_file,
            timeout_ms,
            concurrency,
        } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--url must start with http:// or https://, got {url:?}");
            }
            let secret = match (secret, secret_file) {
                (Some(s), None) => s,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_owned(),
                _ => bail!("give the signing secret: --secret or --secret-file"),
            };
            if secret.is_empty() {
                bail!("the signing secret is empty");
            }
            handlers::add(
                pool,
                &handlers::HandlerConfig {
                    name: name.clone(),
                    url: url.clone(),
                    secret,
                    timeout: std::time::Duration::from_millis(timeout_ms.max(1)),
                    concurrency: concurrency.max(1),
                },
            )
            .await?;
            println!("handler {name:?} -> {url} (timeout {timeout_ms} ms, {concurrency} at once)");
        }
        HandlerCommand::List { json } => {
            let all = handlers::list(pool).await?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|h| serde_json::json!({"name": h.name, "url": h.url, "timeout_ms": h.timeout.as_millis() as u64, "concurrency": h.concurrency}))
                    .collect();
                return print_json(&v);
            }
            println!("{:<16} {:>10} {:>5}  URL", "NAME", "TIMEOUT", "MAX");
            for h in all {
                println!(
                    "{:<16} {:>8}ms {:>5}  {}",
                    h.name,
                    h.timeout.as_millis(),
                    h.concurrency,
                    h.url
                );
            }
        }
        HandlerCommand::Test {
            name,
            text,
            user,
            account,
            app,
        } => {
            let app = app_of(settings, &app).unwrap_or_else(|_| "app".to_owned());
            let runner = handlers::HandlerRunner::new(
                pool.clone(),
                "pubbot-handler-test".into(),
                handlers::HandlerPolicy {
                    max_attempts: 1,
                    backoff: std::time::Duration::from_millis(0),
                    breaker_failures: u32::MAX,
                    breaker_open: std::time::Duration::from_secs(1),
                    state_ttl: std::time::Duration::from_secs(settings.state.ttl_secs),
                },
                std::sync::Arc::default(),
                std::sync::Arc::default(),
            );
            let id = format!("test-{}", rand::random::<u32>());
            let event = serde_json::json!({
                "id": id,
                "app_key": app,
                "account": account,
                "user": user,
                "message": {"to": account, "from": user, "create_time": chrono::Utc::now().timestamp_millis(),
                            "msg_id": id, "body": {"kind": "text", "content": text}},
                "rule": "(pubbot handler test)",
                "captures": [],
                "named": {},
                "state": {},
                "test": true,
            });
            let started = std::time::Instant::now();
            let result = runner.call(&name, &id, &event, &app).await;
            let ms = started.elapsed().as_millis();
            match result {
                handlers::CallResult::Answered { replies, state } => {
                    println!("answered in {ms} ms");
                    for r in replies {
                        println!("reply: {}", serde_json::to_string(&r)?);
                    }
                    if let Some(s) = state {
                        println!("state: {}", serde_json::to_string(&s)?);
                    }
                }
                handlers::CallResult::Failed(e) => bail!("after {ms} ms: {e}"),
            }
        }
    }
    Ok(())
}
