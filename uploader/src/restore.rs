//! Restore jobs, source side: the uploader plans a job from the rule's manifest, reads the
//! objects in order per source partition, and hands the messages to the ingester (which alone
//! holds the target's Pulsar token) to produce.
//!
//! A job is one JSON file in `state_dir/restore/`, replaced atomically after every batch the
//! broker confirmed: its spec, its plan (per source partition, the object keys in message order
//! and the message count) and its progress (per source partition, the position: how many of the
//! partition's records are done). A message's sequence id is its position, and its producer name
//! `restore-{job}-{source partition}`, so a deduplicating broker drops what a resumed job sends
//! again; on a broker without deduplication at most the last unconfirmed batch arrives twice.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proto::types::manifest::ManifestEntry;
use proto::types::time::{now_millis, rfc3339_from_millis};
use proto::types::{decode_record, MessageId};
use proto::v1::{
    CreateRestoreRequest, RestoreJob, RestoreMessage, RestorePartition, RestoreProduceRequest,
    RestoreProperty,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::ingester::Client;
use crate::upload::UploadContext;

/// The property a restored message carries its original message id in.
pub const MESSAGE_ID_PROPERTY: &str = "tdmq-backup.message-id";
/// ... and its original publish time (RFC 3339 UTC, milliseconds).
pub const PUBLISH_TIME_PROPERTY: &str = "tdmq-backup.publish-time";
/// Messages per RestoreProduce call (and per durable progress step).
const BATCH: usize = 500;
/// An object larger than this is refused (it is read whole; segments are far smaller).
const MAX_OBJECT: usize = 1 << 30;
/// Transient failures in a row before the job is failed (it can be resumed).
const MAX_ATTEMPTS: u32 = 8;
/// `target_partition` for a plain target topic, and for routing by key.
const PLAIN: i32 = -1;
const BY_KEY: i32 = -2;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("invalid restore request: {0}")]
    Invalid(String),
    #[error("restore job {0:?} not found")]
    NotFound(String),
    #[error("restore job {0:?} already exists")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Upload(#[from] crate::error::UploadError),
}

