//! Rule files (`rule create --from-file`, `rule apply -f`) and where a rule's Pulsar token comes
//! from: ctl reads the token itself, because it must travel in the request and never sit in the
//! rule file.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use proto::types::RuleSpecInput;

use crate::client::read_token_file;

/// Where a rule's Pulsar token comes from. `what` names the flag or key, for errors.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    File { what: String, path: PathBuf },
    Env { what: String, var: String },
}

impl TokenSource {
    /// The source that `--token-file` / `--token-env` name (clap makes them exclusive).
    pub fn from_flags(file: Option<&PathBuf>, env: Option<&String>) -> Option<TokenSource> {
        match (file, env) {
            (Some(path), _) => Some(TokenSource::File {
                what: "--token-file".into(),
                path: path.clone(),
            }),
            (None, Some(var)) => Some(TokenSource::Env {
                what: "--token-env".into(),
                var: var.clone(),
            }),
            (None, None) => None,
        }
    }

    /// The token, trimmed. Errors name the flag/key and the path or variable, never the value.
    pub fn read(&self) -> anyhow::Result<String> {
        match self {
            TokenSource::File { what, path } => read_token_file(what, path),
            TokenSource::Env { what, var } => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                Ok(_) => bail!("{what} {var}: the environment variable is empty"),
                Err(std::env::VarError::NotPresent) => {
                    bail!("{what} {var}: the environment variable is not set")
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    bail!("{what} {var}: the environment variable is not valid UTF-8")
                }
            },
        }
    }
}

/// A `RULE.toml`: the rule's keys (as [`RuleSpecInput`], unknown keys refused by name), plus
/// `token_file` or `token_env`, which ctl resolves itself because the token must travel in the
/// request, never sit in the rule file. A relative `token_file` is relative to the rule file.
pub fn load_rule_file(path: &Path) -> anyhow::Result<(RuleSpecInput, Option<TokenSource>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read --from-file {}: {e}", path.display()))?;
    parse_rule_file(&text, path)
}

pub fn parse_rule_file(
    text: &str,
    path: &Path,
) -> anyhow::Result<(RuleSpecInput, Option<TokenSource>)> {
    let shown = path.display();
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        // toml's Display draws a multi-line snippet; the contract wants one line.
        let line = e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").lines().count().max(1))
            .map(|n| format!(" line {n}:"))
            .unwrap_or_default();
        anyhow!("{shown}:{line} {}", crate::client::one_line(e.message()))
    })?;
    // flatten + deny_unknown_fields don't mix in serde, so ctl's own keys are taken out first.
    let mut take_string = |key: &str| -> anyhow::Result<Option<String>> {
        match table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => bail!("{shown}: {key} must be a string, not {}", other.type_str()),
        }
    };
    let token_file = take_string("token_file")?;
    let token_env = take_string("token_env")?;
    if table.contains_key("token") {
        bail!("{shown}: token is not accepted in a rule file; give token_file or token_env");
    }
    // `max_bytes = 500000000` is a natural thing to write; the spec field takes the text form.
    if let Some(toml::Value::Integer(n)) = table.get("max_bytes") {
        let n = *n;
        table.insert("max_bytes".into(), toml::Value::String(n.to_string()));
    }
    // The path names the key: serde alone says "invalid type: string "5000", expected u64".
    let spec: RuleSpecInput =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let message = crate::client::one_line(e.inner().message());
            let key = e.path().to_string();
            // "unknown field `windw`" already names it.
            if key == "." || message.contains(&format!("`{key}`")) {
                anyhow!("{shown}: {message}")
            } else {
                anyhow!("{shown}: {key}: {message}")
            }
        })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let token = match (token_file, token_env) {
        (Some(_), Some(_)) => bail!("{shown}: give token_file or token_env, not both"),
        (Some(file), None) => {
            let file = PathBuf::from(file);
            Some(TokenSource::File {
                what: format!("token_file (from {shown})"),
                path: if file.is_relative() {
                    base.join(file)
                } else {
                    file
                },
            })
        }
        (None, Some(var)) => Some(TokenSource::Env {
            what: format!("token_env (from {shown})"),
            var,
        }),
        (None, None) => None,
    };
    Ok((spec, token))
}
