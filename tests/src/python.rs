//! The test venv's Python, for checks by independent readers (python-zstandard reads the zstd
//! objects). `scripts/setup-test-services.sh` installs what they import into `.venv/`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Overrides the interpreter (default: the workspace's `.venv/bin/python`).
pub const PYTHON_ENV: &str = "TDMQ_TEST_PYTHON";

/// The interpreter to run checks with.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(PYTHON_ENV) {
        return Ok(PathBuf::from(path));
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().unwrap_or(manifest_dir);
    let python = root.join(".venv").join("bin").join("python");
    if !python.exists() {
        bail!(
            "{} not found: run scripts/setup-test-services.sh or set {PYTHON_ENV}",
            python.display()
        );
    }
    Ok(python)
}

/// Runs `script` with `args` and returns what it printed on stdout; an error (with its stderr)
/// when it fails.
pub async fn run_script(script: &str, args: &[&str]) -> anyhow::Result<String> {
    let python = venv_python()?;
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "python exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("python printed something not UTF-8")
}
