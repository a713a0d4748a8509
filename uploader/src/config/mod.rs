//! `UploaderConfig`: TOML file (`--config FILE`), overridden by environment variables
//! (`TDMQ_BACKUP_UPLOADER_<KEY>`), overridden by flags. Every value is validated here, and an
//! error names the key at fault, so the daemon never starts half-configured.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use edge::settings::{DaemonInput, DaemonSettings, NumberOrText, SettingError};
use proto::types::Secret;
use serde::Deserialize;

use crate::error::UploadError;
use crate::store::{ChecksumChoice, PayloadSigning, StoreEndpoint};

pub const DEFAULT_INGESTER: &str = "http://127.0.0.1:7601";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7602";
pub const DEFAULT_STATE_DIR: &str = "./uploader-state";
pub const DEFAULT_CONCURRENCY: usize = 4;
pub const MAX_CONCURRENCY: usize = 64;
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// S3's minimum part (COS allows 1 MB, so 5 MiB suits both).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// The largest part and the largest single PUT both stores accept.
pub const MAX_PART_SIZE: u64 = 5 << 30;
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Command line. Every config key is also a flag and an environment variable; unset flags fall
/// back to the file, then to the default.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tdmq-backup-uploader",
    version,
    about = "Uploads sealed tdmq-backup segments to COS / S3 and commits them back to the ingester",
    after_help = "Credentials: COS_SECRET_ID/COS_SECRET_KEY, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY \
                  (+ COS_SESSION_TOKEN / AWS_SESSION_TOKEN), else the standard AWS chain."
)]
pub struct Args {
    /// TOML config file (see examples/uploader.toml).
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Ingester gRPC URL, or several as a comma-separated list (one upload pipeline each)
    /// [default: http://127.0.0.1:7601].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_INGESTER")]
    pub ingester: Option<String>,
    /// Address of the uploader's status gRPC service [default: 127.0.0.1:7602].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the uploader's local state [default: ./uploader-state].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Store for every rule: http(s)://host:port (S3-compatible) or file://DIR (embedded).
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 endpoints a rule's own `endpoint` may name, comma-separated (e.g.
    /// https://minio.internal:9000). Only used without `endpoint`; a rule naming any other
    /// endpoint fails to upload and says so. The COS endpoint of a rule's own region needs no
    /// listing; a file:// endpoint never comes from a rule. [default: none]
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_ALLOWED_ENDPOINTS",
        value_name = "URL,..."
    )]
    pub allowed_endpoints: Option<String>,
    /// Path-style addressing for non-COS endpoints [default: false].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_PATH_STYLE", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub path_style: Option<bool>,
    /// Integrity header the store checks on every upload request: auto (Content-MD5 for COS,
    /// CRC32C for other S3 endpoints), md5 or crc32c [default: auto].
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_REQUEST_CHECKSUM",
        value_name = "auto|md5|crc32c"
    )]
    pub request_checksum: Option<String>,
    /// Whether SigV4 signs a SHA-256 of each body: auto (not over HTTPS, where TLS protects the
    /// body; always over plain HTTP) or always (for stores that refuse UNSIGNED-PAYLOAD)
    /// [default: auto].
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_PAYLOAD_SIGNING",
        value_name = "auto|always"
    )]
    pub payload_signing: Option<String>,
    /// Signing region override [default: the rule's region].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_REGION")]
    pub region: Option<String>,
    /// Segments uploaded at once [default: 4].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// Read a sealed segment straight from the ingester's disk when this host can open the file
    /// the ingester names (uploader and ingester on one host), instead of streaming it over
    /// ReadSegment. Length and CRC32C are checked either way; on any mismatch or read error the
    /// segment is read over gRPC on its next attempt [default: true].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_READ_LOCAL", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub read_local: Option<bool>,
    /// The ingester's data_dir as this host sees it: with read_local, sealed files are read
    /// only from its segments/ directory (symlinks resolved). Unset: any path shaped like a
    /// sealed file; symlinks in place of the file are refused either way. [default: none]
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_INGESTER_DATA_DIR",
        value_name = "DIR"
    )]
    pub ingester_data_dir: Option<PathBuf>,
    /// Multipart part size, e.g. 8MiB or 16MB; at least 5MiB [default: 8MiB].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_PART_SIZE")]
    pub part_size: Option<String>,
    /// Segments larger than this use multipart [default: part_size].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_MULTIPART_THRESHOLD")]
    pub multipart_threshold: Option<String>,
    /// Longest wait between retries, e.g. 30s or 2m [default: 30s].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_MAX_BACKOFF")]
    pub max_backoff: Option<String>,
    /// text or json [default: text].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// File holding the control-plane token: sent on every call to the ingester, and required
    /// (`authorization: Bearer <token>`) on every call to this uploader. Use the ingester's file.
    /// [default: none]
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_AUTH_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// File holding the token to send to the ingester instead of auth_token_file's: the
    /// ingester's uploader_token_file, when it keeps operators and the uploader apart.
    /// [default: auth_token_file]
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_INGESTER_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub ingester_token_file: Option<PathBuf>,
    /// Start without auth_token_file although `listen` is not a loopback address. Only for a
    /// port that something else guards (a firewall, a private network). [default: false]
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_ALLOW_UNAUTHENTICATED", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub allow_unauthenticated: Option<bool>,
    /// Address for the Prometheus endpoint `GET /metrics`, e.g. 127.0.0.1:7612; empty turns it
    /// off [default: off].
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// PEM CA certificate(s) to verify the ingester with when `ingester` is an https:// URL.
    /// [default: the system's trust store]
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_INGESTER_CA", value_name = "FILE")]
    pub ingester_ca: Option<PathBuf>,
    /// Name to verify in the ingester's certificate (and send as SNI) instead of the URL's host,
    /// e.g. when `ingester` is an IP address. [default: the URL's host]
    #[arg(
        long,
        env = "TDMQ_BACKUP_UPLOADER_INGESTER_TLS_DOMAIN",
        value_name = "NAME"
    )]
    pub ingester_tls_domain: Option<String>,
    /// PEM certificate (chain) for this uploader's gRPC status service; with tls_key, ctl must
    /// use an https:// --uploader URL. Set both or neither; /metrics stays plain HTTP.
    /// [default: plain HTTP/2]
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of tls_cert. [default: none]
    #[arg(long, env = "TDMQ_BACKUP_UPLOADER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

