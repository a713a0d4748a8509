//! A rule's task: the one place that reads the rule's Pulsar consumers, spools what they deliver
//! and acknowledges it on Pulsar — after the spool says its segments are stored, in segment order.
//!
//! In a message's order:
//! - `connection`: connects (and reconnects after a backoff), notes outages, and keeps
//!   closing windows and answering commands while Pulsar is out of reach.
//! - `select_loop`: one connection's loop: commands, the tick, and reading.
//! - `receive`: takes what the consumers delivered, drops redeliveries and messages before the
//!   rule's start, and encodes the rest once.
//! - `faults`: a partition that delivered an entry the client cannot decode stops before it,
//!   asks for it again, and lets `rule skip` pass it.
//! - `spooling`: the durable write, the pause while the spool or its disk is full, and closing
//!   the open segment.
//! - `ack`: acknowledges the stored segments on Pulsar and frees them; `reack`: redeliveries
//!   of what was acknowledged are acknowledged again, once per position and interval.
//! - `topic_reset`: a topic whose ids went backwards is taken afresh.
//! - `limits`: the bounds from the config, and the receive window they size.
//! - `membership`: the ingester's name and priority on a subscription it shares.

use std::sync::Arc;
use std::time::Duration;

use proto::types::{RuleConfig, Secret};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::warn;

use crate::app::history::{History, HistoryEntry};
use crate::app::rules::RuleStore;
use crate::seal::SealerHandle;
use crate::source::decode_fault::EntryRef;
use crate::spool::disk::DiskSpace;
use crate::spool::RuleSpool;
use crate::stats::RuleStats;

mod ack;
mod connection;
mod faults;
mod limits;
mod membership;
mod reack;
mod receive;
mod select_loop;
mod spooling;
mod topic_reset;

pub use limits::ConsumerLimits;
pub use membership::Membership;

/// How often a rule task looks at its clocks: the open segment's window, a failed entry's
/// redelivery, the connection.
const TICK: Duration = Duration::from_millis(200);

/// What the app asks of a rule task. Answered in order, between reads, and also while the task
/// connects or waits to reconnect.
pub enum Command {
    /// Close the open segment now.
    Flush(oneshot::Sender<Option<u64>>),
    SetPaused(bool),
    /// `rule skip`: acknowledge this undecodable entry without storing it. Replies with what was
    /// done, or why it was refused.
    Skip(EntryRef, oneshot::Sender<Result<String, String>>),
    /// The spool database was reopened after a failed write and may hold less than the spool
    /// has in memory: re-read the spool, then reconnect before spooling anything more. Messages
    /// received since the last durable write are past the re-read watermarks, and only a new
    /// consumer gets them delivered again; one spooled before that would move the watermark
    /// past them, and they would be dropped as seen.
    DatabaseReopened,
}

/// What a rule task needs.
pub struct RuleTask {
    pub rule: RuleConfig,
    pub token: Option<Secret>,
    pub paused: bool,
    pub limits: ConsumerLimits,
    /// What a `pulsar+ssl://` broker's certificate is checked against.
    pub trust: crate::source::trust::PulsarTrust,
    /// Pulsar's consumer name for this ingester's consumers (distinct per ingester).
    pub consumer_name: String,
    /// Sent on subscribe when set (`priority_level`).
    pub priority_level: Option<i32>,
    pub start_applied: bool,
    pub spool: Arc<RuleSpool>,
    pub stats: Arc<RuleStats>,
    pub history: Arc<History>,
    pub rules: Arc<RuleStore>,
    pub sealer: SealerHandle,
    /// The spool's filesystem, shared with the other rules.
    pub disk: Arc<DiskSpace>,
    pub commands: mpsc::Receiver<Command>,
    /// Woken after a commit marked a segment stored: what is acknowledgeable now is (see
    /// `ack`).
    pub ack_ready: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

impl RuleTask {
    fn record(&self, entry: HistoryEntry) {
        if let Err(err) = self.history.record(&self.rule.name, &entry) {
            warn!(rule = %self.rule.name, error = %err, "could not write the rule's history");
        }
    }
}
