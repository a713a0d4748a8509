//! A whole backup stack for one test: pulsar-lite (+ relay), in-process s3s-fs, and the real
//! ingester and uploader binaries, driven through the real CLI.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use harness::{bin_path, Daemon, PortKeeper, PulsarLite, S3Server};
use serde_json::Value;

pub const BUCKET: &str = "backup-bucket";

/// How long a daemon may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Stack {
    pub pulsar: PulsarLite,
    pub s3: S3Server,
    pub dir: tempfile::TempDir,
    pub ingester: Option<Daemon>,
    pub uploader: Option<Daemon>,
    /// The ports the daemons reported listening on: 0 until first started (their URLs then name
    /// port 0, where connections are refused). Both start on port 0; see `start_ingester` and
    /// `start_uploader` for restarts.
    pub ingester_port: u16,
    pub uploader_port: u16,
    /// Holds the ingester's port while it is down, for its restart there.
    pub ingester_port_keeper: PortKeeper,
    /// Added to the next `start_ingester` / `start_uploader` (failpoints, quotas, ...).
    pub ingester_extra: Extra,
    pub uploader_extra: Extra,
    /// Control-plane token file `ctl` passes (`--token-file`) when the daemons require one.
    pub ctl_token_file: Option<PathBuf>,
    /// Where the uploader sends objects, if not straight to `s3` (e.g. a fault proxy).
    pub store_endpoint: Option<String>,
    /// Start the uploader without its own `endpoint`, so each rule's endpoint or region decides
    /// (what the uploader's `allowed_endpoints` governs).
    pub uploader_without_endpoint: bool,
    /// How the daemons' URLs are written: `http://127.0.0.1:PORT` unless changed (TLS tests use
    /// `https` and `localhost`, the certificate's name).
    pub scheme: &'static str,
    pub host: &'static str,
    /// Global flags `ctl` passes before the command (e.g. `--ca-file`).
    pub ctl_extra_args: Vec<String>,
}

/// Extra command-line arguments and environment for a daemon.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Extra {
    pub fn failpoint(spec: &str) -> Extra {
        Extra {
            args: Vec::new(),
            env: vec![(proto::failpoint::ENV.to_string(), spec.to_string())],
        }
    }
}

/// A topic name no other test uses.
pub fn unique_topic(stem: &str) -> String {
    format!("{stem}-{}", rand::random::<u32>())
}

impl Stack {
    /// Broker, S3 server and bucket; daemons are started by the caller.
    pub async fn services() -> anyhow::Result<Stack> {
        Self::services_on(S3Server::start().await?).await
    }

    /// Like [`Stack::services`] with the S3 server on HTTPS (its own CA; the uploader is told to
    /// trust it with `SSL_CERT_FILE`).
    pub async fn services_with_https_s3() -> anyhow::Result<Stack> {
        Self::services_on(S3Server::start_tls().await?).await
    }

    /// Like [`Stack::services`] with a broker the caller started (partitions, relay faults).
    pub async fn services_with_pulsar(pulsar: PulsarLite) -> anyhow::Result<Stack> {
        Self::services_on_with(S3Server::start().await?, pulsar).await
    }

    async fn services_on(s3: S3Server) -> anyhow::Result<Stack> {
        Self::services_on_with(s3, PulsarLite::start().await?).await
    }

    async fn services_on_with(s3: S3Server, pulsar: PulsarLite) -> anyhow::Result<Stack> {
        s3.create_bucket(BUCKET).await?;
        Ok(Stack {
            pulsar,
            s3,
            dir: tempfile::tempdir()?,
            ingester: None,
            uploader: None,
            ingester_port: 0,
            uploader_port: 0,
            ingester_port_keeper: PortKeeper::new(),
            ingester_extra: Extra::default(),
            uploader_extra: Extra::default(),
            ctl_token_file: None,
            store_endpoint: None,
            uploader_without_endpoint: false,
            scheme: "http",
            host: "127.0.0.1",
            ctl_extra_args: Vec::new(),
        })
    }

    pub async fn start() -> anyhow::Result<Stack> {
        let mut stack = Stack::services().await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        Ok(stack)
    }

