//! One connection's loop. In order of priority: the stop signal, the commands (flush, pause,
//! skip, the database reopened), a commit's wake-up to acknowledge, the tick (retrying a batch the spool refused,
//! closing windows, redelivering failed entries, checking the connection and the partition
//! count), and reading — only while the spool may take more.

use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::wire::HistoryKind;
use tracing::{debug, info, warn};

use super::connection::{ConsumeEnd, Continuity};
use super::reack::Reacks;
use super::receive::{Intake, MAX_BATCH, MAX_BATCH_BYTES};
use super::{Command, RuleTask, TICK};
use crate::app::history::HistoryEntry;
use crate::source::decode_fault::DecodeFault;
use crate::source::partition_consumers::{Liveness, RuleConsumers};
use crate::source::source_reset;
use crate::spool::Incoming;
use crate::stats::RuleStats;

const CONNECTION_CHECK_EVERY: u32 = 25;
/// How long a mid-stream ask for the partitions' last ids may hold the loop, and how long after
/// one that got no answer the next may be made: a busy consumer engine answers late, and
/// waiting longer, or asking after every read, turned a redelivery storm into a trickle.
const MID_STREAM_LAST_ID_TIMEOUT: Duration = Duration::from_millis(500);
const LAST_ID_RETRY: Duration = Duration::from_secs(5);
/// Ticks between looks at the topic's partition count (partitions added later are consumed).
const PARTITION_CHECK_EVERY: u32 = 150;

