//! The settings every daemon has — where it listens, how it logs, where /metrics is, TLS and the
//! control-plane token — and how they are checked. Only their meaning is shared: each daemon
//! keeps its own flags, environment variables and file keys (those names are a user contract),
//! merges them (flag over environment over file) and hands the result to
//! [`DaemonSettings::resolve`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::logging::LogFormat;
use crate::tls::ServerTls;

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
    /// Read at start-up (`token_file::load`); the token itself never sits in the config.
    pub auth_token_file: Option<PathBuf>,
    /// `listen` may be beyond loopback without a token (guarantee 7's explicit opt-out).
    pub allow_unauthenticated: bool,
    /// Read and checked at start-up; `None`: plain HTTP/2.
    pub tls: Option<ServerTls>,
}

/// The values as the daemon found them; `None`: unset anywhere.
#[derive(Debug, Clone)]
pub struct DaemonInput {
    /// Already parsed and defaulted: the daemons read it differently.
    pub listen: SocketAddr,
    pub log_format: Option<String>,
    pub metrics_listen: Option<String>,
    /// Shown in the error for a `metrics_listen` that is not an address (the daemon's usual port).
    pub metrics_listen_example: &'static str,
    pub auth_token_file: Option<PathBuf>,
    pub allow_unauthenticated: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// A setting that cannot be used; `key` is the config key at fault, as the daemons name it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {message}")]
pub struct SettingError {
    pub key: &'static str,
    pub message: String,
}

impl SettingError {
    /// From a message that starts with the key it is about (what `tls` errors and
    /// `proto::auth::check_listen_exposure` say); the first of `keys` when none matches.
    pub fn from_keyed_message(keys: &[&'static str], message: &str) -> SettingError {
        let key = keys
            .iter()
            .copied()
            .find(|k| message.starts_with(k))
            .or_else(|| keys.first().copied())
            .unwrap_or("config");
        let rest = message.strip_prefix(key).unwrap_or(message).trim_start();
        SettingError {
            key,
            message: rest.to_string(),
        }
    }
}

impl DaemonSettings {
    /// Checks everything and reads the TLS files, so a daemon stops before it opens anything.
    /// Empty paths and addresses (an environment variable set to "") count as unset.
    pub fn resolve(input: DaemonInput) -> Result<DaemonSettings, SettingError> {
        let log_format = match input.log_format.as_deref() {
            None => LogFormat::default(),
            Some(text) => LogFormat::parse(text).map_err(|message| SettingError {
                key: "log_format",
                message,
            })?,
        };
        let metrics_listen = match input.metrics_listen {
            Some(text) if !text.trim().is_empty() => Some(
                text.trim()
                    .parse::<SocketAddr>()
                    .map_err(|_| SettingError {
                        key: "metrics_listen",
                        message: format!(
                            "{text:?} is not an address like {}",
                            input.metrics_listen_example
                        ),
                    })?,
            ),
            _ => None,
        };
        let auth_token_file = input.auth_token_file.filter(|p| !p.as_os_str().is_empty());
        let allow_unauthenticated = input.allow_unauthenticated.unwrap_or(false);
        proto::auth::check_listen_exposure(
            input.listen,
            auth_token_file.is_some(),
            allow_unauthenticated,
        )
        .map_err(|m| SettingError::from_keyed_message(&["listen"], &m))?;
        let tls = crate::tls::server_from_keys(input.tls_cert, input.tls_key).map_err(|e| {
            SettingError::from_keyed_message(&["tls_cert", "tls_key"], &e.to_string())
        })?;
        Ok(DaemonSettings {
            listen: input.listen,
            log_format,
            metrics_listen,
            auth_token_file,
            allow_unauthenticated,
            tls,
        })
    }
}

/// Binds the control-plane address; the error names it.
pub async fn bind_listen(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding listen address {addr}"))
}

/// A number in a TOML file: `part_size = 8388608` and `part_size = "8MiB"` both read naturally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberOrText {
    Number(u64),
    Text(String),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant") does not
/// say what is expected.
impl<'de> Deserialize<'de> for NumberOrText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Expected;
        impl Visitor<'_> for Expected {
            type Value = NumberOrText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number, or a string like \"8MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumberOrText, E> {
                u64::try_from(v)
                    .map(NumberOrText::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Expected)
    }
}

