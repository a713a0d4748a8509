//! A topic whose message ids went backwards (see [`crate::source::source_reset`]): the old
//! topic's spooled segments are stored but never acknowledged, then its ids are forgotten.

use std::time::Duration;

use proto::wire::HistoryKind;
use tracing::{info, warn};

use super::{RuleTask, TICK};
use crate::app::history::HistoryEntry;
use crate::source::source_reset::WentBack;

impl RuleTask {
    /// The broker's topic ends before what the rule spooled (see [`source_reset`]): says so,
    /// lets the old topic's spooled segments be stored without acknowledging them, then forgets
    /// the old ids. Returns `false` if the rule was stopped meanwhile.
    pub(super) async fn take_the_topic_afresh(&mut self, went_back: &WentBack) -> bool {
        let spooled = self
            .spool
            .segments()
            .iter()
            .filter(|m| m.messages > 0)
            .count();
        let message = went_back.describe(&self.rule.topic, spooled);
        warn!(rule = %self.rule.name, "{message}");
        self.stats.set_error(&message);
        self.record(HistoryEntry::event(HistoryKind::IdsWentBack, &message));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.spool.is_empty() {
            tokio::select! {
                _ = self.stop.changed() => return false,
                _ = tick.tick() => {
                    self.close_if_due(false).await;
                    self.note_reading(false);
                    // Stored, and never acknowledged: these ids now name the new topic's
                    // messages, which a cumulative acknowledgement would drop unread.
                    if let Some(plan) = self.spool.ack_plan() {
                        if let Err(err) = self.spool.free(&plan).await {
                            warn!(rule = %self.rule.name, error = %err, "freeing the old topic's stored segments failed");
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd, None).await,
                    None => return false,
                },
            }
        }
        if let Err(err) = self.spool.reset_positions() {
            // The next connection finds the ids still behind and tries again.
            warn!(rule = %self.rule.name, error = %err, "could not forget the old topic's positions");
            self.stats
                .set_error(format!("could not forget the old topic's positions: {err}"));
            tokio::time::sleep(Duration::from_secs(2)).await;
            return true;
        }
        let message = "backing the topic up afresh: the old topic's ids are forgotten and new objects get new names".to_string();
        info!(rule = %self.rule.name, "{message}");
        self.record(HistoryEntry::event(HistoryKind::Info, message));
        true
    }
}
