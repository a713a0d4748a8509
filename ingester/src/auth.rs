//! The control-plane tokens from `auth_token_file` and `uploader_token_file` (read by
//! `edge::token_file`). The check itself is `proto::auth::RequireToken`, a tonic interceptor
//! layered over every service.

use std::path::Path;

use proto::auth::RequireToken;
use proto::types::Secret;

/// The server-side check: open when no file is configured. Errors name the key and the path,
/// never the content.
pub fn require_token(path: Option<&Path>) -> anyhow::Result<RequireToken> {
    match path {
        None => Ok(RequireToken::default()),
        Some(path) => Ok(RequireToken::new(Some(load_token(path)?))),
    }
}

/// The file's content, trimmed; it must be one printable-ASCII token. Warns (log) when the
/// file is readable by more than its owner.
pub fn load_token(path: &Path) -> anyhow::Result<Secret> {
    load_token_named("auth_token_file", path)
}

/// Which token each call needs: `auth_token_file`'s, and `uploader_token_file`'s for the
/// segment hand-off when that is set ([`crate::scoped_auth`]).
pub fn token_scopes(
    auth_token_file: Option<&Path>,
    uploader_token_file: Option<&Path>,
) -> anyhow::Result<crate::scoped_auth::TokenScopes> {
    let operator = require_token(auth_token_file)?;
    let uploader = uploader_token_file
        .map(|path| load_token_named("uploader_token_file", path))
        .transpose()?
        .map(|token| RequireToken::new(Some(token)));
    Ok(crate::scoped_auth::TokenScopes::new(operator, uploader))
}

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
        std::fs::write(&empty, " \n")?;
        let err = load_token(&empty).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("auth_token_file {}: the token is empty", empty.display())
        );
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words-secret\n")?;
        let err = load_token(&spaced)
            .expect_err("not header-safe")
            .to_string();
        assert!(err.starts_with("auth_token_file "), "{err}");
        assert!(!err.contains("words-secret"), "{err}");
        let missing = dir.path().join("missing");
        let err = load_token(&missing).expect_err("missing").to_string();
        assert!(
            err.contains("auth_token_file") && err.contains("missing"),
            "{err}"
        );

        let good = dir.path().join("good");
        std::fs::write(&good, "ctl-token-1\n")?;
        assert_eq!(load_token(&good)?.expose(), "ctl-token-1");
        assert!(require_token(Some(&good))?.is_enabled());
        assert!(!require_token(None)?.is_enabled());
        Ok(())
    }
}
