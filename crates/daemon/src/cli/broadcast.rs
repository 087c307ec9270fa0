//! `pubbot broadcast` and `pubbot campaign`: the mass sends.

use std::path::PathBuf;

use super::*;
use crate::clock::{platform_day, SystemClock};
use crate::config::Settings;
use crate::mass::{self, BroadcastContent};
use anyhow::{bail, Context};
use chrono::{NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand, ValueEnum};

/// What to send: exactly one of these.
#[derive(Args, Debug, Clone)]
pub(super) struct ContentArgs {
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

#[derive(Clone, Copy, ValueEnum, Debug)]
pub(super) enum Outcome {
    Sent,
    Failed,
}

/// `pubbot broadcast ...`
#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub(super) enum BroadcastCommand {
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
        /// Cancel the account's daily schedule in force (and its scheduled
        /// sends) for this one; without it, another schedule is refused.
        #[arg(long)]
        replace: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A one-off broadcast: now, or at a local date and time.
    #[command(
        after_help = "Examples:\n  pubbot broadcast once --account shop --now --text 'We are open late today'\n  pubbot broadcast once --account shop --at '2026-11-26 18:00' --image-url http://x/p.jpg\n\nRefused when its platform day is taken (by a broadcast, or by a daily schedule's announced send), naming what took it; --replace sends this one instead."
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
        /// Take the day from the send that holds it (a daily schedule's,
        /// or another one-off not yet sending), which is cancelled for
        /// that day; without it, a taken day is refused.
        #[arg(long)]
        replace: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Daily schedules, and which send goes out on each of the coming
    /// platform days.
    #[command(after_help = "Example:\n  pubbot broadcast list --days 14")]
    List {
        /// Coming platform days to show.
        #[arg(long, default_value_t = 7)]
        days: u32,
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
pub(super) enum CampaignCommand {
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

fn tz_of(settings: &Settings, given: &Option<String>) -> anyhow::Result<(Tz, String)> {
    let name = given
        .clone()
        .unwrap_or_else(|| settings.broadcast.timezone.clone());
    let tz: Tz = name.parse().map_err(|_| {
        anyhow::anyhow!("unknown time zone {name:?} (an IANA name, like Asia/Shanghai)")
    })?;
    Ok((tz, name))
}

fn line(b: &mass::Broadcast) -> String {
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
pub(super) async fn broadcast_cmd(
    cmd: BroadcastCommand,
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<()> {
    // The system's clock, or a soak's (`PUBBOT_CLOCK_FILE`, as `serve`).
    let clock = crate::clock::from_env();
    match cmd {
        BroadcastCommand::Schedule {
            target,
            name,
            at,
            timezone,
            content,
            replace,
            json,
        } => {
            let (app, mcid) = target.resolve(settings)?;
            let (tz, tz_name) = tz_of(settings, &timezone)?;
            let time = NaiveTime::parse_from_str(&at, "%H:%M")
                .with_context(|| format!("--at {at:?}: a local time of day, HH:MM"))?;
            let content = content.content()?;
            let s = mass::schedule_daily(
                pool,
                &*clock,
                mass::NewSchedule {
                    app_key: &app,
                    mcid: &mcid,
                    name: &name,
                    time_of_day: time,
                    timezone: &tz_name,
                    content: &content,
                },
                replace,
            )
            .await?;
            let today = clock.now().with_timezone(&tz).date_naive();
            let next = (0..2)
                .filter_map(|d| mass::local_instant(tz, today + chrono::Duration::days(d), time))
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
            replace,
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
            let b = mass::schedule_once(
                pool,
                &*clock,
                &app,
                &mcid,
                when,
                &content.content()?,
                replace,
            )
            .await?;
            if json {
                return print_json(&b);
            }
            println!("{}", line(&b));
        }
        BroadcastCommand::List { days, json } => {
            let schedules = mass::schedules(pool).await?;
            let plan = mass::coming(pool, clock.now(), days).await?;
            let coming: Vec<_> = mass::history(pool, None, 1000)
                .await?
                .into_iter()
                .filter(|b| b.state == "scheduled" || b.state == "sending" || b.state == "unknown")
                .collect();
            if json {
                let days: Vec<_> = plan
                    .iter()
                    .map(|(app, mcid, d)| serde_json::json!({"app_key": app, "mcid": mcid, "send": d}))
                    .collect();
                return print_json(
                    &serde_json::json!({"schedules": schedules, "days": days, "broadcasts": coming}),
                );
            }
            let mut t = table(
                &["ID", "ACCOUNT", "NAME", "AT", "TIMEZONE", "CONTENT"],
                &[0],
            );
            for s in &schedules {
                t.add_row(vec![
                    s.id.to_string(),
                    format!("{}/{}", s.app_key, s.mcid),
                    s.name.clone(),
                    s.time_of_day.format("%H:%M").to_string(),
                    s.timezone.clone(),
                    s.content.to_string(),
                ]);
            }
            print_table(&t);
            println!();
            println!("What goes out on each coming platform day (UTC+8):");
            let mut t = table(
                &["DAY", "ACCOUNT", "AT (UTC)", "SEND", "BROADCAST", "STATE"],
                &[],
            );
            for (app, mcid, d) in &plan {
                t.add_row(vec![
                    d.day.to_string(),
                    format!("{app}/{mcid}"),
                    d.at.format("%H:%M").to_string(),
                    d.by.clone(),
                    d.broadcast
                        .map_or_else(|| "-".to_owned(), |id| format!("#{id}")),
                    d.state.clone(),
                ]);
            }
            print_table(&t);
            if !coming.is_empty() {
                println!();
                println!(
                    "Broadcasts not yet sent (an unknown one may have been: pubbot broadcast resolve ID sent|failed):"
                );
                for b in &coming {
                    println!("{}", line(b));
                }
            }
        }
        BroadcastCommand::Show { id, json } => {
            let b = mass::show(pool, id).await?;
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
            let n = mass::cancel(pool, &*clock, id, schedule).await?;
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
            let rows = mass::history(pool, account.as_deref(), limit).await?;
            if json {
                return print_json(&rows);
            }
            for b in &rows {
                println!("{}", line(b));
            }
        }
        BroadcastCommand::Resolve { id, outcome } => {
            mass::resolve(pool, &*clock, id, matches!(outcome, Outcome::Sent)).await?;
            println!("broadcast #{id} resolved as {outcome:?}");
        }
    }
    Ok(())
}

/// `pubbot campaign ...`
pub(super) async fn campaign_cmd(
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
                (false, Some(path)) => Some(crate::account::followers::read_users(&path)?),
                (false, None) => bail!("say to whom: --followers or --users FILE"),
            };
            let (id, chunks) =
                mass::start_campaign(pool, &app, &mcid, &content.content()?, list).await?;
            if json {
                return print_json(&serde_json::json!({"id": id, "chunks": chunks}));
            }
            println!("campaign #{id}: {chunks} chunk(s) of up to 100 users; `pubbot campaign status {id}` follows it");
        }
        CampaignCommand::Status { id, json } => {
            let s = mass::campaign_status(pool, id).await?;
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
            let n = mass::cancel_campaign(pool, &SystemClock, id).await?;
            println!("campaign #{id} cancelled ({n} chunk(s) not sent)");
        }
    }
    Ok(())
}