impl From<RestoreError> for tonic::Status {
    fn from(err: RestoreError) -> tonic::Status {
        let code = match &err {
            RestoreError::Invalid(_) => tonic::Code::InvalidArgument,
            RestoreError::NotFound(_) => tonic::Code::NotFound,
            RestoreError::Exists(_) => tonic::Code::AlreadyExists,
            RestoreError::State(_) => tonic::Code::FailedPrecondition,
            RestoreError::Upload(_) => tonic::Code::Unavailable,
        };
        tonic::Status::new(code, err.to_string())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Spec {
    job: String,
    rule: String,
    bucket: String,
    region: String,
    prefix: String,
    endpoint: String,
    to_topic: String,
    target_partitions: u32,
    from: String,
    to: String,
    partitions: Vec<i32>,
    rate: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct PartPlan {
    source_partition: i32,
    target_partition: i32,
    /// Object keys holding this partition's messages, in message order.
    objects: Vec<String>,
    messages: u64,
    /// Records of this partition done: produced and confirmed, or left out by the time range.
    position: u64,
    produced: u64,
    skipped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobFile {
    spec: Spec,
    state: String,
    reason: String,
    objects: u64,
    messages: u64,
    min_publish_time: String,
    max_publish_time: String,
    parts: Vec<PartPlan>,
    created_at: String,
    updated_at: String,
}

impl JobFile {
    fn to_proto(&self) -> RestoreJob {
        RestoreJob {
            job: self.spec.job.clone(),
            state: self.state.clone(),
            reason: self.reason.clone(),
            rule: self.spec.rule.clone(),
            bucket: self.spec.bucket.clone(),
            prefix: self.spec.prefix.clone(),
            to_topic: self.spec.to_topic.clone(),
            from: self.spec.from.clone(),
            to: self.spec.to.clone(),
            rate: self.spec.rate,
            objects: self.objects,
            messages: self.messages,
            produced: self.parts.iter().map(|p| p.produced).sum(),
            skipped: self.parts.iter().map(|p| p.skipped).sum(),
            min_publish_time: self.min_publish_time.clone(),
            max_publish_time: self.max_publish_time.clone(),
            target_partitions: self.spec.target_partitions,
            partitions: self
                .parts
                .iter()
                .map(|p| RestorePartition {
                    source_partition: p.source_partition,
                    target_partition: p.target_partition,
                    objects: p.objects.len() as u64,
                    messages: p.messages,
                    position: p.position,
                    produced: p.produced,
                })
                .collect(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// How the ingester is reached for RestoreProduce.
#[derive(Clone)]
pub struct IngesterLink {
    pub url: String,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub auth: proto::auth::SendToken,
    pub backoff: Backoff,
}

struct Slot {
    file: Mutex<JobFile>,
    /// What the operator asked for last: "running", "paused" or "cancelled".
    wanted: watch::Sender<String>,
    /// Held by the task running the job: a `resume` while the paused task is still finishing
    /// its batch waits for it instead of producing beside it.
    runner: tokio::sync::Mutex<()>,
}

pub struct RestoreManager {
    dir: PathBuf,
    ctx: Arc<UploadContext>,
    link: IngesterLink,
    jobs: Mutex<HashMap<String, Arc<Slot>>>,
    shutdown: watch::Receiver<bool>,
}

fn parse_time(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, RestoreError> {
    if text.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| RestoreError::Invalid(format!("--{name} {text:?}: {e}")))
}

fn ms_of(t: Option<DateTime<Utc>>) -> Option<u64> {
    t.and_then(|t| u64::try_from(t.timestamp_millis()).ok())
}

/// How many partitions the backed-up topic has (0: not partitioned), as far as the manifest
/// shows.
fn source_partitions(entries: &[ManifestEntry]) -> u32 {
    entries
        .iter()
        .flat_map(|e| e.partitions.iter().map(|p| p.partition))
        .max()
        .map_or(0, |max| u32::try_from(max + 1).unwrap_or(0))
}

/// An object of a partition's plan: its order (source, first id of the partition), key and
/// message count.
type PlannedObject = ((u32, (u64, u64, i32)), String, u64);

/// The plan of a job: per selected source partition, the objects holding it, ordered by the
/// partition's first message id (source changes first: ids of different sources are not
/// comparable), and where it goes in the target.
fn plan(
    entries: &[&ManifestEntry],
    source_partitions: u32,
    selected: &[i32],
    target_partitions: u32,
) -> Result<Vec<PartPlan>, RestoreError> {
    let mut by_part: BTreeMap<i32, Vec<PlannedObject>> = BTreeMap::new();
    for e in entries {
        if e.partitions.is_empty() {
            return Err(RestoreError::Invalid(format!(
                "manifest entry of {} has no per-partition ranges (stored by an older ingester): \
                 it cannot be planned",
                e.key
            )));
        }
        for p in &e.partitions {
            if !selected.is_empty() && !selected.contains(&p.partition) {
                continue;
            }
            let first = p.first().map_err(|err| {
                RestoreError::Invalid(format!("manifest entry of {}: {err}", e.key))
            })?;
            by_part.entry(p.partition).or_default().push((
                (e.source, first.position()),
                e.key.clone(),
                p.messages,
            ));
        }
    }
    Ok(by_part
        .into_iter()
        .map(|(partition, mut objects)| {
            objects.sort();
            let target_partition = if target_partitions == 0 {
                PLAIN
            } else if partition >= 0 && target_partitions == source_partitions {
                partition
            } else {
                BY_KEY
            };
            PartPlan {
                source_partition: partition,
                target_partition,
                messages: objects.iter().map(|(_, _, n)| n).sum(),
                objects: objects.into_iter().map(|(_, key, _)| key).collect(),
                ..PartPlan::default()
            }
        })
        .collect())
}

impl RestoreManager {
    /// Loads the jobs under `state_dir/restore/` and starts those that were running.
    pub fn open(
        state_dir: &std::path::Path,
        ctx: Arc<UploadContext>,
        link: IngesterLink,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<RestoreManager>, RestoreError> {
        let dir = state_dir.join("restore");
        std::fs::create_dir_all(&dir)
            .map_err(|e| crate::error::UploadError::io("creating", &dir, e))?;
        let manager = Arc::new(RestoreManager {
            dir: dir.clone(),
            ctx,
            link,
            jobs: Mutex::new(HashMap::new()),
            shutdown,
        });
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| crate::error::UploadError::io("reading", &dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file: JobFile = match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(f) => f,
                Err(err) => {
                    warn!(path = %path.display(), error = %err, "a restore job file cannot be read; left as it is");
                    continue;
                }
            };
            let resume = file.state == "running" || file.state == "pending";
            let wanted = if file.state == "paused" {
                "paused"
            } else {
                "running"
            };
            let slot = Arc::new(Slot {
                wanted: watch::channel(wanted.to_string()).0,
                file: Mutex::new(file.clone()),
                runner: tokio::sync::Mutex::new(()),
            });
            manager
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(file.spec.job.clone(), slot.clone());
            if resume {
                info!(job = %file.spec.job, "restore job resumed after a restart");
                tokio::spawn(manager.clone().run(slot));
            }
        }
        Ok(manager)
    }

    fn slot(&self, job: &str) -> Result<Arc<Slot>, RestoreError> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(job)
            .cloned()
            .ok_or_else(|| RestoreError::NotFound(job.to_string()))
    }

    fn save(&self, file: &mut JobFile) -> Result<(), RestoreError> {
        file.updated_at = rfc3339_from_millis(now_millis());
        let data = serde_json::to_vec_pretty(file)
            .map_err(|e| RestoreError::State(format!("encoding the job: {e}")))?;
        let path = self.dir.join(format!("{}.json", file.spec.job));
        crate::multipart::write_atomically(&self.dir, &path, &data)?;
        Ok(())
    }

    /// Plans the job from the manifest; unless a dry run, records and starts it. Returns the job
    /// (for a dry run: the plan, state `pending`, nothing recorded).
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRestoreRequest,
    ) -> Result<RestoreJob, RestoreError> {
        proto::types::rule::validate_name(&req.job)
            .map_err(|e| RestoreError::Invalid(format!("job: {e}")))?;
        if req.rule.is_empty() || req.bucket.is_empty() {
            return Err(RestoreError::Invalid(
                "a restore needs the rule whose manifest lists the objects, and its bucket".into(),
            ));
        }
        if !req.dry_run && self.slot(&req.job).is_ok() {
            return Err(RestoreError::Exists(req.job));
        }
        let from = parse_time("from", &req.from)?;
        let to = parse_time("to", &req.to)?;
        let store = self
            .ctx
            .stores
            .store_for(&req.endpoint, &req.region)
            .await?;
        // All of the rule's entries, not only those of the time range: the source's partition
        // count (which decides whether partition p can go to partition p) is the whole topic's.
        let listing =
            crate::manifest::read_entries(&store, &req.bucket, &req.prefix, &req.rule, None, None)
                .await?;
        let in_range: Vec<&ManifestEntry> = listing
            .entries
            .iter()
            .filter(|e| e.published_within(from, to))
            .collect();
        let parts = plan(
            &in_range,
            source_partitions(&listing.entries),
            &req.partitions,
            req.target_partitions,
        )?;
        let planned: std::collections::HashSet<&str> = parts
            .iter()
            .flat_map(|p| p.objects.iter().map(String::as_str))
            .collect();
        let selected: Vec<&ManifestEntry> = in_range
            .into_iter()
            .filter(|e| planned.contains(e.key.as_str()))
            .collect();
        let now = rfc3339_from_millis(now_millis());
        let mut file = JobFile {
            spec: Spec {
                job: req.job.clone(),
                rule: req.rule,
                bucket: req.bucket,
                region: req.region,
                prefix: req.prefix,
                endpoint: req.endpoint,
                to_topic: req.to_topic,
                target_partitions: req.target_partitions,
                from: req.from,
                to: req.to,
                partitions: req.partitions,
                rate: req.rate,
            },
            state: "pending".into(),
            reason: String::new(),
            objects: selected.len() as u64,
            messages: parts.iter().map(|p| p.messages).sum(),
            min_publish_time: selected
                .iter()
                .map(|e| e.min_publish_time.clone())
                .filter(|t| !t.is_empty())
                .min()
                .unwrap_or_default(),
            max_publish_time: selected
                .iter()
                .map(|e| e.max_publish_time.clone())
                .max()
                .unwrap_or_default(),
            parts,
            created_at: now.clone(),
            updated_at: now,
        };
        if req.dry_run {
            return Ok(file.to_proto());
        }
        file.state = "running".into();
        self.save(&mut file)?;
        let slot = Arc::new(Slot {
            wanted: watch::channel("running".to_string()).0,
            file: Mutex::new(file.clone()),
            runner: tokio::sync::Mutex::new(()),
        });
        {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if jobs.contains_key(&req.job) {
                return Err(RestoreError::Exists(req.job));
            }
            jobs.insert(req.job.clone(), slot.clone());
        }
        info!(job = %req.job, objects = file.objects, messages = file.messages, "restore job created");
        tokio::spawn(self.clone().run(slot));
        Ok(file.to_proto())
    }

    pub fn list(&self) -> Vec<RestoreJob> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<RestoreJob> = jobs
            .values()
            .map(|s| {
                s.file
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .to_proto()
            })
            .collect();
        out.sort_by(|a, b| a.job.cmp(&b.job));
        out
    }

    pub fn get(&self, job: &str) -> Result<RestoreJob, RestoreError> {
        let slot = self.slot(job)?;
        let file = slot
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(file.to_proto())
    }

    /// `pause`, `resume` or `cancel`.
    pub fn control(self: &Arc<Self>, job: &str, action: &str) -> Result<RestoreJob, RestoreError> {
        let slot = self.slot(job)?;
        let mut file = slot
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_state = file.state.clone();
        let (allowed, to_state) = match action {
            "pause" => (from_state == "running" || from_state == "pending", "paused"),
            "resume" => (from_state == "paused" || from_state == "failed", "running"),
            _ => (
                matches!(
                    from_state.as_str(),
                    "running" | "pending" | "paused" | "failed"
                ),
                "cancelled",
            ),
        };
        if !allowed {
            return Err(RestoreError::State(format!(
                "restore job {job:?} is {from_state}: it cannot be {}d",
                if action == "cancel" {
                    "cancelle"
                } else {
                    action
                }
            )));
        }
        file.state = to_state.to_string();
        if to_state == "running" {
            file.reason.clear();
        }
        self.save(&mut file)?;
        // `send_replace`, not `send`: with no task running (a paused job) there is no receiver,
        // and `send` would then leave the old value for the next task to read.
        slot.wanted.send_replace(to_state.to_string());
        let reply = file.to_proto();
        drop(file);
        // A paused job's task stopped at its last confirmed batch; a failed one's ended.
        if to_state == "running" {
            tokio::spawn(self.clone().run(slot));
        }
        if to_state == "cancelled" {
            tokio::spawn(self.clone().drop_target(job.to_string()));
        }
        info!(job, action, "restore job {to_state}");
        Ok(reply)
    }

    /// Asks the ingester to forget a finished job's target and token (best effort: a target
    /// left behind is dropped by the next `restore cancel`, and holds no messages).
    async fn drop_target(self: Arc<Self>, job: String) {
        let mut shutdown = self.shutdown.clone();
        let client = crate::ingester::connect(
            &self.link.url,
            self.link.tls.clone(),
            &self.link.auth,
            self.link.backoff,
            &self.ctx.status,
            &mut shutdown,
        )
        .await;
        let result = match client {
            Ok(Some(mut client)) => client
                .drop_restore_target(proto::v1::RestoreJobName { job: job.clone() })
                .await
                .map(|_| ())
                .map_err(|s| crate::error::status_text(&s)),
            Ok(None) => return,
            Err(err) => Err(err.to_string()),
        };
        match result {
            Ok(()) => info!(job = %job, "the ingester forgot the restore target"),
            Err(error) => {
                warn!(job = %job, error = %error, "the restore target could not be dropped")
            }
        }
    }

    fn update(&self, slot: &Slot, f: impl FnOnce(&mut JobFile)) -> Result<(), RestoreError> {
        let mut file = slot
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut file);
        self.save(&mut file)
    }

    /// Runs a job until it is done, failed, paused or cancelled (or the uploader stops).
    async fn run(self: Arc<Self>, slot: Arc<Slot>) {
        let _runner = slot.runner.lock().await;
        let (job, state) = {
            let f = slot
                .file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.spec.job.clone(), f.state.clone())
        };
        // The task this one waited for may have finished the job meanwhile.
        if state != "running" {
            return;
        }
        match self.run_job(&slot).await {
            Ok(Some(state)) => {
                let _ = self.update(&slot, |f| {
                    if f.state == "running" {
                        f.state = state.to_string();
                    }
                });
                info!(job = %job, state, "restore job ended");
                self.clone().drop_target(job).await;
            }
            Ok(None) => {}
            Err(reason) => {
                warn!(job = %job, reason = %reason, "restore job failed");
                let _ = self.update(&slot, |f| {
                    if f.state == "running" {
                        f.state = "failed".into();
                        f.reason = reason;
                    }
                });
            }
        }
    }

    /// `Ok(Some("done"))` when everything is produced; `Ok(None)` when stopped (paused,
    /// cancelled, shutdown); `Err` names why it failed.
    async fn run_job(&self, slot: &Slot) -> Result<Option<&'static str>, String> {
        let mut wanted = slot.wanted.subscribe();
        let file = slot
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let spec = file.spec.clone();
        let from = ms_of(parse_time("from", &spec.from).map_err(|e| e.to_string())?);
        let to = ms_of(parse_time("to", &spec.to).map_err(|e| e.to_string())?);
        let store = self
            .ctx
            .stores
            .store_for(&spec.endpoint, &spec.region)
            .await
            .map_err(|e| e.to_string())?;
        let mut shutdown = self.shutdown.clone();
        let Some(mut client) = crate::ingester::connect(
            &self.link.url,
            self.link.tls.clone(),
            &self.link.auth,
            self.link.backoff,
            &self.ctx.status,
            &mut shutdown,
        )
        .await
        .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let mut throttle = Throttle::new(spec.rate);
        // A fifth of a second's worth at a limited rate, so a pause takes effect soon and
        // the rate is kept smoothly rather than in bursts.
        let batch_size = match spec.rate {
            0 => BATCH,
            rate => usize::try_from(rate / 5).unwrap_or(BATCH).clamp(1, BATCH),
        };
        for (index, part) in file.parts.iter().enumerate() {
            if part.position >= part.messages {
                continue;
            }
            // Position of the next record of this partition, counted from the plan's start.
            let mut pos = 0u64;
            let mut batch: Vec<RestoreMessage> = Vec::new();
            let mut skipped = 0u64;
            for key in &part.objects {
                let records = read_object(&store, &spec.bucket, key).await?;
                for line in records.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let record = decode_record(line).map_err(|e| format!("{key}: {e}"))?;
                    if record.message_id.partition != part.source_partition
                        && !(part.source_partition == -1 && record.message_id.partition < 0)
                    {
                        continue;
                    }
                    let here = pos;
                    pos += 1;
                    if here < part.position {
                        continue;
                    }
                    let t = record.publish_time_ms;
                    if from.is_some_and(|f| t < f) || to.is_some_and(|x| t > x) {
                        skipped += 1;
                    } else {
                        batch.push(to_message(record, here, part.target_partition));
                    }
                    if batch.len() + skipped as usize >= batch_size
                        && !self
                            .flush(
                                slot,
                                &mut client,
                                &mut wanted,
                                &mut throttle,
                                index,
                                &mut batch,
                                &mut skipped,
                                pos,
                            )
                            .await?
                    {
                        return Ok(None);
                    }
                }
            }
            if !self
                .flush(
                    slot,
                    &mut client,
                    &mut wanted,
                    &mut throttle,
                    index,
                    &mut batch,
                    &mut skipped,
                    pos,
                )
                .await?
            {
                return Ok(None);
            }
        }
        Ok(Some("done"))
    }

    /// Produces `batch` (records up to `pos` of part `index`), then records the progress.
    /// `Ok(false)`: the job was paused or cancelled, or the uploader is stopping.
    #[allow(clippy::too_many_arguments)]
    async fn flush(
        &self,
        slot: &Slot,
        client: &mut Client,
        wanted: &mut watch::Receiver<String>,
        throttle: &mut Throttle,
        index: usize,
        batch: &mut Vec<RestoreMessage>,
        skipped: &mut u64,
        pos: u64,
    ) -> Result<bool, String> {
        let stopped = |wanted: &watch::Receiver<String>| {
            *wanted.borrow() != "running" || *self.shutdown.borrow()
        };
        if stopped(wanted) {
            return Ok(false);
        }
        let (job, source_partition) = {
            let f = slot
                .file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.spec.job.clone(), f.parts[index].source_partition)
        };
        let produced = batch.len() as u64;
        if !batch.is_empty() {
            throttle.wait(batch.len()).await;
            if stopped(wanted) {
                return Ok(false);
            }
            let request = RestoreProduceRequest {
                job: job.clone(),
                source_partition,
                messages: std::mem::take(batch),
            };
            let mut attempt = 0u32;
            loop {
                match client.restore_produce(request.clone()).await {
                    Ok(_) => break,
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                        ) || attempt + 1 >= MAX_ATTEMPTS =>
                    {
                        return Err(format!(
                            "producing to the target failed: {}",
                            crate::error::status_text(&status)
                        ));
                    }
                    Err(status) => {
                        attempt += 1;
                        warn!(job = %job, attempt, error = %crate::error::status_text(&status), "restore batch not confirmed; retrying");
                        let delay = self.link.backoff.delay_now(attempt);
                        let mut shutdown = self.shutdown.clone();
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait_for(|s| *s) => return Ok(false),
                            _ = wanted.wait_for(|w| w != "running") => return Ok(false),
                        }
                    }
                }
            }
        }
        let done_skipped = std::mem::take(skipped);
        self.update(slot, |f| {
            let part = &mut f.parts[index];
            part.position = pos;
            part.produced += produced;
            part.skipped += done_skipped;
        })
        .map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// The records of an object, uncompressed.
