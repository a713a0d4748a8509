//! The command line, as docs/reference.md §3 documents it. Scripts depend on these names:
//! extend, never rename.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_INGESTER: &str = "http://127.0.0.1:7601";
pub const DEFAULT_UPLOADER: &str = "http://127.0.0.1:7602";

#[derive(Debug, Parser)]
#[command(
    name = "tdmq-backup",
    version = proto::VERSION,
    about = "Operate tdmq-backup: backup rules, status, run logs and segments",
    after_help = "Sizes take KB MB GB (powers of 1000) or KiB MiB GiB; durations take s, m, h.",
    // A wrapper script's `--output json` plus the user's own must not be a usage error: the
    // last one wins, as in most CLIs.
    args_override_self = true
)]
pub struct Cli {
    /// The ingester's gRPC address. Several (repeated, or a comma-separated list): rule
    /// commands, `status`, `logs` and `segments` go to every one; `restore` to the first.
    // `global` so `tdmq-backup status --ingester URL` works too; the contract's position (before
    // the command) keeps working.
    #[arg(
        long,
        global = true,
        env = "TDMQ_BACKUP_INGESTER",
        help_heading = "Global options",
        default_value = DEFAULT_INGESTER,
        value_name = "URL",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub ingester: Vec<String>,

    /// The uploader's gRPC address (used by `status`).
    #[arg(
        long,
        global = true,
        env = "TDMQ_BACKUP_UPLOADER",
        help_heading = "Global options",
        default_value = DEFAULT_UPLOADER,
        value_name = "URL"
    )]
    pub uploader: String,

    /// File holding the control-plane token, sent as `authorization: Bearer <token>`.
    #[arg(
        long = "auth-token-file",
        global = true,
        env = "TDMQ_BACKUP_TOKEN_FILE",
        value_name = "F",
        help_heading = "Global options"
    )]
    pub auth_token_file: Option<PathBuf>,

    /// The first spelling of --auth-token-file, kept for scripts. Only before the command:
    /// after `rule create`/`rule edit`, `--token-file` is the rule's Pulsar token, so it cannot
    /// be global.
    #[arg(long = "token-file", value_name = "F", hide = true)]
    pub token_file: Option<PathBuf>,

    /// PEM CA certificate(s) to verify daemons reached by https:// URLs with
    /// [default: the system's trust store].
    #[arg(
        long = "ca-file",
        global = true,
        env = "TDMQ_BACKUP_CA_FILE",
        value_name = "F",
        help_heading = "Global options"
    )]
    pub ca_file: Option<PathBuf>,

    /// Name to verify in the daemons' certificates (and send as SNI) instead of the URL's host,
    /// e.g. when the URL holds an IP address.
    #[arg(
        long = "tls-domain",
        global = true,
        env = "TDMQ_BACKUP_TLS_DOMAIN",
        value_name = "NAME",
        help_heading = "Global options"
    )]
    pub tls_domain: Option<String>,

    /// How results are printed: tables that fit the terminal, tables with every column whole,
    /// or one JSON document.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table,
        help_heading = "Global options"
    )]
    pub output: OutputFormat,

    /// Tables without their header line (for `grep`, `awk`, `wc -l`).
    #[arg(long, global = true, help_heading = "Global options")]
    pub no_headers: bool,

    /// How long a call may take before ctl gives up and says which daemon did not answer
    /// (`rule delete --drain` waits for its drain on top).
    #[arg(
        long,
        global = true,
        env = "TDMQ_BACKUP_TIMEOUT",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        help_heading = "Global options"
    )]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The columns people need, shortened to fit the terminal.
    Table,
    /// Every column, nothing shortened.
    Wide,
    Json,
    /// `rule show` only: the rule as a rule file (`rule create/apply --from-file` reads it back).
    Toml,
}

// Built once per process; boxing the big variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create, inspect, change and remove backup rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Health of both daemons and progress of every rule (or one).
    #[command(
        after_help = "With --watch the status is fetched again every INTERVAL (default 2s) \
until Ctrl-C: on a terminal the screen is redrawn; otherwise successive tables are printed, \
separated by a blank line. With --output json, one JSON document per refresh, one per line.