/// The TOML file: the same keys, all optional. Unknown keys are refused (a typo must not be
/// silently ignored), and the parser's message names the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    ingester: Option<ListOrText>,
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    endpoint: Option<String>,
    allowed_endpoints: Option<ListOrText>,
    path_style: Option<bool>,
    request_checksum: Option<String>,
    payload_signing: Option<String>,
    region: Option<String>,
    concurrency: Option<NumberOrText>,
    read_local: Option<bool>,
    ingester_data_dir: Option<PathBuf>,
    part_size: Option<NumberOrText>,
    multipart_threshold: Option<NumberOrText>,
    max_backoff: Option<String>,
    log_format: Option<String>,
    auth_token_file: Option<PathBuf>,
    ingester_token_file: Option<PathBuf>,
    allow_unauthenticated: Option<bool>,
    metrics_listen: Option<String>,
    ingester_ca: Option<PathBuf>,
    ingester_tls_domain: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// `allowed_endpoints = ["https://a", "https://b"]` or `"https://a,https://b"` (like the flag).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ListOrText {
    List(Vec<String>),
    Text(String),
}

impl ListOrText {
    fn into_list(self) -> Vec<String> {
        match self {
            ListOrText::List(list) => list,
            ListOrText::Text(text) => split_list(&text),
        }
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().to_string()).collect()
}

/// Where the S3 keys come from. The values are `Secret`s so the config can be logged with `{:?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Static {
        /// The environment variables they came from, for the status reply (never the values).
        source: &'static str,
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    /// aws-config's standard chain (profile, web identity, ECS/IMDS, ...).
    DefaultChain,
}

