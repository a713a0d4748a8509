//! A rule's life besides editing and deleting: creating it, reading it back, pausing and
//! resuming it, and what the operator asks of its task — close the open segment now (`rule
//! flush`), pass an undecodable entry (`rule skip`).

use proto::types::{RuleConfig, RuleSpecInput, Secret};
use proto::v1;
use proto::wire::HistoryKind;
use tokio::sync::oneshot;
use tracing::info;

use super::history::HistoryEntry;
use super::rules::StoredRule;
use super::IngesterApp;
use crate::consumer::Command;
use crate::error::{IngesterError, Result};
use crate::source::decode_fault::EntryRef;

impl IngesterApp {
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
    pub(super) fn refuse_shared_subscription(&self, config: &RuleConfig) -> Result<()> {
        let others: Vec<StoredRule> = self.rules.list()?;
        config.check_no_shared_subscription(others.iter().map(|r| &r.config))?;
        Ok(())
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

    pub(super) async fn set_paused_inner(
        &self,
        name: &str,
        paused: bool,
        record: bool,
    ) -> Result<v1::Rule> {
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
                .map_err(|e: crate::source::decode_fault::ParseEntryError| {
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
}
