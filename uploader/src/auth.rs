//! The control-plane token from `auth_token_file`: the uploader sends it on every call to the
//! ingester ([`proto::auth::SendToken`]) and requires it on calls to its own status service
//! ([`proto::auth::RequireToken`]), so one shared file serves ctl, uploader and ingester.

use std::path::Path;

use proto::auth::{RequireToken, SendToken};
use proto::types::Secret;

/// Both halves; open (no header sent, none required) when no file is configured.
#[derive(Debug, Clone, Default)]
pub struct ControlToken {
    pub send: SendToken,
    pub require: RequireToken,
}

impl ControlToken {
    /// Errors name the key and the path, never the content.
    pub fn load(path: Option<&Path>) -> anyhow::Result<ControlToken> {
        let Some(path) = path else {
            return Ok(ControlToken::default());
        };
        let token = load_token(path)?;
        let send = SendToken::new(Some(&token))
            .map_err(|e| anyhow::anyhow!("auth_token_file {}: {e}", path.display()))?;
        Ok(ControlToken {
            send,
            require: RequireToken::new(Some(token)),
        })
    }
}

/// The file's content, trimmed; it must be one printable-ASCII token. Warns (log) when the
/// file is readable by more than its owner.
pub fn load_token(path: &Path) -> anyhow::Result<Secret> {
    let token = proto::auth::load_token_file(path).map_err(anyhow::Error::msg)?;
    if let Some(warning) = proto::auth::token_file_mode_warning("auth_token_file", path) {
        tracing::warn!("{warning}");
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_errors_name_key_and_path_not_content() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n")?;
        let err = ControlToken::load(Some(&empty)).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("auth_token_file {}: the token is empty", empty.display())
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "tok\u{e9}n-secret\n")?;
        let err = ControlToken::load(Some(&bad))
            .expect_err("not ascii")
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        let missing = dir.path().join("missing");
        let err = ControlToken::load(Some(&missing))
            .expect_err("missing")
            .to_string();
        assert!(err.starts_with("auth_token_file "), "{err}");

        let good = dir.path().join("good");
        std::fs::write(&good, "  ctl-token-1 \n")?;
        assert_eq!(load_token(&good)?.expose(), "ctl-token-1");
        assert!(ControlToken::load(Some(&good))?.require.is_enabled());
        assert!(!ControlToken::load(None)?.require.is_enabled());
        Ok(())
    }
}