impl Credentials {
    pub fn describe(&self) -> &'static str {
        match self {
            Credentials::Static { source, .. } => source,
            Credentials::DefaultChain => "the standard AWS credential chain",
        }
    }

    /// COS_SECRET_ID/COS_SECRET_KEY first (the product's own names), then the AWS pair.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Credentials, UploadError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let pairs: [(&'static str, &'static str, &'static str, &'static str); 2] = [
            (
                "COS_SECRET_ID",
                "COS_SECRET_KEY",
                "COS_SESSION_TOKEN",
                "COS_SECRET_ID/COS_SECRET_KEY",
            ),
            (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            ),
        ];
        for (id_var, key_var, token_var, source) in pairs {
            match (get(id_var), get(key_var)) {
                (None, None) => continue,
                (Some(id), Some(key)) => {
                    let token = get(token_var).or_else(|| get("AWS_SESSION_TOKEN"));
                    return Ok(Credentials::Static {
                        source,
                        access_key_id: Secret::new(id),
                        secret_access_key: Secret::new(key),
                        session_token: token.map(Secret::new),
                    });
                }
                (Some(_), None) => {
                    return Err(UploadError::config(
                        key_var,
                        format!("{id_var} is set but {key_var} is not"),
                    ))
                }
                (None, Some(_)) => {
                    return Err(UploadError::config(
                        id_var,
                        format!("{key_var} is set but {id_var} is not"),
                    ))
                }
            }
        }
        Ok(Credentials::DefaultChain)
    }
}

