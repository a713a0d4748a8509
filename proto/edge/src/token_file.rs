//! Reading a control-plane token file (`auth_token_file` and its siblings): its content, trimmed,
//! must be one printable-ASCII token. What the token does on the wire is `proto::auth`.

use std::path::{Path, PathBuf};

use proto::auth::{validate_token, TokenError};
use proto::types::Secret;

/// Names the key and the path, never the content.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{key} {}: cannot read it", path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: {reason}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: TokenError,
    },
}

/// The token in the file that config key `key` names. Warns (log) when others can read it.
pub fn load(key: &'static str, path: &Path) -> Result<Secret, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Unreadable {
        key,
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    validate_token(token).map_err(|reason| TokenFileError::Invalid {
        key,
        path: path.to_path_buf(),
        reason,
    })?;
    if let Some(warning) = mode_warning(key, path) {
        tracing::warn!("{warning}");
    }
    Ok(Secret::new(token))
}

/// A warning when the token file named by `key` can be read by its group or by other users
/// (whoever reads it controls the daemons); `None` when it is owner-only or cannot be checked.
pub fn mode_warning(key: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (false, false) => return None,
        (true, false) => "its group",
        (false, true) => "other users",
        (true, true) => "its group and other users",
    };
    Some(format!(
        "{key} {} is readable by {who} (mode {mode:04o}); whoever can read it controls the \
         daemons: make it owner-only (chmod 0600) and owned by the user the daemon runs as",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn errors_name_key_and_path_not_content() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n")?;
        let err = load("auth_token_file", &empty).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("auth_token_file {}: the token is empty", empty.display())
        );
        let two = dir.path().join("two-lines");
        std::fs::write(&two, "first-secret\nsecond-secret\n")?;
        let err = load("auth_token_file", &two).expect_err("two lines");
        assert_eq!(
            err.to_string(),
            format!(
                "auth_token_file {}: the file holds more than one line; it must hold the token alone",
                two.display()
            )
        );
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words-secret\n")?;
        let err = load("uploader_token_file", &spaced).expect_err("not header-safe");
        assert!(err.to_string().starts_with("uploader_token_file "), "{err}");
        assert!(!format!("{err:?}").contains("words-secret"), "{err:?}");
        let missing = dir.path().join("missing");
        let err = load("auth_token_file", &missing).expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!("auth_token_file {}: cannot read it", missing.display())
        );
        assert!(err.source().is_some(), "the io error is its cause");

        let good = dir.path().join("good");
        std::fs::write(&good, "  ctl-token-1 \n")?;
        assert_eq!(load("auth_token_file", &good)?.expose(), "ctl-token-1");
        Ok(())
    }

    #[test]
    fn a_file_others_can_read_is_named_with_its_mode() -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("control.token");
        std::fs::write(&path, "s3cret-token-in-file\n")?;
        for (mode, who) in [
            (0o644, "its group and other users"),
            (0o640, "its group"),
            (0o604, "other users"),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            let warning = mode_warning("auth_token_file", &path).expect("warned");
            assert!(warning.starts_with("auth_token_file "), "{warning}");
            assert!(warning.contains(&format!("readable by {who} (mode {mode:04o})")));
            assert!(!warning.contains("s3cret"), "{warning}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            assert_eq!(mode_warning("auth_token_file", &path), None);
        }
        Ok(())
    }
}
