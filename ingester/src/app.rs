//! The ingester's state and operations: rule lifecycle, status, and the segment hand-off to
//! the uploader. The gRPC layer (`grpc.rs`) only translates to and from these calls.

use proto::wire::HistoryKind;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::types::{RuleConfig, RuleError, RuleSpecInput, Secret};
use proto::v1;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch, Mutex, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::consumer::{Command, ConsumerLimits, RuleTask};
use crate::db::Database;
use crate::decode_fault::EntryRef;
use crate::disk::DiskSpace;
use crate::error::{IngesterError, Result};
use crate::history::{History, HistoryEntry};
use crate::rules::{RuleStore, StoredRule};
use crate::sealed_page;
use crate::sealer::SealerHandle;
use crate::spool::{CommitOutcome, RuleSpool};
use crate::stats::RuleStats;
use crate::unsubscribe::SubscriptionRef;

const READ_CHUNK: usize = 256 * 1024;
/// How long a plain `rule delete` waits for stored segments to be acknowledged.
const DELETE_ACK_WAIT: Duration = Duration::from_secs(5);
/// How often the database is checked for a failed write (cheap unless sled reported an error).
const DATABASE_CHECK: Duration = Duration::from_secs(1);

struct RuleHandle {
    spool: Arc<RuleSpool>,
    stats: Arc<RuleStats>,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct IngesterApp {
    db: Arc<Database>,
    data_dir: PathBuf,
    rules: Arc<RuleStore>,
    history: Arc<History>,
    sealer: SealerHandle,
    sealed_notify: Arc<Notify>,
    running: Mutex<HashMap<String, RuleHandle>>,
    started: Instant,
    limits: ConsumerLimits,
    /// The spool's filesystem: every rule pauses before it is full.
    disk: Arc<DiskSpace>,
    spool_id: String,
    /// This ingester's name in its consumers' names (`node_id`).
    node_id: String,
}

impl IngesterApp {
    /// Opens the spool under `data_dir` and starts every stored rule.
    pub async fn open(
        data_dir: PathBuf,
        history_max_entries: usize,
        limits: ConsumerLimits,
        node_id: String,
    ) -> Result<Arc<IngesterApp>> {
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
        let spool_id = crate::spool_id::load_or_create(&db.handle()?)?;
        let rules = Arc::new(RuleStore::open(&db)?);
        let history = Arc::new(History::open(&db, history_max_entries)?);
        let sealer = crate::sealer::spawn(history.clone());
        let disk = Arc::new(DiskSpace::new(data_dir.clone(), limits.disk_reserve_bytes));
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
            spool_id,
            node_id,
        });
        for stored in app.rules.list()? {
            let name = stored.config.name.clone();
            let handle = app.start_rule(&stored)?;
            app.running.lock().await.insert(name.clone(), handle);
            info!(rule = %name, "rule started");
        }
        tokio::spawn(Self::watch_database(Arc::downgrade(&app)));
        Ok(app)
    }

    /// Reopens the database whenever it failed a write, while the app lives.
    async fn watch_database(app: std::sync::Weak<IngesterApp>) {
        let mut failing = false;
        loop {
            tokio::time::sleep(DATABASE_CHECK).await;
            let Some(app) = app.upgrade() else { return };
            if !app.db.needs_reopen() {
                failing = false;
                continue;
            }
            if !failing {
                warn!("the spool database failed a write and refuses every write until it is reopened; reopening it once disk_reserve_bytes is free on data_dir");
                failing = true;
            }
            if app.recover_database().await {
                failing = false;
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

    fn start_rule(&self, stored: &StoredRule) -> Result<RuleHandle> {
        let spool = self.open_spool(stored)?;
        self.start_task(stored, spool, Arc::new(RuleStats::default()))
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
        let task = RuleTask {
            rule: stored.config.clone(),
            token,
            paused: stored.paused,
            limits: self.limits,
            consumer_name: format!("tdmq-backup-{}-{}", stored.config.name, self.node_id),
            start_applied: stored.start_applied,
            spool: spool.clone(),
            stats: stats.clone(),
            history: self.history.clone(),
            rules: self.rules.clone(),
            sealer: self.sealer.clone(),
            disk: self.disk.clone(),
            commands: commands_rx,
            stop: stop_rx,
        };
        let task = tokio::spawn(task.run());
        Ok(RuleHandle {
            spool,
            stats,
            commands: commands_tx,
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

    pub async fn create_rule(&self, spec: &v1::RuleSpec) -> Result<v1::Rule> {
        let config = RuleSpecInput::from(spec).validate()?;
        let now = proto::types::time::now_millis();
        let stored = StoredRule {
            config,
            paused: false,
            created_at_ms: now,
            updated_at_ms: now,
            start_applied: false,
        };
        let token = spec.token.as_ref().map(Secret::new);
        let mut running = self.running.lock().await;
        self.refuse_shared_subscription(&stored.config)?;
        self.rules.create(&stored, token.as_ref())?;
        self.db.flush_async().await?;
        let handle = match self.start_rule(&stored) {
            Ok(h) => h,
            Err(err) => {
                self.rules.remove(&stored.config.name)?;
                return Err(err);
            }
        };
        running.insert(stored.config.name.clone(), handle);
        self.record(
            &stored.config.name,
            HistoryEntry::event(HistoryKind::RuleCreated, "rule created"),
        );
        info!(rule = %stored.config.name, topic = %stored.config.topic, "rule created");
        Ok(stored.to_proto(token.is_some_and(|t| !t.is_empty())))
    }

    /// Called with `running` locked, so two creates cannot both pass.
    fn refuse_shared_subscription(&self, config: &RuleConfig) -> Result<()> {
        let others: Vec<StoredRule> = self.rules.list()?;
        config.check_no_shared_subscription(others.iter().map(|r| &r.config))?;
        Ok(())
    }

    /// Applies an edit. With `unsubscribe`, an edit that changes the source also removes the
    /// old subscription; otherwise the reply's notice says it was left behind.
    pub async fn edit_rule(
        &self,
        spec: &v1::RuleSpec,
        unsubscribe: bool,
    ) -> Result<(v1::Rule, String)> {
        let name = spec.name.clone();
        let mut running = self.running.lock().await;
        let mut stored = self.rules.get(&name)?;
        let mut patch = RuleSpecInput::from(spec);
        patch.name = None;
        let config = stored.config.to_input().overlay(patch).validate()?;
        let source_changed = is_source_change(&stored.config, &config);
        if config.start != stored.config.start && !source_changed {
            return Err(start_needs_a_new_subscription(&stored.config, &config).into());
        }
        if unsubscribe && !source_changed {
            return Err(RuleError {
                field: "unsubscribe",
                message: format!(
                    "--unsubscribe applies only to an edit that changes service_url, topic or subscription; this one keeps the {}",
                    crate::unsubscribe::describe(&stored.config)
                ),
            }
            .into());
        }
        if source_changed {
            self.refuse_shared_subscription(&config)?;
        }
        let consumer_changed = source_changed
            || config.subscription_type != stored.config.subscription_type
            || spec.token.is_some();
        let handle = running
            .get(&name)
            .ok_or_else(|| IngesterError::RuleNotFound(name.clone()))?;
        if source_changed && !handle.spool.is_empty() {
            return Err(spool_not_empty(&stored.config));
        }
        let mut changes = describe_changes(&stored.config, &config, spec.token.is_some());
        let mut stats = handle.stats.clone();
        let mut notice = String::new();
        // The spool of a rule whose consumer was stopped above: it carries on under the new one.
        let mut stopped = None;
        if source_changed {
            // Stopped before the spool is checked again: a consumer still running could spool
            // a message of the old source between the check and the reset.
            let Some(old) = running.remove(&name) else {
                return Err(IngesterError::RuleNotFound(name));
            };
            let spool = old.spool.clone();
            stats = old.stats.clone();
            Self::stop_rule(old).await;
            if !spool.is_empty() {
                return Err(self.restart_unchanged(
                    &mut running,
                    &stored,
                    spool,
                    stats,
                    spool_not_empty(&stored.config),
                ));
            }
            notice = if unsubscribe {
                let token = self.rules.token(&name)?;
                let old_subscription = SubscriptionRef {
                    rule: &stored.config,
                    token: token.as_ref(),
                };
                if let Err(err) = old_subscription.remove().await {
                    let refused = IngesterError::FailedPrecondition(format!(
                        "rule {name:?} was not changed: {err}; retry, or edit without --unsubscribe and remove it yourself"
                    ));
                    return Err(self.restart_unchanged(
                        &mut running,
                        &stored,
                        spool,
                        stats,
                        refused,
                    ));
                }
                format!("removed {}", old_subscription.describe())
            } else {
                crate::unsubscribe::left_behind_notice(&stored.config)
            };
            // Before the new source is stored: a crash in between leaves the old source with no
            // watermarks (redeliveries stored twice), never the new one with the old watermarks
            // (its messages dropped as seen).
            if let Err(err) = spool.reset_positions() {
                return Err(self.restart_unchanged(&mut running, &stored, spool, stats, err));
            }
            stored.start_applied = false;
            changes = format!("{changes}; {notice}");
            stopped = Some(spool);
        }
        stored.config = config;
        stored.updated_at_ms = proto::types::time::now_millis();
        self.rules.put(&stored)?;
        if let Some(token) = &spec.token {
            self.rules
                .set_token(&name, Some(&Secret::new(token.clone())))?;
        }
        self.db.flush_async().await?;
        if let Some(handle) = running.get(&name) {
            handle.spool.reconfigure(&stored.config);
        }
        if consumer_changed {
            if let Some(old) = running.remove(&name) {
                stats = old.stats.clone();
                let spool = old.spool.clone();
                // Waits for a spool write in progress: the next consumer appends to the same
                // spool, after it.
                Self::stop_rule(old).await;
                stopped = Some(spool);
            }
            let Some(spool) = stopped else {
                return Err(IngesterError::RuleNotFound(name));
            };
            let handle = self.start_task(&stored, spool, stats)?;
            running.insert(name.clone(), handle);
        }
        self.record(
            &name,
            HistoryEntry::event(HistoryKind::RuleEdited, format!("rule edited: {changes}")),
        );
        Ok((stored.to_proto(self.rules.token(&name)?.is_some()), notice))
    }

    /// Starts a stopped rule again as it was, after a change that could not be made; returns
    /// why it could not. A rule that cannot even restart says both.
    fn restart_unchanged(
        &self,
        running: &mut HashMap<String, RuleHandle>,
        stored: &StoredRule,
        spool: Arc<RuleSpool>,
        stats: Arc<RuleStats>,
        why: IngesterError,
    ) -> IngesterError {
        match self.start_task(stored, spool, stats) {
            Ok(handle) => {
                running.insert(stored.config.name.clone(), handle);
                why
            }
            Err(err) => IngesterError::FailedPrecondition(format!(
                "{why}; and rule {:?} could not start again: {err} (restart the ingester)",
                stored.config.name
            )),
        }
    }

    pub async fn get_rule(&self, name: &str) -> Result<v1::Rule> {
        let stored = self.rules.get(name)?;
        Ok(stored.to_proto(self.rules.token(name)?.is_some()))
    }

    pub async fn list_rules(&self) -> Result<Vec<v1::Rule>> {
        let mut out = Vec::new();
        for stored in self.rules.list()? {
            let has_token = self.rules.token(&stored.config.name)?.is_some();
            out.push(stored.to_proto(has_token));
        }
        Ok(out)
    }

    pub async fn delete_rule(&self, req: &v1::DeleteRuleRequest) -> Result<v1::DeleteRuleReply> {
        let name = req.name.clone();
        let spool = {
            let running = self.running.lock().await;
            let handle = running
                .get(&name)
                .ok_or_else(|| IngesterError::RuleNotFound(name.clone()))?;
            handle.spool.clone()
        };
        if req.drain {
            self.set_paused_inner(&name, true, false).await?;
            self.flush(&name).await?;
            let timeout = Duration::from_secs(if req.drain_timeout_secs > 0 {
                req.drain_timeout_secs
            } else {
                300
            });
            let deadline = Instant::now() + timeout;
            while !spool.is_empty() {
                if Instant::now() > deadline {
                    return Err(IngesterError::FailedPrecondition(format!(
                        "rule {name:?} did not drain within {}; it stays paused — is the uploader running? (see `status {name}`)",
                        humantime::format_duration(timeout)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let unstored = spool
            .segments()
            .iter()
            .filter(|m| m.state != crate::spool::SegmentState::Stored)
            .count() as u64;
        if unstored > 0 && !req.discard {
            return Err(IngesterError::FailedPrecondition(format!(
                "rule {name:?} has {unstored} segment(s) not yet stored; use --drain to upload them first or --discard to drop them"
            )));
        }
        if !req.discard {
            self.wait_for_acks(&name, &spool).await?;
        }
        let mut running = self.running.lock().await;
        let stored = self.rules.get(&name)?;
        let Some(handle) = running.remove(&name) else {
            return Err(IngesterError::RuleNotFound(name));
        };
        let stats = handle.stats.clone();
        Self::stop_rule(handle).await;
        // Only now: the rule's own consumer is gone, and the broker removes a subscription only
        // when nobody consumes from it.
        let notice = if req.unsubscribe {
            let token = self.rules.token(&name)?;
            let subscription = SubscriptionRef {
                rule: &stored.config,
                token: token.as_ref(),
            };
            if let Err(err) = subscription.remove().await {
                let paused = if stored.paused {
                    " (it stays paused)"
                } else {
                    ""
                };
                let refused = IngesterError::FailedPrecondition(format!(
                    "rule {name:?} was not deleted{paused}: {err}; retry, or delete without --unsubscribe and remove it yourself"
                ));
                return Err(self.restart_unchanged(
                    &mut running,
                    &stored,
                    spool.clone(),
                    stats,
                    refused,
                ));
            }
            format!("removed {}", subscription.describe())
        } else {
            let notice = crate::unsubscribe::left_behind_notice(&stored.config);
            warn!(rule = %name, "{notice}");
            notice
        };
        spool.destroy()?;
        self.rules.remove(&name)?;
        self.history.remove_rule(&name)?;
        self.db.flush_async().await?;
        info!(rule = %name, discarded = unstored, "rule deleted");
        Ok(v1::DeleteRuleReply {
            segments_discarded: unstored,
            unsubscribed: req.unsubscribe,
            notice,
        })
    }

    /// Segments stored but not yet acknowledged on Pulsar: deleting the rule now would forget
    /// them, and their messages would stay on the subscription as if never backed up. Asks the
    /// rule task to acknowledge and waits [`DELETE_ACK_WAIT`] for it (a commit that just landed
    /// is acknowledged within a tick); refuses if they are still there (no consumer: the broker
    /// is unreachable).
    async fn wait_for_acks(&self, name: &str, spool: &RuleSpool) -> Result<()> {
        let stored_unacked = || {
            spool
                .segments()
                .iter()
                .filter(|m| m.state == crate::spool::SegmentState::Stored)
                .count()
        };
        if stored_unacked() == 0 {
            return Ok(());
        }
        if let Some(handle) = self.running.lock().await.get(name) {
            // A full queue means an AckReady is already pending.
            let _ = handle.commands.try_send(Command::AckReady);
        }
        let deadline = Instant::now() + DELETE_ACK_WAIT;
        loop {
            let left = stored_unacked();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(IngesterError::FailedPrecondition(format!(
                    "rule {name:?} has {left} segment(s) stored but not yet acknowledged on Pulsar (is the broker reachable? see `status {name}`); try again once they are, or use --discard to delete anyway (their messages stay on the subscription and are delivered again to whoever reads it)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn set_paused_inner(&self, name: &str, paused: bool, record: bool) -> Result<v1::Rule> {
        let running = self.running.lock().await;
        let handle = running
            .get(name)
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))?;
        let mut stored = self.rules.get(name)?;
        stored.paused = paused;
        stored.updated_at_ms = proto::types::time::now_millis();
        self.rules.put(&stored)?;
        self.db.flush_async().await?;
        handle
            .commands
            .send(Command::SetPaused(paused))
            .await
            .map_err(|_| IngesterError::ShuttingDown)?;
        if record {
            let kind = if paused {
                HistoryKind::Paused
            } else {
                HistoryKind::Resumed
            };
            self.record(name, HistoryEntry::event(kind, format!("rule {kind}")));
        }
        Ok(stored.to_proto(self.rules.token(name)?.is_some()))
    }

    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<v1::Rule> {
        self.set_paused_inner(name, paused, true).await
    }

    /// Where a rule's task takes its commands.
    async fn commands_of(&self, name: &str) -> Result<mpsc::Sender<Command>> {
        let running = self.running.lock().await;
        running
            .get(name)
            .map(|h| h.commands.clone())
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))
    }

    pub async fn flush(&self, name: &str) -> Result<Option<u64>> {
        let commands = self.commands_of(name).await?;
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Flush(tx))
            .await
            .map_err(|_| IngesterError::ShuttingDown)?;
        let sealed = rx.await.map_err(|_| IngesterError::ShuttingDown)?;
        let mut entry = HistoryEntry::event(
            HistoryKind::Flushed,
            match sealed {
                Some(n) => format!("flushed: sealed segment {n}"),
                None => "flushed: nothing open".to_string(),
            },
        );
        entry.segment_no = sealed.unwrap_or(0);
        self.record(name, entry);
        Ok(sealed)
    }

    /// `rule skip`: the rule's task acknowledges the entry if it is the one it is stopped on.
    pub async fn skip_entry(&self, name: &str, entry: &str) -> Result<String> {
        let entry: EntryRef =
            entry
                .parse()
                .map_err(|e: crate::decode_fault::ParseEntryError| {
                    IngesterError::InvalidRequest(e.to_string())
                })?;
        let commands = self.commands_of(name).await?;
        let (tx, rx) = oneshot::channel();
        commands
            .send(Command::Skip(entry, tx))
            .await
            .map_err(|_| IngesterError::ShuttingDown)?;
        rx.await
            .map_err(|_| IngesterError::ShuttingDown)?
            .map_err(IngesterError::FailedPrecondition)
    }

    pub async fn status(&self, name: Option<&str>) -> Result<v1::StatusReply> {
        let running = self.running.lock().await;
        let mut rules = Vec::new();
        let mut disk_full = false;
        let now = proto::types::time::now_millis();
        let mut names: Vec<&String> = running.keys().collect();
        names.sort();
        if let Some(n) = name {
            if !running.contains_key(n) {
                return Err(IngesterError::RuleNotFound(n.into()));
            }
        }
        for rule_name in names {
            if name.is_some_and(|n| n != rule_name) {
                continue;
            }
            let Some(handle) = running.get(rule_name) else {
                continue;
            };
            let stored = self.rules.get(rule_name)?;
            let spool = handle.spool.stats();
            let stats = &handle.stats;
            let text = stats.text();
            let connected = stats.connected.load(std::sync::atomic::Ordering::Relaxed);
            let full = stats.disk_full.load(std::sync::atomic::Ordering::Relaxed);
            disk_full |= full;
            let (state, reason) = if stored.paused {
                ("paused".to_string(), "paused by the operator".to_string())
            } else if !text.blocked.is_empty() {
                (
                    "blocked".to_string(),
                    text.blocked
                        .iter()
                        .map(|b| b.reason.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            } else if full {
                ("error".into(), "spool disk full: consumption paused".into())
            } else if !connected {
                (
                    "error".into(),
                    if text.last_error.is_empty() {
                        "connecting to Pulsar".into()
                    } else {
                        text.last_error.clone()
                    },
                )
            } else {
                ("running".into(), String::new())
            };
            let quarantined = RuleStats::get(&stats.quarantined);
            rules.push(v1::RuleStatus {
                name: rule_name.clone(),
                state,
                state_reason: reason,
                consumer_connected: connected,
                messages_consumed: RuleStats::get(&stats.messages_consumed),
                duplicates_dropped: RuleStats::get(&stats.duplicates_dropped),
                spooled_messages: spool.spooled_messages,
                spooled_bytes: spool.spooled_bytes,
                open_segment_messages: spool.open_segment_messages,
                open_segment_age_ms: if spool.open_segment_opened_at_ms > 0 {
                    now.saturating_sub(spool.open_segment_opened_at_ms)
                } else {
                    0
                },
                sealed_segments: spool.waiting_segments,
                last_object_key: text.last_object_key.clone(),
                last_stored_at: fmt_ms(text.last_stored_at_ms),
                last_error: text.last_error.clone(),
                last_error_at: fmt_ms(text.last_error_at_ms),
                backlog_age_ms: backlog_age_ms(
                    now,
                    spool.oldest_publish_ms,
                    RuleStats::get(&stats.reading_stopped_since_ms),
                ),
                segments_stored: RuleStats::get(&stats.segments_stored),
                messages_acked: RuleStats::get(&stats.messages_acked),
                quarantined_segments: quarantined,
                blocked_entries: text.blocked.iter().map(|b| b.entry.clone()).collect(),
                broker_backlog_messages: RuleStats::get(&stats.broker_backlog),
                broker_backlog_known: stats
                    .broker_backlog_known
                    .load(std::sync::atomic::Ordering::Relaxed),
            });
        }
        Ok(v1::StatusReply {
            rules,
            version: proto::VERSION.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            spool_disk_full: disk_full,
        })
    }

    /// Upload failures the uploader reported, per rule (not in the status reply; for `/metrics`).
    pub async fn upload_failures(&self) -> Vec<(String, u64)> {
        let running = self.running.lock().await;
        let mut out: Vec<(String, u64)> = running
            .iter()
            .map(|(name, h)| (name.clone(), RuleStats::get(&h.stats.upload_failures)))
            .collect();
        out.sort();
        out
    }

    pub fn logs(&self, req: &v1::LogsRequest) -> Result<Vec<v1::LogEntry>> {
        self.rules.get(&req.name)?;
        let since_ms = if req.since_secs > 0 {
            proto::types::time::now_millis().saturating_sub(req.since_secs.saturating_mul(1000))
        } else {
            0
        };
        let limit = if req.limit == 0 {
            100
        } else {
            req.limit as usize
        };
        Ok(self
            .history
            .list(&req.name, req.failed_only, since_ms, limit)?
            .iter()
            .map(HistoryEntry::to_proto)
            .collect())
    }

    async fn spool_of(&self, name: &str) -> Result<Arc<RuleSpool>> {
        let running = self.running.lock().await;
        running
            .get(name)
            .map(|h| h.spool.clone())
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))
    }

    pub async fn segments(&self, name: &str) -> Result<Vec<v1::SegmentInfo>> {
        let spool = self.spool_of(name).await?;
        Ok(spool.segments().iter().map(|m| m.to_proto(name)).collect())
    }

    /// Sealed segments of every rule, shared fairly between rules ([`sealed_page::select`]);
    /// waits up to `wait` for one to appear.
    pub async fn list_sealed(&self, max: usize, wait: Duration) -> Vec<v1::SegmentInfo> {
        let notified = self.sealed_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let collect = || async {
            let running = self.running.lock().await;
            let mut all = Vec::new();
            for (name, handle) in running.iter() {
                for meta in handle.spool.sealed() {
                    let mut info = meta.to_proto(name);
                    info.file_path = handle.spool.segment_file(&meta).display().to_string();
                    all.push(sealed_page::Candidate {
                        rule: name.clone(),
                        sealed_at_ms: meta.sealed_at_ms,
                        item: info,
                    });
                }
            }
            sealed_page::select(all, max)
        };
        let found = collect().await;
        if !found.is_empty() || wait.is_zero() {
            return found;
        }
        let _ = tokio::time::timeout(wait, notified).await;
        collect().await
    }

    /// Streams a sealed segment file, checking its CRC32C as it goes. A mismatch quarantines the
    /// file (it is rewritten from the spool) and ends the stream with DATA_LOSS.
    pub async fn read_segment(
        self: &Arc<Self>,
        rule: &str,
        segment_no: u64,
    ) -> Result<mpsc::Receiver<std::result::Result<v1::SegmentChunk, tonic::Status>>> {
        let spool = self.spool_of(rule).await?;
        let (meta, path) = spool.sealed_file(segment_no)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| IngesterError::io(format!("opening {}", path.display()), e))?;
        let (tx, rx) = mpsc::channel(4);
        let app = self.clone();
        let rule = rule.to_string();
        tokio::spawn(async move {
            let mut crc = 0u32;
            let mut len = 0u64;
            loop {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(err) => {
                        let _ = tx
                            .send(Err(tonic::Status::internal(format!(
                                "reading segment {segment_no} of rule {rule:?}: {err}"
                            ))))
                            .await;
                        return;
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                crc = crc32c::crc32c_append(crc, &buf);
                len += n as u64;
                if len > meta.file_bytes {
                    break;
                }
                if tx
                    .send(Ok(v1::SegmentChunk {
                        data: bytes::Bytes::from(buf),
                    }))
                    .await
                    .is_err()
                {
                    return; // the uploader went away; nothing to clean up
                }
            }
            if crc != meta.crc32c || len != meta.file_bytes {
                let reason = format!(
                    "checksum mismatch: file has {len} bytes crc32c {crc:08x}, sealed as {} bytes crc32c {:08x}",
                    meta.file_bytes, meta.crc32c
                );
                let status = app.quarantine(&spool, segment_no, &reason).await;
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(rx)
    }

    async fn quarantine(
        &self,
        spool: &Arc<RuleSpool>,
        segment_no: u64,
        reason: &str,
    ) -> tonic::Status {
        let rule = spool.rule().to_string();
        warn!(rule = %rule, segment = segment_no, reason = %reason, "damaged segment file quarantined");
        let moved = match spool.quarantine(segment_no) {
            Ok(path) => format!("moved to {}", path.display()),
            Err(err) => format!("could not move it aside: {err}"),
        };
        let mut entry = HistoryEntry::event(
            HistoryKind::Quarantined,
            format!("segment {segment_no} is damaged ({reason}); {moved}; it is rewritten from the spool"),
        );
        entry.segment_no = segment_no;
        self.record(&rule, entry);
        {
            let running = self.running.lock().await;
            if let Some(handle) = running.get(&rule) {
                RuleStats::add(&handle.stats.quarantined, 1);
                handle
                    .stats
                    .set_error(format!("segment {segment_no} quarantined: {reason}"));
            }
        }
        self.sealer.seal(spool.clone(), segment_no);
        IngesterError::Damaged {
            rule,
            segment_no,
            reason: reason.to_string(),
        }
        .into()
    }

    pub async fn commit(&self, req: &v1::CommitSegmentRequest) -> Result<CommitOutcome> {
        let (spool, stats, commands) = {
            let running = self.running.lock().await;
            let handle = running
                .get(&req.rule)
                .ok_or_else(|| IngesterError::RuleNotFound(req.rule.clone()))?;
            (
                handle.spool.clone(),
                handle.stats.clone(),
                handle.commands.clone(),
            )
        };
        crate::commit_check::check_request(req).map_err(IngesterError::InvalidRequest)?;
        let meta = spool
            .segments()
            .into_iter()
            .find(|m| m.segment_no == req.segment_no);
        if let Some(meta) = &meta {
            // Before sealing there is no object to compare with; mark_stored refuses those.
            if meta.state >= crate::spool::SegmentState::Sealed {
                crate::commit_check::check_against(req, meta)
                    .map_err(IngesterError::InvalidRequest)?;
            }
        }
        let outcome = spool
            .mark_stored(req.segment_no, &req.etag, req.upload_ms, req.attempts)
            .await?;
        edge::failpoint::hit("ingester:after_commit");
        if outcome == CommitOutcome::Committed {
            if let Some(meta) = meta {
                RuleStats::add(&stats.segments_stored, 1);
                stats.set_stored(&meta.object_key);
                let mut entry =
                    HistoryEntry::event(HistoryKind::Stored, format!("stored {}", meta.object_key));
                entry.segment_no = meta.segment_no;
                entry.object_key = meta.object_key.clone();
                entry.messages = meta.messages;
                entry.bytes = meta.file_bytes;
                entry.window_start_ms = meta.window_start_ms;
                entry.duration_ms = req.upload_ms;
                entry.attempts = req.attempts;
                self.record(&req.rule, entry);
            }
            // The consumer task acknowledges; a full queue means an AckReady is already pending.
            let _ = commands.try_send(Command::AckReady);
        }
        Ok(outcome)
    }

    pub async fn report_failure(&self, req: &v1::UploadFailure) -> Result<()> {
        let stats = {
            let running = self.running.lock().await;
            running.get(&req.rule).map(|h| h.stats.clone())
        };
        let Some(stats) = stats else {
            return Err(IngesterError::RuleNotFound(req.rule.clone()));
        };
        // The text comes from the uploader (a store's error body can be long): it is kept in
        // the history and in `status`, so it is cut.
        let message = format!(
            "upload of segment {} failed (attempt {}): {}",
            req.segment_no,
            req.attempt,
            crate::history::cut_text(&req.error, crate::history::MAX_REPORTED_TEXT)
        );
        stats.set_error(&message);
        RuleStats::add(&stats.upload_failures, 1);
        let mut entry = HistoryEntry::event(HistoryKind::UploadFailed, message);
        entry.segment_no = req.segment_no;
        entry.attempts = req.attempt;
        self.record(&req.rule, entry);
        Ok(())
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

/// Whether the edit makes the rule read other messages: another cluster, topic or
/// subscription. Their message ids mean nothing next to the old ones.
fn is_source_change(old: &RuleConfig, new: &RuleConfig) -> bool {
    old.service_url != new.service_url
        || old.topic != new.topic
        || old.subscription != new.subscription
}

/// Why `rule edit --start` alone is refused: nothing could honour it. The broker keeps the
/// subscription's position (a start applies only when a subscription is created), and even a
/// seek back would not help: the spool drops every re-read message as already acknowledged.
fn start_needs_a_new_subscription(old: &RuleConfig, new: &RuleConfig) -> RuleError {
    RuleError {
        field: "start",
        message: format!(
            "start {} is refused: a start position applies when the subscription is created, and subscription {:?} on {} exists already and reads on from its own position (messages read again would be dropped as already backed up); to back up from another position, give --start together with a new --subscription (or --topic or --service-url)",
            new.start.display(),
            old.subscription,
            old.topic
        ),
    }
}

fn spool_not_empty(old: &RuleConfig) -> IngesterError {
    IngesterError::FailedPrecondition(format!(
        "rule {:?} still has unacknowledged messages from {} at {}; run `rule flush` and wait until `segments` is empty before changing service_url, topic or subscription",
        old.name, old.topic, old.service_url
    ))
}

/// How far behind the backup is: the oldest spooled message's age, or, while the rule reads
/// nothing from Pulsar, at least the time since it stopped (what waits there is older still).
fn backlog_age_ms(now: u64, oldest_spooled_publish_ms: u64, reading_stopped_since_ms: u64) -> u64 {
    let spooled = if oldest_spooled_publish_ms > 0 {
        now.saturating_sub(oldest_spooled_publish_ms)
    } else {
        0
    };
    let waiting = if reading_stopped_since_ms > 0 {
        now.saturating_sub(reading_stopped_since_ms)
    } else {
        0
    };
    spooled.max(waiting)
}

fn fmt_ms(ms: u64) -> String {
    if ms == 0 {
        String::new()
    } else {
        proto::types::time::rfc3339_from_millis(ms)
    }
}

fn describe_changes(
    old: &proto::types::RuleConfig,
    new: &proto::types::RuleConfig,
    token: bool,
) -> String {
    let mut changed = old.to_input().changed_fields(&new.to_input());
    if token {
        changed.push("token");
    }
    if changed.is_empty() {
        "no change".into()
    } else {
        changed.join(", ")
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::v1;

    use super::{backlog_age_ms, IngesterApp};
    use crate::consumer::ConsumerLimits;

    /// A `rule edit` that restarts the consumer (a token, the subscription type, the source)
    /// hands the new consumer the rule's spool: a second spool over the same files would seal
    /// the same segments into the same temporary files and keep retrying the ones the other
    /// sealed and freed.
    #[tokio::test]
    async fn a_restarted_consumer_carries_on_with_the_rules_spool() -> crate::error::Result<()> {
        let dir = tempfile::tempdir().map_err(|e| crate::error::IngesterError::io("tempdir", e))?;
        let limits = ConsumerLimits {
            max_spool_bytes: 0,
            receiver_queue: 100,
            receiver_queue_bytes: 0,
            disk_reserve_bytes: 0,
        };
        let app = IngesterApp::open(dir.path().join("data"), 100, limits, "n1".into()).await?;
        let spec = |name: &str| v1::RuleSpec {
            name: name.into(),
            ..v1::RuleSpec::default()
        };
        app.create_rule(&v1::RuleSpec {
            // Nothing listens on port 1: the consumer keeps retrying, which is all it needs to do.
            service_url: Some("pulsar://127.0.0.1:1".into()),
            topic: Some("orders".into()),
            subscription: Some("backup".into()),
            bucket: Some("backup-1250000000".into()),
            region: Some("ap-guangzhou".into()),
            ..spec("orders")
        })
        .await?;
        let first = app.spool_of("orders").await?;
        for edit in [
            v1::RuleSpec {
                token: Some("rotated".into()),
                ..spec("orders")
            },
            v1::RuleSpec {
                subscription_type: Some("exclusive".into()),
                ..spec("orders")
            },
            v1::RuleSpec {
                topic: Some("orders-v2".into()),
                ..spec("orders")
            },
        ] {
            app.edit_rule(&edit, false).await?;
            let now = app.spool_of("orders").await?;
            assert!(Arc::ptr_eq(&first, &now), "a second spool after {edit:?}");
        }
        app.shutdown().await;
        Ok(())
    }

    #[test]
    fn the_lag_counts_what_waits_in_pulsar_while_nothing_is_read() {
        let now = 1_000_000;
        assert_eq!(backlog_age_ms(now, 0, 0), 0, "caught up");
        assert_eq!(
            backlog_age_ms(now, now - 4_000, 0),
            4_000,
            "the oldest spooled message"
        );
        // Paused (or disconnected, or blocked) a minute ago with an empty spool: a minute.
        assert_eq!(backlog_age_ms(now, 0, now - 60_000), 60_000);
        // Whichever is older.
        assert_eq!(backlog_age_ms(now, now - 90_000, now - 60_000), 90_000);
        assert_eq!(
            backlog_age_ms(now, now + 5, now + 5),
            0,
            "clocks a little apart"
        );
    }
}