#[derive(Debug, Clone)]
pub struct UploaderConfig {
    /// listen, log_format, metrics_listen, auth_token_file, allow_unauthenticated, TLS.
    pub daemon: DaemonSettings,
    /// Every ingester this uploader serves, in the order given, without repeats; never empty.
    pub ingesters: Vec<String>,
    pub state_dir: PathBuf,
    /// Overrides every rule's store when set.
    pub endpoint: Option<StoreEndpoint>,
    /// Without `endpoint`: the S3 endpoints a rule may name (normalized URLs).
    pub allowed_endpoints: Vec<String>,
    pub path_style: bool,
    pub request_checksum: ChecksumChoice,
    pub payload_signing: PayloadSigning,
    pub region: Option<String>,
    pub concurrency: usize,
    /// Sealed files the ingester names are read from this host's disk when they open.
    pub read_local: bool,
    /// Where the ingester keeps sealed files on this host, if configured (absolute).
    pub ingester_data_dir: Option<PathBuf>,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub max_backoff: Duration,
    pub credentials: Credentials,
    /// Sent to the ingester instead of auth_token_file's token, when set.
    pub ingester_token_file: Option<PathBuf>,
    /// TLS to the ingester (`ingester` is https://): its CA and name, read and checked at start-up.
    pub ingester_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl UploaderConfig {
    /// Flags/env from `args`, the file named by `--config` (if any), credentials from the process
    /// environment.
    pub fn load(args: Args) -> Result<UploaderConfig, UploadError> {
        let file_text = match &args.config {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| UploadError::io("reading config", path, e))?,
            ),
            None => None,
        };
        let credentials = Credentials::from_env(|name| std::env::var(name).ok())?;
        UploaderConfig::build(args, file_text.as_deref(), credentials)
    }

    /// The pure part of [`UploaderConfig::load`], for tests.
    pub fn build(
        args: Args,
        file_text: Option<&str>,
        credentials: Credentials,
    ) -> Result<UploaderConfig, UploadError> {
        let file: FileConfig = match file_text {
            Some(text) => {
                toml::from_str(text).map_err(|e| UploadError::config("config", e.to_string()))?
            }
            None => FileConfig::default(),
        };

        let ingesters = ingester_list(match args.ingester {
            Some(text) => split_list(&text),
            None => file
                .ingester
                .map(ListOrText::into_list)
                .unwrap_or_else(|| vec![DEFAULT_INGESTER.into()]),
        })?;

        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text.trim().parse::<SocketAddr>().map_err(|_| {
            UploadError::config(
                "listen",
                format!("{listen_text:?} is not a host:port socket address"),
            )
        })?;

        let state_dir = args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        if state_dir.as_os_str().is_empty() {
            return Err(UploadError::config("state_dir", "must not be empty"));
        }

        let endpoint = match args.endpoint.or(file.endpoint) {
            Some(text) if !text.trim().is_empty() => Some(
                StoreEndpoint::parse(text.trim())
                    .map_err(|m| UploadError::config("endpoint", m))?,
            ),
            _ => None,
        };
        let allowed_endpoints = match args.allowed_endpoints {
            Some(text) => split_list(&text),
            None => file
                .allowed_endpoints
                .map(ListOrText::into_list)
                .unwrap_or_default(),
        };
        let allowed_endpoints = crate::store::parse_allowed_endpoints(&allowed_endpoints)
            .map_err(|m| UploadError::config("allowed_endpoints", m))?;
        let path_style = args.path_style.or(file.path_style).unwrap_or(false);
        let read_local = args.read_local.or(file.read_local).unwrap_or(true);
        let ingester_data_dir = args
            .ingester_data_dir
            .or(file.ingester_data_dir)
            .filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = &ingester_data_dir {
            // The ingester names absolute paths; a relative one here would depend on the cwd.
            if !dir.is_absolute() {
                return Err(UploadError::config(
                    "ingester_data_dir",
                    format!("{} must be an absolute path", dir.display()),
                ));
            }
        }
        let request_checksum = match args.request_checksum.or(file.request_checksum) {
            Some(text) if !text.trim().is_empty() => ChecksumChoice::parse(&text)
                .map_err(|m| UploadError::config("request_checksum", m))?,
            _ => ChecksumChoice::Auto,
        };
        let payload_signing = match args.payload_signing.or(file.payload_signing) {
            Some(text) if !text.trim().is_empty() => PayloadSigning::parse(&text)
                .map_err(|m| UploadError::config("payload_signing", m))?,
            _ => PayloadSigning::Auto,
        };

        let region = match args.region.or(file.region) {
            Some(r) if !r.trim().is_empty() => Some(validate_region(r.trim())?),
            _ => None,
        };

        let concurrency = match args
            .concurrency
            .or(file.concurrency.map(NumberOrText::into_text))
        {
            None => DEFAULT_CONCURRENCY,
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_CONCURRENCY).contains(n))
                .ok_or_else(|| {
                    UploadError::config(
                        "concurrency",
                        format!("{text:?} must be a whole number from 1 to {MAX_CONCURRENCY}"),
                    )
                })?,
        };

        let part_size = match args
            .part_size
            .or(file.part_size.map(NumberOrText::into_text))
        {
            None => DEFAULT_PART_SIZE,
            Some(text) => parse_size("part_size", &text)?,
        };
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(UploadError::config(
                "part_size",
                format!("{part_size} bytes is outside 5MiB..=5GiB (the S3 part limits)"),
            ));
        }

        let multipart_threshold = match args
            .multipart_threshold
            .or(file.multipart_threshold.map(NumberOrText::into_text))
        {
            None => part_size,
            Some(text) => parse_size("multipart_threshold", &text)?,
        };
        // A single PUT is buffered whole (for its Content-MD5), so the threshold bounds memory
        // like the part size does.
        if multipart_threshold == 0 || multipart_threshold > part_size {
            return Err(UploadError::config(
                "multipart_threshold",
                format!("{multipart_threshold} bytes must be between 1 B and part_size ({part_size} bytes)"),
            ));
        }

        let max_backoff = match args.max_backoff.or(file.max_backoff) {
            None => DEFAULT_MAX_BACKOFF,
            Some(text) => humantime::parse_duration(text.trim()).map_err(|e| {
                UploadError::config(
                    "max_backoff",
                    format!("{text:?} is not a duration like 30s or 2m ({e})"),
                )
            })?,
        };
        if max_backoff < Duration::from_millis(100) || max_backoff > Duration::from_secs(3600) {
            return Err(UploadError::config(
                "max_backoff",
                "must be between 100ms and 1h",
            ));
        }

        let daemon = DaemonSettings::resolve(DaemonInput {
            listen,
            log_format: args.log_format.or(file.log_format),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            metrics_listen_example: "127.0.0.1:7612",
            auth_token_file: args.auth_token_file.or(file.auth_token_file),
            allow_unauthenticated: args.allow_unauthenticated.or(file.allow_unauthenticated),
            tls_cert: args.tls_cert.or(file.tls_cert),
            tls_key: args.tls_key.or(file.tls_key),
        })
        .map_err(|SettingError { key, message }| UploadError::config(key, message))?;
        let ingester_token_file = args
            .ingester_token_file
            .or(file.ingester_token_file)
            .filter(|p| !p.as_os_str().is_empty());
        // All of one scheme (ingester_list): the first stands for every one.
        let ingester_tls = ingester_tls(
            &ingesters[0],
            args.ingester_ca.or(file.ingester_ca),
            args.ingester_tls_domain.or(file.ingester_tls_domain),
        )?;

        Ok(UploaderConfig {
            daemon,
            ingester_tls,
            ingester_token_file,
            ingesters,
            state_dir,
            endpoint,
            allowed_endpoints,
            path_style,
            request_checksum,
            payload_signing,
            region,
            concurrency,
            read_local,
            ingester_data_dir,
            part_size,
            multipart_threshold,
            max_backoff,
            credentials,
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The first of `ingesters`: the one restore and verify talk to.
    pub fn ingester(&self) -> &str {
        self.ingesters
            .first()
            .map_or(DEFAULT_INGESTER, String::as_str)
    }
}

fn parse_size(field: &'static str, text: &str) -> Result<u64, UploadError> {
    proto::types::rule::parse_size(text).map_err(|m| UploadError::config(field, m))
}

/// The `ingester` key's URLs, checked: at least one, each http:// or https://, all of one scheme
/// (`ingester_ca` and `ingester_tls_domain` apply to every one), repeats dropped.
fn ingester_list(urls: Vec<String>) -> Result<Vec<String>, UploadError> {
    let mut out: Vec<String> = Vec::new();
    for url in urls.into_iter().map(|u| u.trim().to_string()) {
        if url.is_empty() {
            continue;
        }
        validate_ingester(&url)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    let Some(first) = out.first() else {
        return Err(UploadError::config(
            "ingester",
            format!("names no ingester (give a URL like {DEFAULT_INGESTER}, or several separated by commas)"),
        ));
    };
    let https = |u: &str| u.starts_with("https://");
    if let Some(other) = out.iter().find(|u| https(u) != https(first)) {
        return Err(UploadError::config(
            "ingester",
            format!(
                "{first:?} and {other:?} mix http:// and https://: the ingesters of one uploader share one TLS setting (ingester_ca, ingester_tls_domain)"
            ),
        ));
    }
    Ok(out)
}

fn validate_ingester(url: &str) -> Result<(), UploadError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(()),
        _ => Err(UploadError::config(
            "ingester",
            format!("{url:?} must be an http:// or https:// URL, like {DEFAULT_INGESTER}"),
        )),
    }
}

