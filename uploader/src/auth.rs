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
        ControlToken::load_split(path, None)
    }

    /// `auth_token_file` guards this uploader's own service and is sent to the ingester, unless
    /// `ingester_token_file` names another token to send (an ingester with a separate
    /// `uploader_token_file`).
    pub fn load_split(
        auth_token_file: Option<&Path>,
        ingester_token_file: Option<&Path>,
    ) -> anyhow::Result<ControlToken> {
        let own = auth_token_file
            .map(|path| load_token_named("auth_token_file", path).map(|t| (t, path)))
            .transpose()?;
        let to_ingester = ingester_token_file
            .map(|path| load_token_named("ingester_token_file", path).map(|t| (t, path)))
            .transpose()?;
        let send = match to_ingester.as_ref().or(own.as_ref()) {
            Some((token, path)) => SendToken::new(Some(token))
                .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display()))?,
            None => SendToken::default(),
        };
        Ok(ControlToken {
            send,
            require: RequireToken::new(own.map(|(token, _)| token)),
        })
    }
}

/// The file's content, trimmed; it must be one printable-ASCII token.
pub fn load_token(path: &Path) -> anyhow::Result<Secret> {
    load_token_named("auth_token_file", path)
}

/// Warns (log) when the file is readable by more than its owner.
fn load_token_named(key: &'static str, path: &Path) -> anyhow::Result<Secret> {
    Ok(edge::token_file::load(key, path)?)
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

        // A separate token for the ingester: sent there, while the own service keeps the first.
        let other = dir.path().join("other");
        std::fs::write(&other, "uploader-token-2\n")?;
        let split = ControlToken::load_split(Some(&good), Some(&other))?;
        assert!(split.require.allows(Some(b"Bearer ctl-token-1")));
        assert!(!split.require.allows(Some(b"Bearer uploader-token-2")));
        let only_ingester = ControlToken::load_split(None, Some(&other))?;
        assert!(!only_ingester.require.is_enabled());
        let err = ControlToken::load_split(None, Some(&missing))
            .expect_err("missing")
            .to_string();
        assert!(err.starts_with("ingester_token_file "), "{err}");
        Ok(())
    }
}
