//! Recovering from a failed database write. sled keeps its first write error until it is
//! reopened (`crate::db`), so nothing could be spooled, committed or recorded: this watches for
//! it, reopens the database once the disk has room again, and has every rule re-read its spool
//! and reconnect, so that Pulsar delivers again what the lost writes held (none of it was
//! acknowledged).

use std::time::Duration;

use proto::wire::HistoryKind;
use tracing::{info, warn};

use super::history::HistoryEntry;
use super::IngesterApp;
use crate::consumer::Command;

/// How often the database is checked for a failed write (cheap unless sled reported an error).
const DATABASE_CHECK: Duration = Duration::from_secs(1);

impl IngesterApp {
    /// Reopens the database whenever it failed a write, while the app lives.
    pub(super) async fn watch_database(app: std::sync::Weak<IngesterApp>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(DATABASE_CHECK).await;
            let Some(app) = app.upgrade() else { return };
            if !app.db.needs_reopen() {
                failing = false;
                app.readiness.set(super::SPOOL_REFUSING_WRITES, true);
                continue;
            }
            if !failing {
                app.readiness.set(super::SPOOL_REFUSING_WRITES, false);
                warn!("the spool database failed a write and refuses every write until it is reopened; reopening it once disk_reserve_bytes is free on data_dir");
                failing = true;
            }
            if app.recover_database().await {
                failing = false;
                app.readiness.set(super::SPOOL_REFUSING_WRITES, true);
            }
        }
    }

    /// sled keeps its first write error until it is reopened (`db.rs`): nothing could be
    /// spooled, committed or recorded. Once the disk has room again the database is reopened,
    /// and every rule re-reads its spool from it and reconnects, so that Pulsar delivers again
    /// what the lost writes had spooled (none of it was acknowledged). Returns whether it did.
    async fn recover_database(&self) -> bool {
        if let Some(free) = self.disk.free_bytes() {
            if free < self.disk.reserve() {
                return false;
            }
        }
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.reopen()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                // Typically an operation still holding the old instance: the next check retries.
                tracing::debug!(error = %err, "reopening the spool database failed; will retry");
                return false;
            }
            Err(join) => {
                warn!(error = %join, "reopening the spool database failed; will retry");
                return false;
            }
        }
        info!("spool database reopened after a failed write; every rule re-reads its spool and reconnects");
        self.history.forget_counts();
        let running = self.running.lock().await;
        for (name, handle) in running.iter() {
            if handle
                .commands
                .send(Command::DatabaseReopened)
                .await
                .is_err()
            {
                // The task is gone, so nothing appends meanwhile: the spool can re-read here.
                match handle.spool.reread() {
                    Ok(to_seal) => {
                        for segment_no in to_seal {
                            self.sealer.seal(handle.spool.clone(), segment_no);
                        }
                    }
                    Err(err) => warn!(rule = %name, error = %err, "re-reading the spool failed"),
                }
                continue;
            }
            self.record(
                name,
                HistoryEntry::event(
                    HistoryKind::Info,
                    "the spool database was reopened after it failed a write (was the disk full?); the rule re-reads its spool and reconnects to Pulsar, which delivers again what the database lost",
                ),
            );
        }
        true
    }
}
