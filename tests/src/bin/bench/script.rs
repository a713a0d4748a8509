//! The bench's Python helpers (`scripts/bench/*.py`): run with the venv's Python
//! (`BENCH_PYTHON` overrides; `scripts/bench.sh` installs what they import), each printing one
//! JSON line.

use std::process::Stdio;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Runs `script` with `args` and parses the JSON line it prints.
pub async fn run_json<T: DeserializeOwned>(script: &str, args: &[&str]) -> anyhow::Result<T> {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into());
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {python} {script}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{script} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("{script} printed {line:?}"))
}
