//! Restore jobs' targets: the topic, the service URL and the token, kept in the spool database
//! (token in a tree of its own, as rules' tokens are: nothing that returns a target carries it),
//! and the producers of the jobs running now, one per (job, source partition, target
//! partition), all named `restore-{job}-{source partition}`.

use std::collections::HashMap;
use std::sync::Arc;

use proto::types::Secret;
use proto::v1::{RestoreMessage, RestoreTargetRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::info;

use super::producer::{self, OutMessage, SequencedProducer};
use crate::error::{IngesterError, Result};
use crate::source::trust::PulsarTrust;
use crate::spool::db::Database;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredTarget {
    to_topic: String,
    service_url: String,
    /// Of the target topic when the job was created; 0 = not partitioned.
    #[serde(default)]
    partitions: u32,
}

/// A message's `target_partition` asking to be routed by its key (as pulsar-rs's partitioned
/// producer does: murmur3 of the key; a message without key by its sequence id).
pub const BY_KEY: i32 = -2;

type ProducerKey = (String, i32, i32);

/// What the ingester knows of one (job, source partition, target partition) while it runs.
#[derive(Default)]
struct Lane {
    /// None after a failure (or a call cut short): the next call connects afresh.
    producer: Option<SequencedProducer>,
    /// The highest sequence id the broker confirmed on this lane. Sequence ids increase along a
    /// lane, so a message at or below it is one the broker has: a retried call (after a lost
    /// connection, or an uploader restarted before it recorded the progress) skips it rather
    /// than producing it twice. Memory only: after an ingester restart the uploader's recorded
    /// progress is the bound (at most its last unrecorded call is sent again).
    confirmed: Option<u64>,
}

pub struct RestoreTargets {
    db: Arc<Database>,
    /// What a `pulsar+ssl://` target's certificate is checked against (as the rules' brokers').
    trust: PulsarTrust,
    lanes: Mutex<HashMap<ProducerKey, Lane>>,
}

/// The producer name of a job's source partition: fixed, so that a broker with deduplication
/// recognises a resumed job's messages as the same producer's.
pub fn producer_name(job: &str, source_partition: i32) -> String {
    format!("restore-{job}-{source_partition}")
}

fn refused(err: producer::ProduceError) -> IngesterError {
    IngesterError::FailedPrecondition(format!("restore target: {err}"))
}

impl RestoreTargets {
    pub fn open(db: &Arc<Database>, trust: PulsarTrust) -> Result<RestoreTargets> {
        db.open_tree("restore_targets")?;
        db.open_tree("restore_tokens")?;
        Ok(RestoreTargets {
            db: db.clone(),
            trust,
            lanes: Mutex::new(HashMap::new()),
        })
    }

    /// Looks the target up (its partitions) and, unless a dry run, records it.
    pub async fn set(&self, req: &RestoreTargetRequest) -> Result<u32> {
        proto::types::rule::validate_name(&req.job)
            .map_err(|e| IngesterError::InvalidRequest(format!("job: {e}")))?;
        if req.to_topic.is_empty() || req.service_url.is_empty() {
            return Err(IngesterError::InvalidRequest(
                "a restore needs --to-topic and --service-url".into(),
            ));
        }
        let token = (!req.token.is_empty()).then(|| Secret::new(req.token.clone()));
        let partitions =
            producer::partitions(&req.service_url, token.as_ref(), &self.trust, &req.to_topic)
                .await
                .map_err(refused)?;
        if !req.dry_run {
            let target = StoredTarget {
                to_topic: req.to_topic.clone(),
                service_url: req.service_url.clone(),
                partitions,
            };
            let v =
                serde_json::to_vec(&target).map_err(|e| IngesterError::Corrupt(e.to_string()))?;
            self.db.open_tree("restore_targets")?.insert(&req.job, v)?;
            let tokens = self.db.open_tree("restore_tokens")?;
            match &token {
                Some(t) => tokens.insert(&req.job, t.expose().as_bytes())?,
                None => tokens.remove(&req.job)?,
            };
            self.db.flush_async().await?;
            // A new target is a new job: nothing confirmed under an earlier job of that name.
            self.lanes.lock().await.retain(|(j, _, _), _| *j != req.job);
            info!(job = %req.job, to_topic = %req.to_topic, partitions, "restore target recorded");
        }
        Ok(partitions)
    }

    pub async fn drop_target(&self, job: &str) -> Result<()> {
        self.lanes.lock().await.retain(|(j, _, _), _| j != job);
        self.db.open_tree("restore_targets")?.remove(job)?;
        self.db.open_tree("restore_tokens")?.remove(job)?;
        self.db.flush_async().await?;
        info!(job = %job, "restore target and token dropped");
        Ok(())
    }

    fn target(&self, job: &str) -> Result<(StoredTarget, Option<Secret>)> {
        let v = self
            .db
            .open_tree("restore_targets")?
            .get(job)?
            .ok_or_else(|| {
                IngesterError::FailedPrecondition(format!(
                    "restore job {job:?} has no target on this ingester (restore create records it)"
                ))
            })?;
        let target: StoredTarget = serde_json::from_slice(&v)
            .map_err(|e| IngesterError::Corrupt(format!("restore target: {e}")))?;
        let token = self
            .db
            .open_tree("restore_tokens")?
            .get(job)?
            .map(|t| Secret::new(String::from_utf8_lossy(&t).into_owned()));
        Ok((target, token))
    }

    /// Produces `messages` of one source partition and returns once the broker confirmed them
    /// all. A producer that failed is dropped, so the next call (the uploader's retry) connects
    /// afresh and sends again.
    pub async fn produce(
        &self,
        job: &str,
        source_partition: i32,
        messages: Vec<RestoreMessage>,
    ) -> Result<String> {
        let name = producer_name(job, source_partition);
        let (target, token) = self.target(job)?;
        let mut by_target: Vec<(i32, Vec<OutMessage>)> = Vec::new();
        for m in messages {
            let out = OutMessage {
                sequence_id: m.sequence_id,
                payload: m.payload,
                key: m.key,
                key_base64: m.key_base64,
                ordering_key: m.ordering_key,
                properties: m.properties.into_iter().map(|p| (p.key, p.value)).collect(),
                event_time_ms: m.event_time_ms,
            };
            let target_partition = match m.target_partition {
                BY_KEY if target.partitions > 0 => {
                    let n = target.partitions as usize;
                    let index = match &out.key {
                        Some(key) => {
                            pulsar::routing_policy::RoutingPolicy::compute_partition_index_for_key(
                                key, n,
                            )
                        }
                        None => (out.sequence_id % n as u64) as usize,
                    };
                    i32::try_from(index).unwrap_or(0)
                }
                BY_KEY => -1,
                p => p,
            };
            match by_target.iter_mut().find(|(t, _)| *t == target_partition) {
                Some((_, list)) => list.push(out),
                None => by_target.push((target_partition, vec![out])),
            }
        }
        let mut lanes = self.lanes.lock().await;
        for (target_partition, mut list) in by_target {
            let key = (job.to_string(), source_partition, target_partition);
            let lane = lanes.entry(key).or_default();
            // Taken out while it sends: if this call is dropped half way (the uploader went
            // away), the producer goes with it rather than being reused mid-frame.
            let mut p = match lane.producer.take() {
                Some(p) => p,
                None => {
                    let topic = if target_partition < 0 {
                        target.to_topic.clone()
                    } else {
                        format!("{}-partition-{target_partition}", target.to_topic)
                    };
                    let p = SequencedProducer::create(
                        &target.service_url,
                        token.as_ref(),
                        &self.trust,
                        &topic,
                        &name,
                    )
                    .await
                    .map_err(refused)?;
                    // A deduplicating broker says what it has persisted from this name.
                    lane.confirmed = lane.confirmed.max(p.last_sequence_id());
                    p
                }
            };
            if let Some(confirmed) = lane.confirmed {
                list.retain(|m| m.sequence_id > confirmed);
            }
            match p.send(&list).await {
                Ok(()) => {
                    if let Some(last) = list.last() {
                        lane.confirmed = lane.confirmed.max(Some(last.sequence_id));
                    }
                    lane.producer = Some(p);
                }
                Err(failed) => {
                    lane.confirmed = lane.confirmed.max(failed.confirmed);
                    return Err(refused(failed.error));
                }
            }
        }
        Ok(name)
    }
}
