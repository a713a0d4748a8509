//! Running a job: reading each object once, producing its records per partition through the
//! ingester, and recording the progress after every confirmed batch.

use super::*;

impl RestoreManager {
    /// Runs a job until it is done, failed, paused or cancelled (or the uploader stops).
    pub(super) async fn run(self: Arc<Self>, slot: Arc<Slot>) {
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
        let wanted = slot.wanted.subscribe();
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
        let Some(client) = crate::ingester::connect(
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
        let mut outlet = Outlet {
            client,
            wanted,
            throttle: Throttle::new(spec.rate),
        };
        // A fifth of a second's worth at a limited rate, so a pause takes effect soon and
        // the rate is kept smoothly rather than in bursts.
        let batch_size = match spec.rate {
            0 => BATCH,
            rate => usize::try_from(rate / 5).unwrap_or(BATCH).clamp(1, BATCH),
        };
        let parts = &file.parts;
        let mut cursors: Vec<Cursor> = parts.iter().map(Cursor::start).collect();
        let occurrences = occurrences(parts);
        // Each object once per run, although it holds several partitions: it is read when it
        // is next for every partition still to read it, and its records go to their partitions'
        // batches (at most `batch_size` waiting per partition: memory stays bounded).
        while let Some(key) = next_object(parts, &cursors, &occurrences) {
            let readers: Vec<usize> = (0..parts.len())
                .filter(|&i| parts[i].objects.get(cursors[i].next) == Some(&key))
                .collect();
            let records = read_object(&store, &spec.bucket, &key).await?;
            slot.file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .objects_read += 1;
            let mut in_object = vec![0u64; parts.len()];
            for record in records {
                let partition = record.message_id.partition.max(-1);
                let Some(&index) = readers
                    .iter()
                    .find(|&&i| parts[i].source_partition == partition)
                else {
                    continue;
                };
                in_object[index] += 1;
                let cursor = &mut cursors[index];
                let here = cursor.pos;
                cursor.pos += 1;
                if here < parts[index].position {
                    continue;
                }
                let t = record.publish_time_ms;
                if from.is_some_and(|f| t < f) || to.is_some_and(|x| t > x) {
                    cursor.skipped += 1;
                } else {
                    cursor
                        .batch
                        .push(to_message(record, here, parts[index].target_partition));
                }
                if cursor.batch.len() + cursor.skipped as usize >= batch_size
                    && !self.flush(slot, &mut outlet, index, cursor).await?
                {
                    return Ok(None);
                }
            }
            for &index in &readers {
                let part = &parts[index];
                let cursor = &mut cursors[index];
                // A resumed job skips objects by these counts: they must be the object's.
                if let Some(&planned) = part.counts.get(cursor.next) {
                    if planned != in_object[index] {
                        return Err(format!(
                            "{key} holds {} messages of partition {}, the manifest says {planned}",
                            in_object[index], part.source_partition
                        ));
                    }
                }
                cursor.next += 1;
                if cursor.next == part.objects.len()
                    && !self.flush(slot, &mut outlet, index, cursor).await?
                {
                    return Ok(None);
                }
            }
        }
        Ok(Some("done"))
    }

    /// Produces `cursor`'s batch (part `index`'s records up to its position), then records
    /// the progress.
    /// `Ok(false)`: the job was paused or cancelled, or the uploader is stopping.
    async fn flush(
        &self,
        slot: &Slot,
        outlet: &mut Outlet,
        index: usize,
        cursor: &mut Cursor,
    ) -> Result<bool, String> {
        let Outlet {
            client,
            wanted,
            throttle,
        } = outlet;
        let (batch, skipped, pos) = (&mut cursor.batch, &mut cursor.skipped, cursor.pos);
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

/// Where a running job's batches go, and what may hold them back.
struct Outlet {
    client: Client,
    /// What the operator asked for last ("running", "paused", "cancelled").
    wanted: watch::Receiver<String>,
    throttle: Throttle,
}

/// Where a running job is in one partition of its plan.
pub(super) struct Cursor {
    /// Index of the next object of the partition to read.
    pub(super) next: usize,
    /// Position (in the partition's records, from the plan's start) of the next record read.
    pub(super) pos: u64,
    /// Read, not yet produced.
    pub(super) batch: Vec<RestoreMessage>,
    /// Left out by the time range since the last progress step.
    pub(super) skipped: u64,
}

impl Cursor {
    /// Past the objects the partition's progress has gone through (when the plan has the
    /// counts; a job planned without them reads from its first object and skips by position).
    pub(super) fn start(part: &PartPlan) -> Cursor {
        let mut cursor = Cursor {
            next: 0,
            pos: 0,
            batch: Vec::new(),
            skipped: 0,
        };
        if part.counts.len() == part.objects.len() {
            while let Some(&n) = part.counts.get(cursor.next) {
                if cursor.pos + n > part.position {
                    break;
                }
                cursor.pos += n;
                cursor.next += 1;
            }
        } else if part.position >= part.messages {
            cursor.next = part.objects.len();
        }
        cursor
    }
}

/// Per object key, where it is in each partition's list: (partition index, object index).
pub(super) fn occurrences(parts: &[PartPlan]) -> HashMap<String, Vec<(usize, usize)>> {
    let mut map: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (p, part) in parts.iter().enumerate() {
        for (i, key) in part.objects.iter().enumerate() {
            map.entry(key.clone()).or_default().push((p, i));
        }
    }
    map
}

/// The object to read next: one that is next for every partition still to read it, so it is
/// read once. Objects are cut from one stream of messages, so such an object always exists in
/// a plan from one rule's manifest; should the partitions' orders ever cross, the first
/// partition's next object is read, and read again when another partition reaches it.
pub(super) fn next_object(
    parts: &[PartPlan],
    cursors: &[Cursor],
    occurrences: &HashMap<String, Vec<(usize, usize)>>,
) -> Option<String> {
    let heads = || {
        parts
            .iter()
            .zip(cursors)
            .filter_map(|(part, cursor)| part.objects.get(cursor.next))
    };
    let once = heads().find(|key| {
        // Every partition holding it has it next, or has read it already.
        occurrences
            .get(*key)
            .is_none_or(|at| at.iter().all(|&(p, i)| i <= cursors[p].next))
    });
    once.or_else(|| heads().next()).cloned()
}

/// The records of an object, in its order, whatever its format.
async fn read_object(
    store: &crate::store::Store,
    bucket: &str,
    key: &str,
) -> Result<Vec<proto::types::Record>, String> {
    let bytes = store
        .get_small_object(bucket, key, MAX_OBJECT)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?
        .ok_or_else(|| format!("{key} is in the manifest but not in the bucket"))?;
    crate::codec::records_of(key, bytes)
}

/// A record as the message to produce: its own fields, plus its original id and publish time.
pub(super) fn to_message(
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
