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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proto::types::manifest::ManifestEntry;
use proto::types::time::{now_millis, rfc3339_from_millis};
use proto::types::MessageId;
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

mod planning;
mod run;
#[cfg(test)]
mod tests;

use planning::{entries_of_topic, ms_of, parse_time, plan, source_partitions};

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
    /// The bucket/prefix form: the topic replayed (`rule` is then empty).
    #[serde(default)]
    source_topic: String,
    /// Whose manifests listed the objects (the rule itself in the `--rule` form).
    #[serde(default)]
    manifest_rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct PartPlan {
    source_partition: i32,
    target_partition: i32,
    /// Object keys holding this partition's messages, in message order.
    objects: Vec<String>,
    /// This partition's messages in each of `objects` (empty in jobs planned before it was
    /// recorded): a resumed job skips the objects its position is past without reading them.
    #[serde(default)]
    counts: Vec<u64>,
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
    /// Objects fetched, over all runs (saved with the next progress step).
    #[serde(default)]
    objects_read: u64,
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
            region: self.spec.region.clone(),
            source_topic: self.spec.source_topic.clone(),
            manifest_rules: self.spec.manifest_rules.clone(),
            objects_read: self.objects_read,
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
        match (req.rule.is_empty(), req.source_topic.is_empty()) {
            (false, false) => {
                return Err(RestoreError::Invalid(
                    "a restore names either the rule or the backed-up topic, not both".into(),
                ))
            }
            (true, true) => {
                return Err(RestoreError::Invalid(
                    "a restore needs the rule whose manifest lists the objects, or the bucket, \
                     prefix and topic of a backup"
                        .into(),
                ))
            }
            _ => {}
        }
        if req.bucket.is_empty() {
            return Err(RestoreError::Invalid(
                "a restore needs the backup's bucket".into(),
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
        // All of the backup's entries, not only those of the time range: the source's partition
        // count (which decides whether partition p can go to partition p) is the whole topic's.
        let (manifest_rule, entries) = if req.rule.is_empty() {
            entries_of_topic(&store, &req.bucket, &req.prefix, &req.source_topic).await?
        } else {
            let listing = crate::manifest::read_entries(
                &store,
                &req.bucket,
                &req.prefix,
                &req.rule,
                None,
                None,
            )
            .await?;
            (req.rule.clone(), listing.entries)
        };
        let in_range: Vec<&ManifestEntry> = entries
            .iter()
            .filter(|e| e.published_within(from, to))
            .collect();
        let parts = plan(
            &in_range,
            source_partitions(&entries),
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
                source_topic: req.source_topic,
                manifest_rules: vec![manifest_rule],
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
            objects_read: 0,
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
}