Examples:
  tdmq-backup status
  tdmq-backup status orders-backup --watch 5s
  tdmq-backup status -o json"
    )]
    Status {
        /// Only this rule.
        name: Option<String>,
        /// Refresh every INTERVAL (default 2s, like 500ms, 5s, 1m) until Ctrl-C. Give the rule
        /// name before --watch, or the interval after it.
        #[arg(
            long,
            value_name = "INTERVAL",
            num_args = 0..=1,
            default_missing_value = "2s",
            value_parser = parse_interval
        )]
        watch: Option<Duration>,
    },
    /// A rule's run history: stored objects, failures, state changes.
    #[command(
        after_help = "Entries are printed newest first. With --follow they are printed \
oldest first and new ones are appended as they happen (polled every second) until Ctrl-C; \
--since and --limit then only choose the entries printed first, --failed applies throughout.

Examples:
  tdmq-backup logs orders-backup --limit 20
  tdmq-backup logs orders-backup --failed --since 2h
  tdmq-backup logs orders-backup -f"
    )]
    Logs(LogsArgs),
    /// A rule's segments: open, sealing, sealed, stored (a quarantined one shows as sealing
    /// again while it is rewritten).
    #[command(after_help = "Example:\n  tdmq-backup segments orders-backup -o json")]
    Segments {
        /// The rule.
        name: String,
    },
    /// Put a rule's backup back into a topic: the uploader reads the objects the rule's
    /// manifest lists, the ingester produces them.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// Check that everything the rule stored is in the bucket and intact, and that its
    /// message ids are continuous (runs on the uploader, which holds the store credentials).
    #[command(
        after_help = "Without --deep: a LIST of the rule's manifest and of its topic folder, a GET per \
manifest entry, and a HEAD only where the listing cannot tell; --deep also reads, decompresses and \
parses every object. Exits 0 when all is well, 3 when it found problems (missing, corrupt, gap, \
overlap, duplicate, unexpected), another status when it could not run.