    pub fn ingester_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.ingester_port)
    }

    pub fn uploader_url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.uploader_port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the ingester: the first time on port 0 (it reports the port it got), again
    /// (after a kill -9, a SIGTERM) on the port it had, since the uploader keeps that URL. That
    /// re-bind is of the ingester's own port, held by `ingester_port_keeper` since its previous
    /// run exited, so no other process can have taken it meanwhile.
    pub async fn start_ingester(&mut self) -> anyhow::Result<()> {
        // A previous run still here is killed now (its port then held).
        drop(self.ingester.take());
        let args = vec![
            "--data-dir".to_string(),
            self.path("ingester").to_string_lossy().into_owned(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.ingester_port),
        ];
        let mut args = args;
        args.extend(self.ingester_extra.args.iter().cloned());
        let mut envs = vec![("RUST_LOG".to_string(), "info,pulsar=warn".to_string())];
        envs.extend(self.ingester_extra.env.iter().cloned());
        self.ingester_port_keeper.make_bindable();
        let ingester = self.ingester.insert(Daemon::spawn(
            "tdmq-backup-ingester",
            &args,
            &envs,
            self.path("ingester.log"),
        )?);
        let addr = ingester
            .wait_ready(READY_TIMEOUT)
            .await
            .context("the ingester did not start listening")?;
        self.ingester_port_keeper.release();
        ingester.keep_port_when_gone(self.ingester_port_keeper.clone());
        self.ingester_port = addr.port();
        Ok(())
    }

    /// Starts the uploader on port 0 (it reports the port it got), a restart too: only `ctl`
    /// (through this stack) needs its address.
    pub async fn start_uploader(&mut self) -> anyhow::Result<()> {
        if self.ingester_port == 0 {
            bail!("start the ingester first: the uploader is given its URL");
        }
        let mut args = vec![
            "--ingester".to_string(),
            self.ingester_url(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            self.path("uploader").to_string_lossy().into_owned(),
            "--path-style".into(),
            "true".into(),
        ];
        if !self.uploader_without_endpoint {
            args.push("--endpoint".into());
            args.push(
                self.store_endpoint
                    .clone()
                    .unwrap_or_else(|| self.s3.endpoint()),
            );
        }
        let envs = vec![
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                self.s3.access_key().to_string(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                self.s3.secret_key().to_string(),
            ),
            ("RUST_LOG".to_string(), "info".to_string()),
        ];
        let mut envs = envs;
        if let Some(ca) = self.s3.ca_file() {
            envs.push((
                "SSL_CERT_FILE".to_string(),
                ca.to_string_lossy().into_owned(),
            ));
        }
        args.extend(self.uploader_extra.args.iter().cloned());
        envs.extend(self.uploader_extra.env.iter().cloned());
        let uploader = self.uploader.insert(Daemon::spawn(
            "tdmq-backup-uploader",
            &args,
            &envs,
            self.path("uploader.log"),
        )?);
        self.uploader_port = uploader
            .wait_ready(READY_TIMEOUT)
            .await
            .context("the uploader did not start listening")?
            .port();
        Ok(())
    }

    /// Waits for an uploader a test spawned itself to be ready, and makes it this stack's.
    pub async fn adopt_uploader(&mut self, uploader: Daemon) -> anyhow::Result<()> {
        let uploader = self.uploader.insert(uploader);
        self.uploader_port = uploader
            .wait_ready(READY_TIMEOUT)
            .await
            .context("the uploader did not start listening")?
            .port();
        Ok(())
    }

    /// Runs the CLI against this stack's daemons.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let ingester = self.ingester_url();
        let uploader = self.uploader_url();
        let mut full = vec![
            "--ingester",
            ingester.as_str(),
            "--uploader",
            uploader.as_str(),
        ];
        let token_file = self
            .ctl_token_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        if let Some(file) = &token_file {
            full.extend(["--token-file", file.as_str()]);
        }
        full.extend(self.ctl_extra_args.iter().map(String::as_str));
        full.extend_from_slice(args);
        let bin = bin_path("tdmq-backup");
        std::process::Command::new(&bin)
            .args(&full)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} {full:?}: {e}", bin.display()))
    }

    /// Runs the CLI with `--output json`; fails unless it exits 0 with one JSON document.
    pub fn ctl_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        if !out.status.success() {
            bail!(
                "tdmq-backup {full:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tdmq-backup {full:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Creates a rule writing to this stack's S3 server.
    pub fn create_rule(&self, name: &str, topic: &str, extra: &[&str]) -> anyhow::Result<Value> {
        let args = self.create_rule_args(name, topic, extra);
        self.ctl_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The `rule create` command line of [`Stack::create_rule`]: this stack's broker and S3
    /// server, subscription `tdmq-backup`, then `extra`.
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
            BUCKET,
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
        let status = self.ctl_json(&["status", name])?;
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

    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        text.get(start..).unwrap_or("").to_string()
    }
}

/// Polls `check` until it returns Some or the timeout passes.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Stack {
    /// Waits until every expected message is in the store and the rule's spool is empty,
    /// flushing meanwhile. Judged by the store's content, so it holds across daemon restarts
    /// (whose counters start again from zero). Returns the objects.
    pub async fn wait_until_stored(
        &self,
        rule: &str,
        expected: &[harness::SampleMessage],
        timeout: Duration,
    ) -> anyhow::Result<Vec<harness::BackupObject>> {
        use std::collections::HashSet;
        let wanted: HashSet<&[u8]> = expected.iter().map(|m| m.payload.as_slice()).collect();
        let deadline = Instant::now() + timeout;
        loop {
            let objects = harness::read_all(&self.s3.client(), BUCKET, "").await?;
            let mut found = HashSet::new();
            for object in &objects {
                for record in &object.records {
                    if let Ok(payload) = harness::oracle::decode_payload(record) {
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