impl RuleTask {
    /// Runs until the consumers fail, their permits need resizing, or the rule stops.
    pub(super) async fn consume(
        &mut self,
        consumers: &mut RuleConsumers,
        permits: u32,
        continuity: &mut Continuity,
        ids_proven: bool,
    ) -> ConsumeEnd {
        let name = self.rule.name.clone();
        let ack_ready = self.ack_ready.clone();
        self.acknowledge(consumers).await;
        self.publish_faults(consumers);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        // A batch that could not be spooled yet (disk full, IO error): retried before reading more.
        let mut pending: Option<Vec<Incoming>> = None;
        let mut ask_broker_backlog = true;
        // The broker's ends proved that its topic reaches what was spooled: a redelivery on
        // this connection is one (see `source_reset::proves_reach`).
        let mut ids_proven = ids_proven;
        // Whether every iteration since the last connection check could read: only then are
        // the consumer engines free to answer a request (see `check_connections`).
        let mut queues_read = true;
        let mut reacks = Reacks::default();
        let mut next_last_id_ask: Option<tokio::time::Instant> = None;
        loop {
            let can_read = pending.is_none() && !self.paused && !self.spool_full().await;
            queues_read &= can_read;
            tokio::select! {
                biased;
                _ = self.stop.changed() => return ConsumeEnd::Stopped,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        let reread = matches!(cmd, Command::DatabaseReopened);
                        self.handle_command(cmd, Some(consumers)).await;
                        if reread {
                            // Consumers connecting later get every unacknowledged message
                            // anyway: only these must go.
                            info!(rule = %name, "reconnecting after the spool database was reopened");
                            return ConsumeEnd::Reread;
                        }
                    }
                    None => return ConsumeEnd::Stopped,
                },
                () = ack_ready.notified() => self.acknowledge(consumers).await,
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if let Some(batch) = pending.take() {
                        pending = self.spool_batch(batch, consumers).await;
                    }
                    self.close_if_due(false).await;
                    self.redeliver_due(consumers).await;
                    let blocked = consumers.parts.iter().any(|p| p.fault.as_ref().is_some_and(DecodeFault::blocked));
                    self.note_reading(!self.paused && !blocked && self.stats.connected.load(Ordering::Relaxed));
                    if ticks.is_multiple_of(CONNECTION_CHECK_EVERY) {
                        let check = consumers.check_connections(std::mem::replace(&mut queues_read, true)).await;
                        match check.liveness {
                            Liveness::Alive => {
                                self.stats.connected.store(true, Ordering::Relaxed);
                                self.outage_ended(continuity);
                            }
                            Liveness::Lost => {
                                self.stats.connected.store(false, Ordering::Relaxed);
                                let message = format!("lost the connection to Pulsar at {}", self.rule.service_url);
                                self.stats.set_error(&message);
                                self.outage_began(continuity, &message);
                            }
                            // Busy or not read: pulsar-rs's keepalive still watches the connection.
                            Liveness::Unknown => {}
                        }
                        // Asked only when no message waits ahead of the request (or while
                        // paused, when holding the loop for a moment costs no throughput).
                        if ask_broker_backlog && check.liveness != Liveness::Lost && (check.engines_free || self.paused) {
                            match consumers.broker_backlog().await {
                                Some(backlog) => {
                                    self.stats.broker_backlog.store(backlog, Ordering::Relaxed);
                                    self.stats.broker_backlog_known.store(true, Ordering::Relaxed);
                                }
                                None => {
                                    self.stats.broker_backlog_known.store(false, Ordering::Relaxed);
                                    // A broker that does not answer consumer stats while its
                                    // engines are free is not asked again on this connection.
                                    if check.engines_free {
                                        ask_broker_backlog = false;
                                    }
                                }
                            }
                        }
                    }
                    if ticks.is_multiple_of(PARTITION_CHECK_EVERY) {
                        self.add_new_partitions(consumers).await;
                    }
                }
                item = consumers.next(), if can_read => {
                    let seen = self.spool.seen();
                    let mut intake = Intake::default();
                    if let Some(end) = self.take(consumers, item, &seen, &mut intake) {
                        return end;
                    }
                    // Take whatever else is already buffered: one durable write for all.
                    while intake.received < MAX_BATCH && intake.bytes < MAX_BATCH_BYTES {
                        let Some(item) = consumers.try_next() else {
                            intake.drained = true;
                            break;
                        };
                        if let Some(end) = self.take(consumers, item, &seen, &mut intake) {
                            return end;
                        }
                    }
                    if intake.before_start > 0 {
                        RuleStats::add(&self.stats.before_start_dropped, intake.before_start);
                    }
                    // A message at or below what was spooled is a redelivery only if the broker's
                    // topic still reaches that far (see `source_reset`). Asked while the broker's answer has not proved it since the stream last went
                    // back: pulsar-rs's engine resubscribes by itself after a broken connection,
                    // so a broker that lost the topic can look like a redelivery on the same
                    // consumer. Asked only after a read that drained the queues, so the request
                    // does not wait behind a full one. (Redeliveries are acknowledged again
                    // meanwhile: pulsar-lite starves a consumer that leaves them unacknowledged.)
                    let Intake { batch, redelivered, bytes, rewound, drained, .. } = intake;
                    if rewound {
                        ids_proven = false;
                    }
                    let may_ask = next_last_id_ask.is_none_or(|at| tokio::time::Instant::now() >= at);
                    if redelivered.duplicates > 0 && !ids_proven && drained && may_ask && consumers.answers_last_id() {
                        let seen = self.spool.seen();
                        match consumers.last_entries(MID_STREAM_LAST_ID_TIMEOUT).await {
                            Some(last_entries) => {
                                next_last_id_ask = None;
                                if let Some(went_back) = source_reset::find(&last_entries, &seen) {
                                    return ConsumeEnd::WentBack(went_back);
                                }
                                ids_proven = source_reset::proves_reach(&last_entries, &seen);
                            }
                            // Messages still queued ahead of the request in pulsar-rs (a broker
                            // that sends more than the permits): asked again a while later.
                            None => next_last_id_ask = Some(tokio::time::Instant::now() + LAST_ID_RETRY),
                        }
                    }
                    self.drop_redelivered(redelivered, consumers, &mut reacks).await;
                    if batch.is_empty() {
                        continue;
                    }
                    let count = batch.len() as u64;
                    pending = self.spool_batch(batch, consumers).await;
                    if pending.is_none() {
                        if let Some(resized) = self.limits.permits_for(permits, bytes / count) {
                            self.announce_resize(permits, resized, bytes / count);
                            debug!(rule = %name, "reconnecting to resize the receive window");
                            return ConsumeEnd::Resize(resized);
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn handle_command(
        &mut self,
        cmd: Command,
        consumers: Option<&mut RuleConsumers>,
    ) {
        match cmd {
            Command::Flush(reply) => {
                let closed = self.close_if_due(true).await;
                let _ = reply.send(closed);
            }
            Command::SetPaused(paused) => {
                self.paused = paused;
            }
            Command::DatabaseReopened => {
                match self.spool.reread() {
                    Ok(to_seal) => {
                        for segment_no in to_seal {
                            self.sealer.seal(self.spool.clone(), segment_no);
                        }
                    }
                    Err(err) => {
                        // Writes stay refused (stale state); the next reopen asks again.
                        warn!(rule = %self.rule.name, error = %err, "re-reading the spool after the database was reopened failed");
                        self.stats
                            .set_error(format!("cannot re-read the spool: {err}"));
                    }
                }
            }
            Command::Skip(entry, reply) => {
                let result = match consumers {
                    Some(consumers) => self.skip_entry(consumers, entry).await,
                    None => Err(format!(
                        "rule {:?} is not connected to Pulsar at the moment; try again when `status` shows it connected",
                        self.rule.name
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Keeps `reading_stopped_since_ms` (the lag's lower bound while nothing is read).
    pub(super) fn note_reading(&self, reading: bool) {
        let since = &self.stats.reading_stopped_since_ms;
        if reading {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(proto::types::time::now_millis(), Ordering::Relaxed);
        }
    }

    /// Subscribes to partitions added to the topic since the rule connected.
    async fn add_new_partitions(&mut self, consumers: &mut RuleConsumers) {
        match tokio::time::timeout(Duration::from_secs(10), consumers.add_new_partitions()).await {
            Ok(Ok(added)) if !added.is_empty() => {
                let message = format!(
                    "the topic has {} partitions now; consuming the new ones ({}) from their earliest message",
                    consumers.parts.len(),
                    added.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                info!(rule = %self.rule.name, "{message}");
                self.record(HistoryEntry::event(HistoryKind::Info, message));
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                debug!(rule = %self.rule.name, error = %err, "looking up the partition count failed");
            }
            Err(_) => debug!(rule = %self.rule.name, "looking up the partition count timed out"),
        }
    }
}
