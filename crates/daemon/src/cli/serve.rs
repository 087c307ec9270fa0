//! Running the daemon and keeping its database: `serve`, `config`.

use crate::config::Settings;

/// Pings systemd's watchdog every half `WatchdogSec` while no stage is
/// stuck, so systemd restarts a wedged daemon.
pub(super) fn watchdog(running: &crate::Running) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    let health = running.health();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let stuck = health.stuck();
            if stuck.is_empty() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!(?stuck, "not pinging the watchdog: a stage is stuck");
            }
        }
    }))
}

pub(super) fn show_config(settings: &Settings) {
    println!("database        {}", settings.database_target());
    for name in settings.databases.keys() {
        match settings.database_named(name) {
            Ok(db) => println!(
                "database {name:<7}{}",
                crate::config::target(&db, &format!("databases.{name}"))
            ),
            Err(e) => println!("database {name:<7}{e}"),
        }
    }
    println!("webhook         {}", settings.http.listen);
    println!("admin           {}", settings.http.admin_listen);
    println!(
        "spool           {}",
        settings
            .spool_dir()
            .map_or_else(|| "off".to_owned(), |d| d.display().to_string())
    );
    println!(
        "workers         decide {} send {} (lease {} s)",
        settings.workers.decide, settings.workers.send, settings.workers.lease_secs
    );
    for app in &settings.apps {
        let accounts = match &app.accounts {
            crate::config::Hosted::Every => "every account (\"*\")".to_owned(),
            other => other.listed().join(", "),
        };
        println!(
            "app             {} -> {} ({} calls/s, {:?} timestamps), accounts: {accounts}, on database {}",
            app.key,
            app.api_base_url,
            app.rate_limit_per_sec,
            app.timestamp_unit,
            app.database.as_deref().unwrap_or(crate::config::DEFAULT_DATABASE)
        );
    }
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