Examples:
  tdmq-backup verify orders-backup
  tdmq-backup verify orders-backup --from 2026-11-24T00:00:00Z --to 2026-11-25T00:00:00Z --deep
  tdmq-backup verify orders-backup -o json"
    )]
    Verify {
        /// The rule.
        name: String,
        /// Only objects holding messages published at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// Only objects holding messages published at or before this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        to: Option<String>,
        /// Also read every object: size, CRC32C, every record parsed, ids and counts.
        #[arg(long)]
        deep: bool,
    },
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:\n  \
tdmq-backup completions bash > /etc/bash_completion.d/tdmq-backup\n  \
tdmq-backup completions zsh > \"${fpath[1]}/_tdmq-backup\"\n  \
tdmq-backup completions fish > ~/.config/fish/completions/tdmq-backup.fish")]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum RestoreCommand {
    /// Plan a restore job and start it (or, with --dry-run, only print the plan).
    #[command(after_help = "Examples:
  tdmq-backup restore create orders-back --rule orders-backup \\
      --to-topic persistent://public/default/orders --service-url pulsar://10.0.0.9:6650 \\
      --token-file ./target-token.txt --from 2026-11-24T00:00:00Z --rate 5000/s
  tdmq-backup restore create orders-back --rule orders-backup --to-topic orders \\
      --service-url pulsar://10.0.0.9:6650 --dry-run
  tdmq-backup restore create orders-dr --bucket backup-1250000000 --region ap-shanghai \\
      --prefix backup/ --topic persistent://public/default/orders --to-topic orders \\
      --service-url pulsar://10.0.0.9:6650 --token-file ./target-token.txt")]
    Create(Box<RestoreCreateArgs>),
    /// Every restore job with its state and progress.
    List,
    /// One job: state (and why it failed), plan and progress per source partition.
    Show {
        /// The job.
        job: String,
    },
    /// Stop a running job after its current batch; `resume` goes on from there.
    Pause {
        /// The job.
        job: String,
    },
    /// Go on with a paused or failed job from its last confirmed batch.
    Resume {
        /// The job.
        job: String,
    },
    /// Stop a job for good and forget its target's token.
    Cancel {
        /// The job.
        job: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RestoreCreateArgs {
    /// The job's name (letters, digits, - and _).
    pub job: String,
    /// The rule whose backup to restore (its bucket, region, prefix and manifest). Or, for a
    /// backup whose rule is not here, --bucket, --region, --prefix and --topic.
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
    /// The bucket a backup is in (with --region, --prefix and --topic, instead of --rule).
    #[arg(long, value_name = "B")]
    pub bucket: Option<String>,
    /// The bucket's region (the uploader reads it with its own endpoint and credentials).
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// The backup's prefix, as its rule had it: ending with / (--prefix "" for none).
    #[arg(long, value_name = "P/")]
    pub prefix: Option<String>,
    /// The backed-up topic to replay (a short name means public/default).
    #[arg(long, value_name = "SOURCE")]
    pub topic: Option<String>,
    /// The topic to produce to (a short name means public/default).
    #[arg(long, value_name = "TOPIC")]
    pub to_topic: String,
    /// The target cluster: pulsar://host:port or pulsar+ssl://host:port.
    #[arg(long, value_name = "URL")]
    pub service_url: String,
    /// File holding the target's Pulsar token (sent to the ingester only).
    #[arg(long = "token-file", value_name = "F", conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the target's Pulsar token.
    #[arg(long = "token-env", value_name = "VAR")]
    pub token_env: Option<String>,
    /// Only messages published at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<String>,
    /// Only messages published at or before this time (RFC 3339).
    #[arg(long, value_name = "RFC3339")]
    pub to: Option<String>,
    /// Only these source partitions, like 0,1,3.
    #[arg(long, value_name = "0,1,..", value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// At most this many messages per second, like 5000/s (default: no limit).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Print the plan (objects, messages, time range, target partitions); produce nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--rate N/s` (or plain N).
fn parse_rate(text: &str) -> Result<u64, String> {
    let n = text.strip_suffix("/s").unwrap_or(text);
    match n.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a rate like 5000/s")),
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum RuleCommand {
    /// Create a rule from flags or from a TOML file.
    #[command(after_help = "Examples:
  tdmq-backup rule create orders-backup --service-url pulsar://pulsar.example:6650 \\
      --topic persistent://public/default/orders --subscription tdmq-backup \\
      --bucket backup-1250000000 --region ap-guangzhou --prefix orders/ --window 10m
  tdmq-backup rule create --from-file orders.toml")]
    Create(CreateArgs),
    /// Create the rule a rule file describes, or change the existing rule to match it.
    #[command(
        after_help = "Only the fields that differ from the stored rule are changed; a file \
that matches it changes nothing. A rule file leaves out what it does not set, and those fields \
keep their values.

Examples:
  tdmq-backup rule show orders-backup -o toml > orders.toml
  tdmq-backup rule apply -f orders.toml"
    )]
    Apply(ApplyArgs),
    /// List every rule.
    #[command(after_help = "Example:\n  tdmq-backup rule list -o json")]
    List,
    /// Show one rule.
    #[command(after_help = "Example:\n  tdmq-backup rule show orders-backup")]
    Show {
        /// The rule.
        name: String,
    },
    /// Change a rule; fields not given keep their value.
    #[command(after_help = "Examples:
  tdmq-backup rule edit orders-backup --window 15m --max-bytes 256MiB
  tdmq-backup rule edit orders-backup --topic orders-v2 --unsubscribe")]
    Edit(EditArgs),
    /// Delete a rule.
    #[command(after_help = "Examples:
  tdmq-backup rule delete orders-backup --drain          # store everything first
  tdmq-backup rule delete orders-backup --discard --yes  # drop what is not stored")]
    Delete(DeleteArgs),
    /// Stop consuming (the spool and uploads are kept).
    #[command(after_help = "Example:\n  tdmq-backup rule pause orders-backup")]
    Pause {
        /// The rule.
        name: String,
    },
    /// Start consuming again.
    #[command(after_help = "Example:\n  tdmq-backup rule resume orders-backup")]
    Resume {
        /// The rule.
        name: String,
    },
    /// Seal the open segment now instead of waiting for its window to end.
    #[command(after_help = "Examples:
  tdmq-backup rule flush orders-backup
  tdmq-backup rule flush orders-backup --wait --wait-timeout 2m")]
    Flush {
        /// The rule.
        name: String,
        /// Return only when the sealed segment is stored and its messages acknowledged on
        /// Pulsar (progress on stderr).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit 1; the segment keeps going).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, requires = "wait")]
        wait_timeout: Duration,
    },
    /// Pass one entry the rule cannot decode: acknowledge it on Pulsar without storing it.
    ///
    /// A rule stops before an entry that the Pulsar client cannot decode (status shows it as
    /// `blocked`, naming the entry). Its messages are then in no object: use this only when the
    /// entry can never be read (corrupt, or encrypted with a key you do not have).
    #[command(after_help = "Example:\n  tdmq-backup rule skip orders-backup --entry 1234:56:2")]
    Skip {
        /// The rule.
        name: String,
        /// The entry, as `status` names it: LEDGER:ENTRY, or LEDGER:ENTRY:PARTITION for a
        /// partitioned topic.
        #[arg(long, value_name = "LEDGER:ENTRY[:PARTITION]")]
        entry: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The rule's name (2-60 of a-z 0-9 _ -, starting with a letter). With --from-file it
    /// replaces the file's `name`.
    #[arg(required_unless_present = "from_file")]
    pub name: Option<String>,

    /// Read the rule from a TOML file. Keys: name service_url topic subscription
    /// subscription_type bucket region prefix window max_messages max_bytes start cluster role
    /// endpoint compression compression_level layout format fence, plus token_file (relative to the file)
    /// or token_env. Flags given as well replace the file's values.
    #[arg(long, value_name = "RULE.toml")]
    pub from_file: Option<PathBuf>,

    #[command(flatten)]
    pub spec: SpecFlags,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The rule file: the keys of `rule create --from-file`, `name` included.
    #[arg(short = 'f', long = "file", value_name = "RULE.toml")]
    pub file: PathBuf,
    /// If the file changes service_url, topic or subscription: remove the old Pulsar
    /// subscription, as `rule edit --unsubscribe` does.
    #[arg(long)]
    pub unsubscribe: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    /// The rule to change (names are immutable).
    pub name: String,

    /// Take the changes from a TOML file (same keys as for create). Flags replace its values.
    #[arg(long, value_name = "RULE.toml")]
    pub from_file: Option<PathBuf>,

    #[command(flatten)]
    pub spec: SpecFlags,

    /// With a new --service-url, --topic or --subscription: remove the old Pulsar subscription
    /// (after the rule's consumer stopped). Without it the old subscription is left behind and
    /// keeps every new message against the backlog quota.
    #[arg(long)]
    pub unsubscribe: bool,
}

/// Every rule field as a flag. All optional here: create checks the required ones client-side
/// (naming the field), edit sends only what was given.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecFlags {
    /// pulsar://host:port or pulsar+ssl://host:port
    #[arg(long, value_name = "URL")]
    pub service_url: Option<String>,
    /// persistent://tenant/namespace/topic (a short name means public/default).
    #[arg(long)]
    pub topic: Option<String>,
    /// The subscription to consume with (created if missing).
    #[arg(long, value_name = "SUB")]
    pub subscription: Option<String>,
    /// failover (default) or exclusive.
    #[arg(long, value_name = "failover|exclusive")]
    pub subscription_type: Option<String>,
    /// COS bucket (name-appid) or any S3 bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// COS region (ap-guangzhou, ...) or, with --endpoint, any region.
    #[arg(long)]
    pub region: Option<String>,
    /// Key prefix: empty (bucket root) or ending with "/".
    #[arg(long, value_name = "P/")]
    pub prefix: Option<String>,
    /// Segment time window, 1s..=24h (default 5m).
    // Passed through as typed: the ingester owns the parsing, ctl only pre-validates on create.
    #[arg(long, value_name = "DURATION")]
    pub window: Option<String>,
    /// Most messages in one object (default 5000).
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Most record bytes in one object, like 500MB or 64MiB (default 500MB).
    #[arg(long, value_name = "SIZE")]
    pub max_bytes: Option<String>,
    /// earliest (default), latest, or an RFC 3339 timestamp. Applies when the subscription is
    /// created: `rule edit` takes it only with a new --service-url, --topic or --subscription.
    #[arg(long, value_name = "earliest|latest|RFC3339")]
    pub start: Option<String>,
    /// Cluster label, written into object metadata.
    #[arg(long, value_name = "ID")]
    pub cluster: Option<String>,
    /// Pulsar role (label kept with the rule).
    #[arg(long)]
    pub role: Option<String>,
    /// File holding the rule's Pulsar token.
    #[arg(long = "token-file", value_name = "F", conflicts_with = "token_env")]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the rule's Pulsar token.
    #[arg(long = "token-env", value_name = "VAR")]
    pub token_env: Option<String>,
    /// Object store endpoint (http:// or https://); needed for non-COS regions. The uploader
    /// uses it only if it is the COS endpoint of the rule's region or listed in the uploader's
    /// allowed_endpoints (a file:// endpoint only ever comes from the uploader's own config).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// gzip (default; objects end .jsonl.gz), zstd (.jsonl.zst) or none (.jsonl). With
    /// --format parquet it compresses the file's pages instead (default zstd).
    #[arg(long, value_name = "gzip|zstd|none")]
    pub compression: Option<String>,
    /// gzip 1..=9 (default 1), zstd 1..=19 (default 1). A new --compression without it uses
    /// the new compression's default.
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,
    /// Where keys put the date: plain (default) YYYY/MM/DD/HH/, or hive dt=YYYY-MM-DD/hour=HH/
    /// (partition columns for DuckDB, Spark, Athena, Trino).
    #[arg(long, value_name = "plain|hive")]
    pub layout: Option<String>,
    /// jsonl (default): JSON Lines; parquet: Parquet files (.parquet) with typed columns
    /// (timestamps, raw payload bytes, properties as a map). A new --format without
    /// --compression uses the new format's default compression.
    #[arg(long, value_name = "jsonl|parquet")]
    pub format: Option<String>,
    /// Several ingesters share the subscription (a partitioned topic spread over hosts, or a
    /// standby): one segment per partition, keys derived from the messages, conditional
    /// creates in the store, so a partition that moves is still stored exactly once.
    /// --fence alone means true; --fence=false turns it off.
    #[arg(long, value_name = "true|false", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub fence: Option<bool>,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// The rule.
    pub name: String,
    /// Seal, upload and commit everything first, then delete.
    #[arg(long, conflicts_with = "discard")]
    pub drain: bool,
    /// Delete even though segments are not stored, or stored but not yet acknowledged (their
    /// messages stay unacknowledged on the subscription).
    #[arg(long)]
    pub discard: bool,
    /// Do not ask before discarding.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also remove the rule's Pulsar subscription (after its consumer stopped), so it does not
    /// keep every new message against the backlog quota. If that fails the rule is kept.
    #[arg(long)]
    pub unsubscribe: bool,
    /// With --drain: how long the ingester may take (default: the ingester's).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, requires = "drain")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The rule.
    pub name: String,
    /// Only failures.
    #[arg(long)]
    pub failed: bool,
    /// Only entries newer than this, like 10m or 2h.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// At most this many entries, 1 or more (default: the ingester's).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Keep running: print the entries (oldest first), then poll every second and print new
    /// ones as they arrive, until Ctrl-C. With --output json, one JSON object per line.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `--watch INTERVAL`: a duration of at least 100ms. The message says how to give a rule name,
/// because `status --watch orders` reads `orders` as the interval.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let every = humantime::parse_duration(text).map_err(|e| {
        format!(
            "{text:?} is not an interval like 2s or 500ms ({e}); to watch one rule, give its name \
             before --watch: `status NAME --watch`"
        )
    })?;
    if every < Duration::from_millis(100) {
        return Err(format!("{text:?} is too short: the least is 100ms"));
    }
    Ok(every)
}

impl Cli {
    /// The control-plane token file, by either spelling. The old spelling wins because only a
    /// command line can give it, while `--auth-token-file` may come from the environment.
    pub fn control_token_file(&self) -> Option<&std::path::Path> {
        self.token_file
            .as_deref()
            .or(self.auth_token_file.as_deref())
    }
}