/// The client TLS settings for an https:// `ingester`; for an http:// one, `ingester_ca` and
/// `ingester_tls_domain` are refused rather than silently ignored.
fn ingester_tls(
    ingester: &str,
    ca: Option<PathBuf>,
    domain: Option<String>,
) -> Result<Option<tonic::transport::ClientTlsConfig>, UploadError> {
    let ca = ca.filter(|p| !p.as_os_str().is_empty());
    let domain = domain.filter(|d| !d.trim().is_empty());
    if !ingester.starts_with("https://") {
        for (field, set) in [
            ("ingester_ca", ca.is_some()),
            ("ingester_tls_domain", domain.is_some()),
        ] {
            if set {
                return Err(UploadError::config(
                    field,
                    format!("only used with TLS, but ingester {ingester:?} is not an https:// URL"),
                ));
            }
        }
        return Ok(None);
    }
    edge::tls::client_config(ca.as_deref().map(|p| ("ingester_ca", p)), domain.as_deref())
        .map(Some)
        .map_err(|e| {
            let SettingError { key, message } =
                SettingError::from_keyed_message(&["ingester_ca"], &e.to_string());
            UploadError::config(key, message)
        })
}

fn validate_region(region: &str) -> Result<String, UploadError> {
    if region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(region.to_string())
    } else {
        Err(UploadError::config(
            "region",
            format!("{region:?} may only hold a-z 0-9 -"),
        ))
    }
}

#[cfg(test)]
mod tests;
