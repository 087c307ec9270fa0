//! `[databases.NAME]`: further databases, and which apps each holds
//! ([`Placement`]); `pubbot serve` runs a pipeline per database.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{invalid, AppSettings, ConfigError, DatabaseSettings, Settings};

/// The name of `[database]` where one is needed (`pubbot --database`,
/// metrics' `database` label, readiness).
pub const DEFAULT_DATABASE: &str = "default";

/// One `[databases.NAME]`: as `[database]`, every field but the URL
/// optional (taken from `[database]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherDatabase {
    /// The PostgreSQL URL (or `url_file`).
    #[serde(default)]
    pub url: Option<SecretString>,
    /// A file holding the URL.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// As `database.max_connections`, for this database's own pools.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// As `database.acquire_timeout_secs`.
    #[serde(default)]
    pub acquire_timeout_secs: Option<u64>,
    /// As `database.idle_in_transaction_timeout_secs`.
    #[serde(default)]
    pub idle_in_transaction_timeout_secs: Option<u64>,
}

/// Where a set of apps lives: a database and the apps placed on it. One
/// process runs a pipeline per placement, each with its own pools,
/// workers, LISTEN connection, spool and readiness, so that one database
/// stopping stops only the apps on it.
#[derive(Debug, Clone)]
pub struct Placement {
    /// `default` for `[database]`, else the `NAME` of `[databases.NAME]`.
    pub name: String,
    /// Its connection settings, complete.
    pub database: DatabaseSettings,
    /// The apps on it (the default database's may be none).
    pub apps: Vec<AppSettings>,
}

/// Host, port and database name of `db`, never the password.
pub fn target(db: &DatabaseSettings, source: &str) -> String {
    match url::Url::parse(db.url.expose_secret()) {
        Ok(u) => format!(
            "{}:{} (database {:?}, from {source})",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path().trim_start_matches('/'),
        ),
        Err(_) => format!("an unparsable URL (from {source})"),
    }
}

impl Settings {
    /// `[databases.NAME]` made complete: its URL (from `url` or
    /// `url_file`), the rest from `[database]` where left out.
    ///
    /// # Errors
    /// An unknown name, or a URL that cannot be read.
    pub fn database_named(&self, name: &str) -> Result<DatabaseSettings, ConfigError> {
        if name == DEFAULT_DATABASE {
            return Ok(self.database.clone());
        }
        let key = format!("databases.{name}");
        let other = self.databases.get(name).ok_or_else(|| {
            let known: Vec<&str> = std::iter::once(DEFAULT_DATABASE)
                .chain(self.databases.keys().map(String::as_str))
                .collect();
            invalid(
                &key,
                format!("no such database (configured: {})", known.join(", ")),
            )
        })?;
        let url = match (&other.url, &other.url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| SecretString::from(t.trim().to_owned()))
                .map_err(|e| {
                    invalid(
                        format!("{key}.url_file"),
                        format!("{}: {e}", path.display()),
                    )
                })?,
            (None, None) => return Err(invalid(format!("{key}.url"), "url or url_file is needed")),
        };
        Ok(DatabaseSettings {
            url,
            url_file: other.url_file.clone(),
            max_connections: other
                .max_connections
                .unwrap_or(self.database.max_connections),
            acquire_timeout_secs: other
                .acquire_timeout_secs
                .unwrap_or(self.database.acquire_timeout_secs),
            idle_in_transaction_timeout_secs: other
                .idle_in_transaction_timeout_secs
                .unwrap_or(self.database.idle_in_transaction_timeout_secs),
        })
    }

    /// Every database with the apps placed on it (an app moving, `move_to`,
    /// on both): the default first, then
    /// each `[databases.NAME]` by name (one without apps yet is kept: it is
    /// migrated and checked like the others, ready for an app to move in).
    ///
    /// # Errors
    /// As [`Self::database_named`].
    pub fn placements(&self) -> Result<Vec<Placement>, ConfigError> {
        let mut out = vec![Placement {
            name: DEFAULT_DATABASE.to_owned(),
            database: self.database.clone(),
            apps: Vec::new(),
        }];
        for name in self.databases.keys() {
            out.push(Placement {
                name: name.clone(),
                database: self.database_named(name)?,
                apps: Vec::new(),
            });
        }
        for app in &self.apps {
            let name = app.database.as_deref().unwrap_or(DEFAULT_DATABASE);
            let Some(p) = out.iter_mut().find(|p| p.name == name) else {
                return Err(invalid(
                    format!("apps.{}.database", app.key),
                    format!("no [databases.{name}] is configured"),
                ));
            };
            p.apps.push(app.clone());
            if let Some(to) = &app.move_to {
                if to == name {
                    return Err(invalid(
                        format!("apps.{}.move_to", app.key),
                        "names the database the app is on already",
                    ));
                }
                let Some(p) = out.iter_mut().find(|p| p.name == *to) else {
                    return Err(invalid(
                        format!("apps.{}.move_to", app.key),
                        format!("no [databases.{to}] is configured"),
                    ));
                };
                p.apps.push(app.clone());
            }
        }
        Ok(out)
    }

    /// These settings as one placement's pipeline sees them: its database
    /// as `[database]`, its apps only, and a spool of its own (a
    /// subfolder named after it, for every database but the default).
    pub fn for_placement(&self, placement: &Placement) -> Self {
        let mut s = self.clone();
        s.database = placement.database.clone();
        s.apps = placement.apps.clone();
        if placement.name != DEFAULT_DATABASE {
            if let Some(dir) = self.spool_dir() {
                s.ingest.spool_dir = dir.join(&placement.name).display().to_string();
            }
            s.database_url_source = "databases";
        }
        s
    }

    pub(super) fn validate_placements(&self) -> Result<(), ConfigError> {
        for name in self.databases.keys() {
            if name == DEFAULT_DATABASE
                || name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    format!("databases.{name}"),
                    "a name of letters, digits, - and _, and not \"default\" (that is [database])",
                ));
            }
            let db = self.database_named(name)?;
            let url = db.url.expose_secret().trim();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    format!("databases.{name}.url"),
                    "pubbot needs PostgreSQL (postgres://...)",
                ));
            }
            if db.max_connections < 10 {
                return Err(invalid(
                    format!("databases.{name}.max_connections"),
                    "at least 10 (two for each of the five stages)",
                ));
            }
        }
        self.placements().map(|_| ())
    }
}
