//! `verify`: checks a rule's backup against its manifest ([`crate::manifest`]), where the store
//! credentials are. (Not [`crate::verify`], which checks a segment's bytes while they stream.)
//!
//! Without `--deep` it makes one LIST of the rule's manifest, one GET per manifest document, one
//! LIST of the rule's topic folder, and a HEAD only for an object whose listed ETag is not the
//! one recorded at upload (or that the listing cannot show), plus one per unexpected object.
//! `--deep` then reads every object ([`deep`]). The pure comparisons are in [`check`].

pub mod check;
pub mod deep;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use proto::types::TopicName;
use proto::v1::{
    verify_event, Rule, RuleName, VerifyEvent, VerifyProblem, VerifyProgress, VerifyRequest,
    VerifySummary,
};
use tokio::sync::mpsc;

use crate::error::{status_text, UploadError};
use crate::ingester::Client;
use crate::store::{ListedObject, Store};
use crate::upload::UploadContext;
use check::{Kind, Presence, Problem};

/// Objects read at once by `--deep`.
const DEEP_CONCURRENCY: usize = 4;
/// HEADs at once.
const HEAD_CONCURRENCY: usize = 16;
/// How often progress goes out while objects are read.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Unexpected objects HEADed to tell whose they are; the rest are reported without.
const MAX_UNEXPECTED_HEADS: usize = 100;

pub type VerifyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<VerifyEvent, tonic::Status>> + Send>>;

/// What the Verify RPC needs: the stores (credentials) and the ingester (the rules).
#[derive(Clone)]
pub struct Auditor {
    pub ctx: Arc<UploadContext>,
    pub ingester: Client,
    /// Where `--deep` stages a Parquet object while it reads it: the uploader's state_dir,
    /// writable where the system's temporary directory may not be (a read-only root).
    pub scratch_dir: std::path::PathBuf,
}

/// What one run is asked.
#[derive(Debug, Clone)]
pub struct Selection {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub deep: bool,
}

fn parse_time(field: &str, text: &str) -> Result<Option<DateTime<Utc>>, tonic::Status> {
    if text.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| tonic::Status::invalid_argument(format!("--{field} {text:?}: {e}")))
}

