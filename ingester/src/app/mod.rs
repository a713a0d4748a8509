//! The ingester's state and what can be asked of it. [`IngesterApp`] holds the registry of
//! running rules — each a task over its spool (`crate::consumer`) — opened and shut down here;
//! the gRPC layer ([`grpc`]) only translates requests to its calls. By responsibility:
//!
//! - `lifecycle`, `rule_edit`, `rule_delete`: rules created, paused, flushed, edited and
//!   deleted, stored in [`rules`] (their tokens kept apart).
//! - `handoff`: the uploader lists sealed segments ([`sealed_page`]), streams them, and
//!   commits them ([`commit_check`]); a commit wakes the rule's task to acknowledge.
//! - `status`: `status`, `segments`, `logs` — the per-rule run log is [`history`].
//! - `database`: the database reopened after a failed write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Mutex, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::history::{History, HistoryEntry};
use self::rules::{RuleStore, StoredRule};
use crate::consumer::{Command, ConsumerLimits, Membership, RuleTask};
use crate::error::{IngesterError, Result};
use crate::seal::SealerHandle;
use crate::source::trust::PulsarTrust;
use crate::spool::db::Database;
use crate::spool::disk::DiskSpace;
use crate::spool::RuleSpool;
use crate::stats::RuleStats;

pub mod commit_check;
mod database;
pub mod grpc;
mod handoff;
pub mod history;
mod lifecycle;
mod rule_delete;
mod rule_edit;
pub mod rules;
pub mod sealed_page;
mod status;

/// What the probes (`/readyz`, `grpc.health.v1`) say while the spool is not open yet.
pub const SPOOL_NOT_OPEN: &str = "spool not open";
/// ... while the stored rules are not all started yet.
pub const RULES_NOT_LOADED: &str = "rules not loaded";
/// ... while the spool database refuses writes until its reopen (`database`).
pub const SPOOL_REFUSING_WRITES: &str = "spool database refusing writes";
pub use status::RuleMetrics;

