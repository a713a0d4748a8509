//! What differs between the stacks the callers start: the broker, HTTPS for S3, the buckets,
//! which build's binaries run, and where their data goes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{Extra, Stack, StackDir, BUCKET, READY_TIMEOUT};
use crate::daemons::bin_dir;
use crate::ports::PortKeeper;
use crate::services::pulsar_lite::PulsarLite;
use crate::services::s3::S3Server;

/// Options of a [`Stack`]; [`StackBuilder::services`] or [`StackBuilder::start`] starts it.
#[derive(Default)]
pub struct StackBuilder {
    pulsar: Option<PulsarLite>,
    broker_settings: Option<String>,
    partitions: u32,
    https_s3: bool,
    bucket: Option<String>,
    extra_buckets: Vec<String>,
    dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    ready_timeout: Option<Duration>,
}

impl StackBuilder {
    /// A broker the caller started (partitions, relay faults) instead of a plain one.
    pub fn pulsar(mut self, pulsar: PulsarLite) -> StackBuilder {
        self.pulsar = Some(pulsar);
        self
    }

    /// Top-level `broker.toml` lines (`\n`-separated) for the broker the stack starts.
    pub fn broker_settings(mut self, settings: &str) -> StackBuilder {
        self.broker_settings = Some(settings.to_string());
        self
    }

    /// Partitions of every topic the broker the stack starts creates (default 0: none).
    pub fn partitions(mut self, partitions: u32) -> StackBuilder {
        self.partitions = partitions;
        self
    }

    /// The S3 server on HTTPS with its own CA, which the uploader trusts through `SSL_CERT_FILE`
    /// and [`S3Server::client`] directly.
    pub fn https_s3(mut self) -> StackBuilder {
        self.https_s3 = true;
        self
    }

    /// The bucket rules write to (default [`BUCKET`]).
    pub fn bucket(mut self, name: &str) -> StackBuilder {
        self.bucket = Some(name.to_string());
        self
    }

    /// Another bucket to create on the S3 server.
    pub fn extra_bucket(mut self, name: &str) -> StackBuilder {
        self.extra_buckets.push(name.to_string());
        self
    }

    /// Keeps the daemons' data and logs in `dir` (created if missing) instead of a temporary
    /// directory removed with the stack.
    pub fn dir(mut self, dir: PathBuf) -> StackBuilder {
        self.dir = Some(dir);
        self
    }

    /// Runs the binaries in `dir` (default: next to the running executable, so a test runs the
    /// debug build and the bench the release build it came with).
    pub fn bin_dir(mut self, dir: PathBuf) -> StackBuilder {
        self.bin_dir = Some(dir);
        self
    }

    /// How long a daemon may take to say it is ready (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> StackBuilder {
        self.ready_timeout = Some(timeout);
        self
    }

    /// Broker, S3 server and buckets; the daemons are started by the caller.
    pub async fn services(self) -> anyhow::Result<Stack> {
        let s3 = if self.https_s3 {
            S3Server::start_tls().await?
        } else {
            S3Server::start().await?
        };
        let pulsar = match self.pulsar {
            Some(_) if self.broker_settings.is_some() || self.partitions > 0 => {
                bail!("broker settings and partitions are for a broker the stack starts")
            }
            Some(pulsar) => pulsar,
            None => {
                PulsarLite::start_with_partitions_and_settings(
                    self.partitions,
                    self.broker_settings.as_deref().unwrap_or_default(),
                )
                .await?
            }
        };
        let bucket = self.bucket.unwrap_or_else(|| BUCKET.to_string());
        s3.create_bucket(&bucket).await?;
        for extra in &self.extra_buckets {
            s3.create_bucket(extra).await?;
        }
        let dir = match self.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                StackDir::Kept(dir)
            }
            None => StackDir::Temp(tempfile::tempdir()?),
        };
        Ok(Stack {
            pulsar,
            s3,
            dir,
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
            bucket,
            bin_dir: self.bin_dir.unwrap_or_else(bin_dir),
            ready_timeout: self.ready_timeout.unwrap_or(READY_TIMEOUT),
        })
    }

    /// [`StackBuilder::services`], then the ingester and the uploader.
    pub async fn start(self) -> anyhow::Result<Stack> {
        let mut stack = self.services().await?;
        stack.start_ingester().await?;
        stack.start_uploader().await?;
        Ok(stack)
    }
}