impl NumberOrText {
    /// The text the matching flag would hold, for the one parser both go through.
    pub fn into_text(self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(t) => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(listen: &str) -> DaemonInput {
        DaemonInput {
            listen: listen.parse().expect("literal"),
            log_format: None,
            metrics_listen: None,
            metrics_listen_example: "127.0.0.1:7611",
            auth_token_file: None,
            allow_unauthenticated: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    #[test]
    fn defaults_and_empty_values_are_unset() -> Result<(), SettingError> {
        let s = DaemonSettings::resolve(input("127.0.0.1:7601"))?;
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!((s.metrics_listen, s.auth_token_file), (None, None));
        assert!(!s.allow_unauthenticated && s.tls.is_none());
        let s = DaemonSettings::resolve(DaemonInput {
            metrics_listen: Some(" ".into()),
            auth_token_file: Some("".into()),
            tls_cert: Some("".into()),
            tls_key: Some("".into()),
            log_format: Some("json".into()),
            ..input("127.0.0.1:7601")
        })?;
        assert_eq!((s.metrics_listen, s.auth_token_file), (None, None));
        assert_eq!(s.log_format, LogFormat::Json);
        Ok(())
    }

    #[test]
    fn errors_name_the_key() {
        let err = |i: DaemonInput| DaemonSettings::resolve(i).expect_err("refused");
        let e = err(DaemonInput {
            log_format: Some("yaml".into()),
            ..input("127.0.0.1:1")
        });
        assert_eq!(e.to_string(), "log_format \"yaml\" must be text or json");
        let e = err(DaemonInput {
            metrics_listen: Some("localhost".into()),
            ..input("127.0.0.1:1")
        });
        assert_eq!(
            e.to_string(),
            "metrics_listen \"localhost\" is not an address like 127.0.0.1:7611"
        );
        let e = err(input("0.0.0.0:7601"));
        assert_eq!(e.key, "listen");
        assert!(e.message.starts_with("0.0.0.0:7601 is reachable"), "{e}");
        let e = err(DaemonInput {
            tls_key: Some("/k.pem".into()),
            ..input("127.0.0.1:1")
        });
        assert_eq!(e.key, "tls_cert");
        assert!(e.to_string().starts_with("tls_cert is missing"), "{e}");
    }

    #[test]
    fn beyond_loopback_with_a_token_file_or_the_opt_out() -> Result<(), SettingError> {
        let s = DaemonSettings::resolve(DaemonInput {
            auth_token_file: Some("/etc/t".into()),
            ..input("0.0.0.0:7601")
        })?;
        assert!(!s.allow_unauthenticated);
        let s = DaemonSettings::resolve(DaemonInput {
            allow_unauthenticated: Some(true),
            ..input("0.0.0.0:7601")
        })?;
        assert!(s.allow_unauthenticated);
        Ok(())
    }

    #[derive(Debug, Deserialize)]
    struct Sizes {
        a: NumberOrText,
        b: NumberOrText,
    }

    #[test]
    fn a_number_reads_as_an_integer_or_a_string() -> Result<(), toml::de::Error> {
        let sizes: Sizes = toml::from_str("a = 1048576\nb = \"1 MiB\"\n")?;
        assert_eq!(sizes.a.into_text(), "1048576");
        assert_eq!(sizes.b.into_text(), "1 MiB");
        let err = toml::from_str::<Sizes>("a = -1\nb = 1\n").expect_err("negative");
        assert!(err.to_string().contains("expected a whole number"), "{err}");
        assert!(toml::from_str::<Sizes>("a = 1.5\nb = 1\n").is_err());
        Ok(())
    }
}
