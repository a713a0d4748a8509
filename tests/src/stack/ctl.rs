//! Driving a [`Stack`] through the real CLI: commands, rules, status, and waiting until a rule's
//! messages are backed up.

use std::collections::HashSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use super::Stack;
use crate::oracle::{decode_payload, read_all, BackupObject};
use crate::producer::SampleMessage;

impl Stack {
    /// The CLI's command line for `args`: this stack's daemons, token file and extra flags
    /// first.
    /// `--ingester` in `args` replaces the stack's own (ctl sends to every one listed).
    pub fn ctl_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = Vec::new();
        if !args.contains(&"--ingester") {
            full.extend(["--ingester".to_string(), self.ingester_url()]);
        }
        full.extend(["--uploader".to_string(), self.uploader_url()]);
        if let Some(file) = &self.ctl_token_file {
            full.push("--token-file".into());
            full.push(file.to_string_lossy().into_owned());
        }
        full.extend(self.ctl_extra_args.iter().cloned());
        full.extend(args.iter().map(|a| a.to_string()));
        full
    }

    /// [`Stack::ctl`] with extra environment variables (e.g. `COLUMNS` for the table width).
    pub fn ctl_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let full = self.ctl_args(args);
        let bin = self.bin("tdmq-backup");
        Command::new(&bin)
            .args(&full)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} {full:?}: {e}", bin.display()))
    }

    /// Runs the CLI against this stack's daemons.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let full = self.ctl_args(args);
        let bin = self.bin("tdmq-backup");
        Command::new(&bin)
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} {full:?}: {e}", bin.display()))
    }

    /// Runs the CLI with `--output json`; fails unless it exits 0 with one JSON document.
    pub fn ctl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        json_of(&full, &out)
    }

    /// [`Stack::ctl_json`] without blocking the runtime's thread (which may be serving the
    /// relay and the S3 server); a command that prints nothing gives `Null`.
    pub async fn ctl_json_async(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let bin = self.bin("tdmq-backup");
        let out = tokio::process::Command::new(&bin)
            .args(self.ctl_args(&full))
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", bin.display()))?;
        if out.status.success() && out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        json_of(&full, &out)
    }

    /// Creates a rule writing to this stack's S3 server.
    pub fn create_rule(&self, name: &str, topic: &str, extra: &[&str]) -> anyhow::Result<Value> {
        let args = self.create_rule_args(name, topic, extra);
        self.ctl_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// [`Stack::create_rule`] through [`Stack::ctl_json_async`].
    pub async fn create_rule_async(
        &self,
        name: &str,
        topic: &str,
        extra: &[&str],
    ) -> anyhow::Result<Value> {
        let args = self.create_rule_args(name, topic, extra);
        self.ctl_json_async(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await
    }

    /// The `rule create` command line of [`Stack::create_rule`]: this stack's broker, S3
    /// server and bucket, subscription `tdmq-backup`, then `extra`.
    pub fn create_rule_args(&self, name: &str, topic: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "rule",
            "create",
            name,
            "--service-url",
            &self.pulsar.url(),
            "--topic",
            topic,
            "--subscription",
            "tdmq-backup",
            "--bucket",
            &self.bucket,
            "--region",
            "us-east-1",
            "--endpoint",
            &self.s3.endpoint(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// The rule's history as (kind, message), newest first.
    pub fn log_entries(&self, rule: &str) -> anyhow::Result<Vec<(String, String)>> {
        let logs = self.ctl_json(&["logs", rule, "--limit", "1000"])?;
        Ok(logs["entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["kind"].as_str().unwrap_or_default().to_string(),
                            e["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn rule_status(&self, name: &str) -> anyhow::Result<Value> {
        // Exit 5 with a document: the uploader is down (being restarted); the rule's part holds.
        let args = ["--output", "json", "status", name];
        let out = self.ctl(&args);
        let status = if out.status.code() == Some(5) && !out.stdout.is_empty() {
            serde_json::from_slice(&out.stdout)?
        } else {
            json_of(&args, &out)?
        };
        status["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["name"] == name))
            .cloned()
            .with_context(|| format!("status has no rule {name}: {status}"))
    }

    /// Flushes until `expected` messages are acknowledged and nothing is left in the spool.
    pub async fn wait_until_backed_up(
        &self,
        rule: &str,
        expected: u64,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.rule_status(rule)?;
            let acked = status["messages_acked"].as_u64().unwrap_or(0);
            let spooled = status["spooled_messages"].as_u64().unwrap_or(u64::MAX);
            if acked >= expected && spooled == 0 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "rule {rule}: {acked}/{expected} acknowledged, {spooled} still spooled after {timeout:?}: {status}\n--- ingester log tail:\n{}\n--- uploader log tail:\n{}",
                    self.log_tail("ingester.log"),
                    self.log_tail("uploader.log")
                );
            }
            // Seal the open segment instead of waiting for its window to end.
            let _ = self.ctl(&["rule", "flush", rule]);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until every expected message is in the store and the rule's spool is empty,
    /// flushing meanwhile. Judged by the store's content, so it holds across daemon restarts
    /// (whose counters start again from zero). Returns the objects.
    pub async fn wait_until_stored(
        &self,
        rule: &str,
        expected: &[SampleMessage],
        timeout: Duration,
    ) -> anyhow::Result<Vec<BackupObject>> {
        let wanted: HashSet<&[u8]> = expected.iter().map(|m| m.payload.as_slice()).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let objects = read_all(&self.s3.client(), &self.bucket, "").await?;
            let mut found = HashSet::new();
            for object in &objects {
                for record in &object.records {
                    if let Ok(payload) = decode_payload(record) {
                        if wanted.contains(payload.as_slice()) {
                            found.insert(payload);
                        }
                    }
                }
            }
            let spooled = self
                .rule_status(rule)
                .ok()
                .and_then(|s| s["spooled_messages"].as_u64())
                .unwrap_or(u64::MAX);
            if found.len() == wanted.len() && spooled == 0 {
                return Ok(objects);
            }
            if Instant::now() > deadline {
                bail!(
                    "rule {rule}: {}/{} messages in the store, {spooled} still spooled after {timeout:?}\n--- ingester log tail:\n{}\n--- uploader log tail:\n{}",
                    found.len(),
                    wanted.len(),
                    self.log_tail("ingester.log"),
                    self.log_tail("uploader.log")
                );
            }
            let _ = self.ctl(&["rule", "flush", rule]);
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    }
}

/// The one JSON document `tdmq-backup {args}` printed; an error unless it exited 0.
fn json_of(args: &[&str], out: &Output) -> anyhow::Result<Value> {
    if !out.status.success() {
        bail!(
            "tdmq-backup {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tdmq-backup {args:?} printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
