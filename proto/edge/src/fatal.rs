//! How a daemon fails: the error printed once, on stderr, as one line (`error: what: cause`),
//! and exit code 1. One line because logs are read line by line (journald, `grep`, the tests);
//! no backtrace because the chain already says what went wrong and where.

use std::process::ExitCode;

/// The exit code of `main` for the outcome of the daemon's run.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// `error: ` and the context chain joined with ": "; line breaks inside a message become spaces.
pub fn one_line(err: &anyhow::Error) -> String {
    let chain = format!("{err:#}");
    let flat: Vec<&str> = chain
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    format!("error: {}", flat.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_on_one_line() {
        let err = anyhow::anyhow!("no such file")
            .context("reading config /etc/x.toml")
            .context("configuration");
        assert_eq!(
            one_line(&err),
            "error: configuration: reading config /etc/x.toml: no such file"
        );
        let err = anyhow::anyhow!("expected `=`\n  at line 2\n").context("config /etc/x.toml");
        assert_eq!(
            one_line(&err),
            "error: config /etc/x.toml: expected `=` at line 2"
        );
    }
}