impl Auditor {
    /// Starts a run: the rule must exist (NOT_FOUND before any event); the events follow.
    pub async fn verify(&self, request: VerifyRequest) -> Result<VerifyStream, tonic::Status> {
        let selection = Selection {
            from: parse_time("from", &request.from)?,
            to: parse_time("to", &request.to)?,
            deep: request.deep,
        };
        let mut ingester = self.ingester.clone();
        let rule = ingester
            .get_rule(RuleName {
                name: request.rule.clone(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => status,
                code => tonic::Status::new(
                    if code == tonic::Code::Unavailable {
                        code
                    } else {
                        tonic::Code::Unavailable
                    },
                    format!(
                        "asking the ingester for rule {:?}: {}",
                        request.rule,
                        status_text(&status)
                    ),
                ),
            })?
            .into_inner()
            .rule
            .ok_or_else(|| {
                tonic::Status::not_found(format!("rule {:?} not found", request.rule))
            })?;
        // Other rules writing into the same topic folder: their objects are not unexpected.
        let others = match ingester.list_rules(proto::v1::ListRulesRequest {}).await {
            Ok(reply) => reply
                .into_inner()
                .rules
                .into_iter()
                .filter(|r| {
                    r.name != rule.name
                        && r.bucket == rule.bucket
                        && r.prefix == rule.prefix
                        && r.topic == rule.topic
                })
                .map(|r| format!("{}-", r.name))
                .collect(),
            Err(status) => {
                tracing::warn!(error = %status_text(&status), "ListRules failed; objects of other rules in the folder may be reported as unexpected");
                Vec::new()
            }
        };
        let store = self
            .ctx
            .stores
            .store_for(&rule.endpoint, &rule.region)
            .await
            .map_err(|e| tonic::Status::failed_precondition(e.to_string()))?;
        let (tx, rx) = mpsc::channel(64);
        let scratch_dir = self.scratch_dir.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = run(&store, &rule, &others, &selection, &scratch_dir, &tx).await;
            let event = match outcome {
                Ok(mut summary) => {
                    summary.elapsed_ms =
                        u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(rule = %rule.name, objects = summary.objects, problems = summary.problems, deep = summary.deep, elapsed_ms = summary.elapsed_ms, "verify finished");
                    Ok(VerifyEvent {
                        event: Some(verify_event::Event::Summary(summary)),
                    })
                }
                Err(err) => {
                    tracing::warn!(rule = %rule.name, error = %err, "verify could not finish");
                    let text = format!("verify could not finish: {err}");
                    Err(match err {
                        // The store answered, and refused (e.g. no GetObject or list permission).
                        UploadError::Store { .. } | UploadError::EndpointNotAllowed(_) => {
                            tonic::Status::failed_precondition(text)
                        }
                        // This host's own disk, not something out of reach.
                        UploadError::Io { .. } => tonic::Status::internal(text),
                        _ => tonic::Status::unavailable(text),
                    })
                }
            };
            let _ = tx.send(event).await;
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

type Events = mpsc::Sender<Result<VerifyEvent, tonic::Status>>;

async fn send_progress(tx: &Events, phase: &str, done: u64, total: u64, bytes_read: u64) {
    let _ = tx
        .send(Ok(VerifyEvent {
            event: Some(verify_event::Event::Progress(VerifyProgress {
                phase: phase.into(),
                done,
                total,
                bytes_read,
            })),
        }))
        .await;
}

fn to_wire(p: &Problem) -> VerifyProblem {
    VerifyProblem {
        kind: p.kind.as_str().into(),
        key: p.key.clone(),
        detail: p.detail.clone(),
        has_partition: p.partition.is_some(),
        partition: p.partition.unwrap_or(0),
        first_id: p.first_id.clone(),
        last_id: p.last_id.clone(),
    }
}

/// Sends problems in a stable order (kind, key).
async fn send_problems(tx: &Events, mut problems: Vec<Problem>, count: &mut u64) {
    problems.sort_by(|a, b| (a.kind, &a.key, &a.first_id).cmp(&(b.kind, &b.key, &b.first_id)));
    for p in problems {
        *count += 1;
        let _ = tx
            .send(Ok(VerifyEvent {
                event: Some(verify_event::Event::Problem(to_wire(&p))),
            }))
            .await;
    }
}

/// The folder every object of the rule's current topic goes in.
fn topic_folder(rule: &Rule) -> Result<String, UploadError> {
    let topic = TopicName::parse(&rule.topic).map_err(UploadError::Segment)?;
    Ok(format!(
        "{}{}/{}/{}/",
        rule.prefix, topic.tenant, topic.namespace, topic.topic
    ))
}

async fn run(
    store: &Store,
    rule: &Rule,
    others: &[String],
    selection: &Selection,
    scratch_dir: &std::path::Path,
    tx: &Events,
) -> Result<VerifySummary, UploadError> {
    let mut summary = VerifySummary {
        rule: rule.name.clone(),
        bucket: rule.bucket.clone(),
        prefix: rule.prefix.clone(),
        deep: selection.deep,
        ..VerifySummary::default()
    };
    send_progress(tx, "manifest", 0, 0, 0).await;
    let listing =
        crate::manifest::read_entries(store, &rule.bucket, &rule.prefix, &rule.name, None, None)
            .await?;
    summary.requests += listing.requests;
    let known: HashSet<&str> = listing.entries.iter().map(|e| e.key.as_str()).collect();
    let selected: Vec<_> = listing
        .entries
        .iter()
        .filter(|e| e.published_within(selection.from, selection.to))
        .collect();
    summary.objects = selected.len() as u64;
    summary.messages = selected.iter().map(|e| e.messages).sum();

    let mut problems: Vec<Problem> = listing
        .damaged
        .iter()
        .map(|d| {
            Problem::object(
                Kind::Corrupt,
                &d.key,
                format!("manifest document cannot be read: {}", d.error),
            )
        })
        .collect();

    send_progress(tx, "listing", 0, summary.objects, 0).await;
    let folder = topic_folder(rule)?;
    let data = store.list_objects(&rule.bucket, &folder).await?;
    summary.requests += 1 + data.len() as u64 / 1000;
    let by_key: HashMap<&str, &ListedObject> = data.iter().map(|o| (o.key.as_str(), o)).collect();

    // Presence, size and ETag; HEAD where the listing cannot tell.
    let mut unsure = Vec::new();
    let mut present = Vec::new();
    for entry in &selected {
        let listed = by_key.get(entry.key.as_str()).copied();
        if listed.is_none() && !entry.key.starts_with(&folder) {
            // Stored under an earlier topic of the rule: not in this listing.
            unsure.push(*entry);
            continue;
        }
        match check::presence(entry, listed) {
            Presence::Intact => present.push((*entry).clone()),
            Presence::Unsure => unsure.push(*entry),
            Presence::Bad(p) => problems.push(p),
        }
    }
    summary.requests += unsure.len() as u64;
    let heads: Vec<_> = futures::stream::iter(unsure.into_iter().cloned())
        .map(|entry| {
            let (store, bucket) = (store.clone(), rule.bucket.clone());
            async move {
                let head = store.head_object(&bucket, &entry.key).await;
                (entry, head)
            }
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    for (entry, head) in heads {
        let entry = &entry;
        match head? {
            None => {
                if let Presence::Bad(p) = check::presence(entry, None) {
                    problems.push(p);
                }
            }
            Some(head) if head.size != entry.size => {
                if let Presence::Bad(p) = check::presence(
                    entry,
                    Some(&ListedObject {
                        key: entry.key.clone(),
                        size: head.size,
                        etag: head.etag.clone(),
                    }),
                ) {
                    problems.push(p);
                }
            }
            Some(head) => match check::metadata_checksum(
                entry,
                head.metadata.get("content-crc32c").map(String::as_str),
            ) {
                Some(p) => problems.push(p),
                None => present.push(entry.clone()),
            },
        }
    }

    problems.extend(check::continuity(
        &selected.iter().map(|e| (*e).clone()).collect::<Vec<_>>(),
    ));

    // Objects in the folder the manifest does not name.
    let strays = check::unexpected(&data, &known, others);
    let to_head = strays.len().min(MAX_UNEXPECTED_HEADS);
    summary.requests += to_head as u64;
    let stray_keys: Vec<String> = strays.iter().take(to_head).map(|o| o.key.clone()).collect();
    let owners: Vec<_> = futures::stream::iter(stray_keys)
        .map(|key| {
            let (store, bucket) = (store.clone(), rule.bucket.clone());
            async move {
                let rule_meta = match store.head_object(&bucket, &key).await {
                    Ok(Some(head)) => head.metadata.get("rule").cloned(),
                    _ => None,
                };
                (key, rule_meta)
            }
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    let owners: HashMap<String, Option<String>> = owners.into_iter().collect();
    for o in &strays {
        let detail = match owners.get(&o.key) {
            Some(Some(owner)) if owner == &rule.name => format!(
                "{} bytes; its metadata names this rule, but the manifest does not (stored before the manifest existed, or its entry was deleted)",
                o.size
            ),
            Some(Some(owner)) => format!("{} bytes; its metadata names rule {owner:?}", o.size),
            _ => format!("{} bytes; not written by tdmq-backup for this rule", o.size),
        };
        problems.push(Problem::object(Kind::Unexpected, &o.key, detail));
    }
    send_problems(tx, problems, &mut summary.problems).await;

    if selection.deep {
        let total = present.len() as u64;
        send_progress(tx, "reading", 0, total, 0).await;
        let mut reads = futures::stream::iter(present)
            .map(|entry| {
                let (store, bucket) = (store.clone(), rule.bucket.clone());
                async move {
                    match store.get_object(&bucket, &entry.key).await? {
                        None => {
                            Ok::<_, UploadError>((check::presence(&entry, None), Vec::new(), 0))
                        }
                        Some(body) => {
                            let (problems, read) =
                                deep::check_object(&entry, body, scratch_dir).await?;
                            Ok((Presence::Intact, problems, read))
                        }
                    }
                }
            })
            .buffer_unordered(DEEP_CONCURRENCY);
        let mut done = 0u64;
        let mut last_progress = Instant::now();
        while let Some(read) = reads.next().await {
            let (presence, found, bytes) = read?;
            done += 1;
            summary.requests += 1;
            summary.bytes_read += bytes;
            let mut found = found;
            if let Presence::Bad(p) = presence {
                found.push(p);
            }
            send_problems(tx, found, &mut summary.problems).await;
            if last_progress.elapsed() >= PROGRESS_EVERY || done == total {
                last_progress = Instant::now();
                send_progress(tx, "reading", done, total, summary.bytes_read).await;
            }
        }
    }
    Ok(summary)
}
