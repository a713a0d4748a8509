//! The files in `deploy/`. The Kubernetes manifests are valid API objects (`kubernetes-validate`,
//! installed into `.venv` by scripts/setup-test-services.sh). The Prometheus alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`, which prove that "nothing stored for 15 minutes"
//! fires when it should and not otherwise), and the Grafana dashboard is a dashboard whose
//! queries parse. That they name only exposed metrics is checked against real scrapes in
//! `metrics.rs`.
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it); `PROMTOOL` names
//! another one. Without it these tests fail under CI (`CI=true`) and say why and pass elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The promtool to run, or `None` (outside CI) after saying why the check is skipped.
fn promtool(what: &str) -> anyhow::Result<Option<PathBuf>> {
    let candidate = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    match Command::new(&candidate).arg("--version").output() {
        Ok(out) if out.status.success() => return Ok(Some(candidate)),
        Ok(out) => println!(
            "{} --version failed: {}",
            candidate.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => println!("cannot run {}: {err}", candidate.display()),
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!(
            "promtool is missing under CI=true; .ci/run installs it (apt-get install prometheus)"
        );
    }
    println!("SKIPPED {what}: no promtool (apt-get install prometheus, or set PROMTOOL)");
    Ok(None)
}

/// Runs promtool with `args` in `dir`; its output, or an error with it.
fn run_promtool(promtool: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running promtool {args:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {args:?} failed in {}:\n{text}", dir.display());
    }
    Ok(text)
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() -> anyhow::Result<()> {
    let Some(promtool) = promtool("promtool check/test rules")? else {
        return Ok(());
    };
    let dir = repo_root().join("deploy/prometheus");
    let mut rule_files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yml") && !name.ends_with(".test.yml") {
            rule_files.push(name);
        }
    }
    rule_files.sort();
    assert!(!rule_files.is_empty(), "no rule files in {}", dir.display());
    let mut args = vec!["check", "rules"];
    args.extend(rule_files.iter().map(String::as_str));
    let checked = run_promtool(&promtool, &dir, &args)?;
    println!("{checked}");
    assert!(checked.contains("SUCCESS"), "{checked}");

    let tested = run_promtool(
        &promtool,
        &dir,
        &["test", "rules", "tdmq-backup-alerts.test.yml"],
    )?;
    println!("{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");
    Ok(())
}

fn dashboard() -> anyhow::Result<Value> {
    let path = repo_root().join("deploy/grafana/tdmq-backup-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every panel's queries, rows' panels included.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or_default().to_string();
                out.push((title, expr.to_string()));
            }
        }
    }
    out
}

#[test]
fn the_dashboard_picks_its_data_source_and_rules_and_its_queries_parse() -> anyhow::Result<()> {
    let dashboard = dashboard()?;
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or_default();
    assert!(schema >= 36, "schemaVersion {schema}");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("no templating variables")?;
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    let datasource = variable("datasource").context("no datasource variable")?;
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let rule = variable("rule").context("no rule variable")?;
    assert_eq!(rule["type"], "query");
    assert!(
        rule["definition"]
            .as_str()
            .is_some_and(|d| d.contains("tdmq_backup_")),
        "{rule}"
    );

    // Every panel and query reads the chosen data source, never a fixed one.
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut graphs = 0;
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{target}");
        }
    }
    let queries = queries(&dashboard);
    assert!(graphs >= 10 && queries.len() >= graphs, "{graphs} panels");
    let per_rule = queries
        .iter()
        .filter(|(_, q)| q.contains("rule=~\"$rule\""))
        .count();
    assert!(
        per_rule >= 10,
        "only {per_rule} queries follow the rule selector"
    );

    // The queries parse: promtool checks them as recording rules, with Grafana's variables
    // replaced as Grafana would.
    let Some(promtool) = promtool("parsing the dashboard's queries")? else {
        return Ok(());
    };
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$rule", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("dashboard.yml"), rules)?;
    let checked = run_promtool(&promtool, dir.path(), &["check", "rules", "dashboard.yml"])?;
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{checked}"
    );
    Ok(())
}

/// The Kubernetes manifests are valid objects of the API they name, checked strictly (no
/// unknown fields, so a misspelt probe or mount is caught) by `kubernetes-validate` against the
/// oldest and the newest Kubernetes versions it knows that the manifests support. The daemons'
/// configs inside the ConfigMap are loaded by their real loaders in the ingester's and the
/// uploader's `example_configs` tests.
#[test]
fn the_kubernetes_manifests_are_valid_for_the_api_they_name() -> anyhow::Result<()> {
    let root = repo_root();
    let validator = root.join(".venv/bin/kubernetes-validate");
    let manifests: Vec<PathBuf> = std::fs::read_dir(root.join("deploy/kubernetes"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    anyhow::ensure!(!manifests.is_empty(), "no manifests in deploy/kubernetes");
    for version in ["1.27.0", "1.33.0"] {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&manifests)
            .output()
            .with_context(|| {
                format!(
                    "running {} (scripts/setup-test-services.sh installs it)",
                    validator.display()
                )
            })?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("kubernetes-validate (Kubernetes {version}) failed:\n{text}");
        }
        // Every object checked: the StatefulSet, its ConfigMap and the Services.
        for kind in [
            "statefulset/tdmq-backup",
            "configmap/tdmq-backup-config",
            "service/tdmq-backup",
        ] {
            anyhow::ensure!(
                text.contains(&format!("passed for resource {kind}")),
                "{kind} not validated:\n{text}"
            );
        }
    }
    Ok(())
}
