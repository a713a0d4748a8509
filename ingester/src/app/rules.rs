//! Stored rules and their Pulsar tokens (kept apart so no code path that returns a rule can
//! carry the token along).

use std::sync::Arc;

use proto::types::{RuleConfig, Secret};
use serde::{Deserialize, Serialize};

use crate::error::{IngesterError, Result};
use crate::spool::db::Database;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub config: RuleConfig,
    pub paused: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The start position applies once, when the rule is created; this records that it was.
    pub start_applied: bool,
}

impl StoredRule {
    pub fn to_proto(&self, has_token: bool) -> proto::v1::Rule {
        self.config.to_rule(proto::types::rule::RuleState {
            has_token,
            paused: self.paused,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        })
    }
}

pub struct RuleStore {
    /// Asked for the `rules` and `tokens` trees at each use, never kept: see `db.rs`.
    db: Arc<Database>,
}

impl RuleStore {
    pub fn open(db: &Arc<Database>) -> Result<RuleStore> {
        db.open_tree("rules")?;
        db.open_tree("tokens")?;
        Ok(RuleStore { db: db.clone() })
    }

    fn rules(&self) -> Result<sled::Tree> {
        self.db.open_tree("rules")
    }

    fn tokens(&self) -> Result<sled::Tree> {
        self.db.open_tree("tokens")
    }

    pub fn list(&self) -> Result<Vec<StoredRule>> {
        let mut out = Vec::new();
        for item in self.rules()?.iter() {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| IngesterError::Corrupt(format!("stored rule: {e}")))?,
            );
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<StoredRule> {
        let v = self
            .rules()?
            .get(name)?
            .ok_or_else(|| IngesterError::RuleNotFound(name.into()))?;
        serde_json::from_slice(&v).map_err(|e| IngesterError::Corrupt(format!("stored rule: {e}")))
    }

    pub fn put(&self, rule: &StoredRule) -> Result<()> {
        let v = serde_json::to_vec(rule).map_err(|e| IngesterError::Corrupt(e.to_string()))?;
        self.rules()?.insert(rule.config.name.as_bytes(), v)?;
        Ok(())
    }

    /// Inserts a new rule; refuses an existing name without touching it.
    pub fn create(&self, rule: &StoredRule, token: Option<&Secret>) -> Result<()> {
        let v = serde_json::to_vec(rule).map_err(|e| IngesterError::Corrupt(e.to_string()))?;
        let name = rule.config.name.as_bytes();
        if self
            .rules()?
            .compare_and_swap(name, None as Option<&[u8]>, Some(v))?
            .is_err()
        {
            return Err(IngesterError::RuleExists(rule.config.name.clone()));
        }
        self.set_token(&rule.config.name, token)
    }

    /// Sets only `start_applied`, atomically, so a concurrent edit of other fields is kept.
    pub fn mark_start_applied(&self, name: &str) -> Result<()> {
        self.rules()?.update_and_fetch(name, |old| {
            let old = old?;
            match serde_json::from_slice::<StoredRule>(old) {
                Ok(mut rule) => {
                    rule.start_applied = true;
                    serde_json::to_vec(&rule)
                        .ok()
                        .or_else(|| Some(old.to_vec()))
                }
                Err(_) => Some(old.to_vec()),
            }
        })?;
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        self.rules()?.remove(name)?;
        self.tokens()?.remove(name)?;
        Ok(())
    }

    pub fn token(&self, name: &str) -> Result<Option<Secret>> {
        Ok(self
            .tokens()?
            .get(name)?
            .map(|v| Secret::new(String::from_utf8_lossy(&v).into_owned())))
    }

    pub fn set_token(&self, name: &str, token: Option<&Secret>) -> Result<()> {
        match token {
            Some(t) if !t.is_empty() => {
                self.tokens()?.insert(name, t.expose().as_bytes())?;
            }
            _ => {
                self.tokens()?.remove(name)?;
            }
        }
        Ok(())
    }
}