async fn read_object(
    store: &crate::store::Store,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, String> {
    let bytes = store
        .get_small_object(bucket, key, MAX_OBJECT)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?
        .ok_or_else(|| format!("{key} is in the manifest but not in the bucket"))?;
    if key.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{key}: not gzip: {e}"))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// A record as the message to produce: its own fields, plus its original id and publish time.
fn to_message(
    record: proto::types::Record,
    position: u64,
    target_partition: i32,
) -> RestoreMessage {
    let id: MessageId = record.message_id;
    let mut properties: Vec<RestoreProperty> = record
        .properties
        .into_iter()
        .filter(|(k, _)| k != MESSAGE_ID_PROPERTY && k != PUBLISH_TIME_PROPERTY)
        .map(|(key, value)| RestoreProperty { key, value })
        .collect();
    properties.push(RestoreProperty {
        key: MESSAGE_ID_PROPERTY.into(),
        value: id.to_string(),
    });
    properties.push(RestoreProperty {
        key: PUBLISH_TIME_PROPERTY.into(),
        value: rfc3339_from_millis(record.publish_time_ms),
    });
    RestoreMessage {
        sequence_id: position,
        target_partition,
        payload: record.payload,
        key: record.key,
        key_base64: record.key_base64,
        ordering_key: record.ordering_key,
        properties,
        event_time_ms: record.event_time_ms,
    }
}

/// `--rate N/s`: at most `rate` messages per second on average since the job (re)started.
struct Throttle {
    rate: u64,
    started: Instant,
    sent: u64,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    async fn wait(&mut self, n: usize) {
        if self.rate == 0 {
            return;
        }
        self.sent += n as u64;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::types::manifest::PartitionSpan;

    fn entry(key: &str, source: u32, spans: &[(i32, &str, u64)]) -> ManifestEntry {
        ManifestEntry {
            format: 1,
            rule: "r".into(),
            key: key.into(),
            size: 1,
            crc32c: "00000000".into(),
            etag: String::new(),
            content_encoding: "gzip".into(),
            messages: spans.iter().map(|s| s.2).sum(),
            record_bytes: 1,
            window_start: "2026-11-24T02:00:00.000Z".into(),
            min_publish_time: String::new(),
            max_publish_time: String::new(),
            source,
            segment_no: 0,
            topic: String::new(),
            partitions: spans
                .iter()
                .map(|&(partition, first, messages)| PartitionSpan {
                    partition,
                    first_message_id: first.into(),
                    last_message_id: first.into(),
                    messages,
                    last_completes_entry: true,
                    min_publish_time: String::new(),
                    max_publish_time: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn objects_are_ordered_by_message_id_not_key_and_partitions_mapped() {
        // Key order puts "1_10" before "1_9"; message order is the other way round.
        let entries = [
            entry("a-1_10", 0, &[(0, "1:10:0:-1", 5), (1, "2:3:1:-1", 2)]),
            entry("a-1_9", 0, &[(0, "1:9:0:-1", 1)]),
            entry("b-new-source", 1, &[(0, "1:1:0:-1", 3)]),
        ];
        let all: Vec<&ManifestEntry> = entries.iter().collect();
        let n = source_partitions(&entries);
        assert_eq!(n, 2);
        let parts = plan(&all, n, &[], 2).expect("plan");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].objects, ["a-1_9", "a-1_10", "b-new-source"]);
        assert_eq!(parts[0].messages, 9);
        assert_eq!(parts[0].target_partition, 0);
        assert_eq!(parts[1].target_partition, 1);
        // Other partition counts: by key; a plain target: the topic itself; a selection.
        assert_eq!(
            plan(&all, n, &[], 3).expect("plan")[0].target_partition,
            BY_KEY
        );
        assert_eq!(
            plan(&all, n, &[], 0).expect("plan")[1].target_partition,
            PLAIN
        );
        let only = plan(&all, n, &[1], 2).expect("plan");
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].objects, ["a-1_10"]);
    }

    #[test]
    fn a_restored_message_keeps_its_fields_and_names_its_origin() {
        let record = proto::types::Record {
            message_id: MessageId {
                ledger: 3,
                entry: 4,
                partition: 1,
                batch_index: -1,
            },
            topic: "t".into(),
            publish_time_ms: 1_795_488_259_913,
            event_time_ms: Some(5),
            key: Some("AAE=".into()),
            key_base64: true,
            ordering_key: Some(vec![9]),
            properties: vec![
                ("a".into(), "b".into()),
                (MESSAGE_ID_PROPERTY.into(), "old".into()),
            ],
            producer_name: "p".into(),
            sequence_id: 1,
            payload: vec![0xff],
        };
        let m = to_message(record, 42, 1);
        assert_eq!(m.sequence_id, 42);
        assert_eq!(m.payload, [0xff]);
        assert!(m.key_base64);
        let props: Vec<(&str, &str)> = m
            .properties
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            props,
            [
                ("a", "b"),
                (MESSAGE_ID_PROPERTY, "3:4:1:-1"),
                (PUBLISH_TIME_PROPERTY, "2026-11-24T02:44:19.913Z")
            ]
        );
    }
}