/// A running rule: its task, and what the app shares with the task.
struct RuleHandle {
    spool: Arc<RuleSpool>,
    stats: Arc<RuleStats>,
    commands: mpsc::Sender<Command>,
    /// Wakes the task to acknowledge what a commit made acknowledgeable.
    ack_ready: Arc<Notify>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The ingester: its database, the stored rules, and the running ones.
pub struct IngesterApp {
    db: Arc<Database>,
    data_dir: PathBuf,
    rules: Arc<RuleStore>,
    history: Arc<History>,
    sealer: SealerHandle,
    /// Woken when a segment is sealed, so that a waiting `ListSealed` answers at once.
    sealed_notify: Arc<Notify>,
    running: Mutex<HashMap<String, RuleHandle>>,
    started: Instant,
    limits: ConsumerLimits,
    /// What `pulsar+ssl://` brokers' certificates are checked against (`pulsar_ca_file`).
    trust: PulsarTrust,
    /// The spool's filesystem: every rule pauses before it is full.
    disk: Arc<DiskSpace>,
    spool_id: String,
    /// This ingester's consumers' name and priority (`node_id`, `priority_level`).
    membership: Membership,
    /// Ready once the spool is open and the rules started; not while the database refuses
    /// writes; never again once shutting down. Read by the probes.
    readiness: edge::health::Readiness,
    /// Restore jobs' targets and producers.
    pub restore: crate::restore::targets::RestoreTargets,
}

impl IngesterApp {
    /// Opens the spool under `data_dir` and starts every stored rule.
    pub async fn open(
        data_dir: PathBuf,
        history_max_entries: usize,
        limits: ConsumerLimits,
        membership: Membership,
        trust: PulsarTrust,
    ) -> Result<Arc<IngesterApp>> {
        let readiness = edge::health::Readiness::new(&[SPOOL_NOT_OPEN, RULES_NOT_LOADED]);
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            IngesterError::io(format!("creating data_dir {}", data_dir.display()), e)
        })?;
        restrict_permissions(&data_dir);
        // Absolute, because ListSealed hands sealed files' paths to uploaders on this host.
        let data_dir = std::path::absolute(&data_dir).map_err(|e| {
            IngesterError::io(format!("resolving data_dir {}", data_dir.display()), e)
        })?;
        let db = Arc::new(Database::open(
            &data_dir.join("spool.sled"),
            64 * 1024 * 1024,
        )?);
        let spool_id = crate::spool::spool_id::load_or_create(&db.handle()?)?;
        let rules = Arc::new(RuleStore::open(&db)?);
        let history = Arc::new(History::open(&db, history_max_entries)?);
        let restore = crate::restore::targets::RestoreTargets::open(&db, trust.clone())?;
        let sealer = crate::seal::spawn(history.clone());
        let disk = Arc::new(DiskSpace::new(data_dir.clone(), limits.disk_reserve_bytes));
        readiness.set(SPOOL_NOT_OPEN, true);
        let app = Arc::new(IngesterApp {
            db,
            data_dir,
            rules,
            history,
            sealer,
            sealed_notify: Arc::new(Notify::new()),
            running: Mutex::new(HashMap::new()),
            started: Instant::now(),
            disk,
            limits,
            trust,
            spool_id,
            membership,
            readiness,
            restore,
        });
        for stored in app.rules.list()? {
            let name = stored.config.name.clone();
            let handle = app.start_rule(&stored)?;
            app.running.lock().await.insert(name.clone(), handle);
            info!(rule = %name, "rule started");
        }
        app.readiness.set(RULES_NOT_LOADED, true);
        tokio::spawn(Self::watch_database(Arc::downgrade(&app)));
        Ok(app)
    }

    /// Whether the ingester is ready, for the probes; [`edge::health::Readiness::stopping`] when
    /// it begins to shut down.
    pub fn readiness(&self) -> &edge::health::Readiness {
        &self.readiness
    }

    fn start_rule(&self, stored: &StoredRule) -> Result<RuleHandle> {
        let spool = self.open_spool(stored)?;
        self.start_task(stored, spool, Arc::new(RuleStats::new()))
    }

    /// Opens (or recovers) a rule's spool and queues the segments it left closed. Once per rule
    /// and process: a second spool over the same files would seal into the same temporary files
    /// and keep retrying segments the other one sealed and freed.
    fn open_spool(&self, stored: &StoredRule) -> Result<Arc<RuleSpool>> {
        let (spool, to_seal) = RuleSpool::open(
            &self.db,
            &self.spool_id,
            &self.data_dir,
            &stored.config,
            self.sealed_notify.clone(),
        )?;
        for segment_no in to_seal {
            self.sealer.seal(spool.clone(), segment_no);
        }
        Ok(spool)
    }

    /// Starts the rule's consumer task over its spool with `stats` (a restarted consumer keeps
    /// counting where the previous one stopped: `rule edit` must not zero `status`).
    fn start_task(
        &self,
        stored: &StoredRule,
        spool: Arc<RuleSpool>,
        stats: Arc<RuleStats>,
    ) -> Result<RuleHandle> {
        let token = self.rules.token(&stored.config.name)?;
        spool.reconfigure(&stored.config);
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (stop_tx, stop_rx) = watch::channel(false);
        let ack_ready = Arc::new(Notify::new());
        let task = RuleTask {
            rule: stored.config.clone(),
            token,
            paused: stored.paused,
            limits: self.limits,
            trust: self.trust.clone(),
            consumer_name: self.membership.consumer_name(&stored.config.name),
            priority_level: self.membership.sent_priority_level(),
            start_applied: stored.start_applied,
            spool: spool.clone(),
            stats: stats.clone(),
            history: self.history.clone(),
            rules: self.rules.clone(),
            sealer: self.sealer.clone(),
            disk: self.disk.clone(),
            commands: commands_rx,
            ack_ready: ack_ready.clone(),
            stop: stop_rx,
        };
        let task = tokio::spawn(task.run());
        Ok(RuleHandle {
            spool,
            stats,
            commands: commands_tx,
            ack_ready,
            stop: stop_tx,
            task,
        })
    }

    async fn stop_rule(mut handle: RuleHandle) {
        let _ = handle.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(10), &mut handle.task)
            .await
            .is_err()
        {
            // Typically stuck connecting to an unreachable broker (the stop signal is only seen
            // between attempts). Left running it would be a second consumer of the rule once
            // its replacement starts (`rule edit` of the service URL): end it here.
            warn!("a rule task did not stop within 10 s; aborting it");
            handle.task.abort();
            let _ = (&mut handle.task).await;
        }
    }

    fn record(&self, rule: &str, entry: HistoryEntry) {
        if let Err(err) = self.history.record(rule, &entry) {
            warn!(rule = %rule, error = %err, "could not write the rule's history");
        }
    }

    /// Where a rule's task takes its commands.
    async fn commands_of(&self, name: &str) -> Result<mpsc::Sender<Command>> {
        let running = self.running.lock().await;
        running
            .get(name)
            .map(|h| h.commands.clone())
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))
    }

    async fn spool_of(&self, name: &str) -> Result<Arc<RuleSpool>> {
        let running = self.running.lock().await;
        running
            .get(name)
            .map(|h| h.spool.clone())
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))
    }

    /// Stops every rule task, then makes the spool durable. Open segments stay open and resume
    /// at the next start.
    pub async fn shutdown(&self) {
        let handles: Vec<RuleHandle> = self.running.lock().await.drain().map(|(_, h)| h).collect();
        for handle in handles {
            Self::stop_rule(handle).await;
        }
        if let Err(err) = self.db.flush_async().await {
            warn!(error = %err, "final spool flush failed");
        }
    }
}

#[cfg(unix)]
fn restrict_permissions(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    // The spool holds the Pulsar tokens and the backed-up data: owner only.
    if let Err(err) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        warn!(dir = %dir.display(), error = %err, "could not restrict data_dir permissions");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &std::path::Path) {}
