//! `rule create|list|show|edit|delete|pause|resume|flush|skip`.

use std::future::Future;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use proto::types::RuleSpecInput;
use proto::v1::{
    CreateRuleRequest, DeleteRuleRequest, EditRuleRequest, ListRulesRequest, Rule, RuleName,
    SkipEntryRequest, StatusRequest,
};
use serde_json::json;

use super::Ctx;
use crate::cli::{
    ApplyArgs, CreateArgs, DeleteArgs, EditArgs, OutputFormat, RuleCommand, SpecFlags,
};
use crate::client::{self, read_token_file, CallResult as _};
use crate::output::{rule_json, rule_state, rule_text, rule_toml, rules_json, rules_text, Report};
use crate::progress::Progress;

pub async fn run(ctx: &Ctx, cmd: RuleCommand) -> anyhow::Result<Report> {
    match cmd {
        RuleCommand::Create(args) => create(ctx, args).await,
        RuleCommand::Apply(args) => apply(ctx, args).await,
        RuleCommand::List => list(ctx).await,
        RuleCommand::Show { name } => {
            let mut ingester = ctx.ingester().await?;
            let reply = ingester
                .get_rule(RuleName { name })
                .await
                .on(&ctx.ingester)?;
            if ctx.format == OutputFormat::Toml {
                let rule = reply
                    .rule
                    .ok_or_else(|| anyhow!("the ingester's reply holds no rule"))?;
                return Ok(Report {
                    json: json!(null),
                    text: rule_toml(&rule),
                });
            }
            rule_report(&mut ingester, reply.rule, None).await
        }
        RuleCommand::Edit(args) => edit(ctx, args).await,
        RuleCommand::Delete(args) => delete(ctx, args).await,
        RuleCommand::Pause { name } => {
            let mut ingester = ctx.ingester().await?;
            let reply = ingester
                .pause_rule(RuleName { name })
                .await
                .on(&ctx.ingester)?;
            rule_report(&mut ingester, reply.rule, Some("paused")).await
        }
        RuleCommand::Resume { name } => {
            let mut ingester = ctx.ingester().await?;
            let reply = ingester
                .resume_rule(RuleName { name })
                .await
                .on(&ctx.ingester)?;
            rule_report(&mut ingester, reply.rule, Some("resumed")).await
        }
        RuleCommand::Flush {
            name,
            wait,
            wait_timeout,
        } => {
            let mut ingester = ctx.ingester().await?;
            let reply = ingester
                .flush_rule(RuleName { name: name.clone() })
                .await
                .on(&ctx.ingester)?;
            let mut text = if reply.sealed {
                format!("sealed segment {} of rule {name}", reply.segment_no)
            } else {
                format!("nothing to seal: the open segment of rule {name} is empty")
            };
            if wait && reply.sealed {
                wait_acknowledged(ctx, &mut ingester, &name, reply.segment_no, wait_timeout)
                    .await?;
                text.push_str("; stored and acknowledged");
            }
            let mut json = json!({ "sealed": reply.sealed, "segment_no": reply.segment_no });
            if wait {
                json["acknowledged"] = json!(reply.sealed);
            }
            Ok(Report { json, text })
        }
        RuleCommand::Skip { name, entry } => {
            let mut ingester = ctx.ingester().await?;
            let reply = ingester
                .skip_entry(SkipEntryRequest {
                    name: name.clone(),
                    entry: entry.clone(),
                })
                .await
                .on(&ctx.ingester)?;
            Ok(Report {
                json: json!({ "rule": name, "entry": entry, "skipped": true, "message": reply.message }),
                text: reply.message,
            })
        }
    }
}

/// A rule and its live state, as `status` names it.
async fn rule_report(
    ingester: &mut client::Ingester,
    rule: Option<Rule>,
    done: Option<&str>,
) -> anyhow::Result<Report> {
    // The proto makes every message field optional; a reply without its rule is a daemon bug.
    let rule = rule.ok_or_else(|| anyhow!("the ingester's reply holds no rule"))?;
    if matches!(done, Some("created" | "updated")) {
        // On stderr: scripts reading stdout (or `-o json`) see only the rule.
        for note in console_notes(&rule) {
            eprintln!("note: {note}");
        }
    }
    let states = live_states(ingester, Some(rule.name.clone())).await;
    let state = rule_state(&rule, &states);
    let mut text = rule_text(&rule, &state);
    if let Some(done) = done {
        text = format!("rule {} {done}\n{text}", rule.name);
    }
    Ok(Report {
        json: rule_json(&rule, &state),
        text,
    })
}

/// Where the rule goes beyond the TDMQ console's own limits, and why that may be fine.
fn console_notes(rule: &Rule) -> Vec<String> {
    RuleSpecInput::from(rule)
        .validate()
        .map(|config| config.beyond_console_limits())
        .unwrap_or_default()
}

/// The rules' live states from `status`; empty if the ingester could not say (the rule was just
/// deleted, or status failed): then a rule's state is only what the rule itself knows.
async fn live_states(
    ingester: &mut client::Ingester,
    name: Option<String>,
) -> Vec<proto::v1::RuleStatus> {
    ingester
        .status(StatusRequest { name })
        .await
        .map(|r| r.into_inner().rules)
        .unwrap_or_default()
}

async fn create(ctx: &Ctx, args: CreateArgs) -> anyhow::Result<Report> {
    let (spec, token) = create_spec(args)?;
    if token.is_some() {
        client::warn_if_in_clear("the rule's Pulsar token", &ctx.ingester);
    }
    let mut ingester = ctx.ingester().await?;
    let reply = ingester
        .create_rule(CreateRuleRequest {
            spec: Some(spec.into_spec(token)),
        })
        .await
        .on(&ctx.ingester)?;
    rule_report(&mut ingester, reply.rule, Some("created")).await
}

/// The rule `rule create` sends: the file (if any), overlaid by the flags, validated here so a
/// bad rule is refused before any connection, naming the field.
pub fn create_spec(args: CreateArgs) -> anyhow::Result<(RuleSpecInput, Option<String>)> {
    let (file_spec, file_token) = match &args.from_file {
        Some(path) => load_rule_file(path)?,
        None => (RuleSpecInput::default(), None),
    };
    let (mut flag_spec, flag_token) = flags_spec(&args.spec);
    flag_spec.name = args.name;
    let spec = file_spec.overlay(flag_spec);
    spec.validate().map_err(|e| anyhow!("{e}"))?;
    let token = match flag_token.or(file_token) {
        Some(source) => Some(source.read()?),
        None => None,
    };
    Ok((spec, token))
}

async fn apply(ctx: &Ctx, args: ApplyArgs) -> anyhow::Result<Report> {
    let (file_spec, token_source) = load_rule_file(&args.file)?;
    let name = file_spec
        .name
        .clone()
        .ok_or_else(|| anyhow!("{}: name is required", args.file.display()))?;
    let mut ingester = ctx.ingester().await?;
    let existing = match ingester.get_rule(RuleName { name: name.clone() }).await {
        Ok(reply) => reply.into_inner().rule,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => return Err(ctx.ingester.call_error(status)),
    };
    let Some(existing) = existing else {
        file_spec.validate().map_err(|e| anyhow!("{e}"))?;
        let token = token_source.map(|t| t.read()).transpose()?;
        if token.is_some() {
            client::warn_if_in_clear("the rule's Pulsar token", &ctx.ingester);
        }
        let reply = ingester
            .create_rule(CreateRuleRequest {
                spec: Some(file_spec.into_spec(token)),
            })
            .await
            .on(&ctx.ingester)?;
        return rule_report(&mut ingester, reply.rule, Some("created")).await;
    };
    let patch = apply_patch(&existing, file_spec)?;
    let token = token_source.map(|t| t.read()).transpose()?;
    let unchanged = RuleSpecInput {
        name: Some(name),
        ..RuleSpecInput::default()
    };
    if patch == unchanged && token.is_none() {
        return rule_report(&mut ingester, Some(existing), Some("unchanged")).await;
    }
    if token.is_some() {
        client::warn_if_in_clear("the rule's Pulsar token", &ctx.ingester);
    }
    let reply = ingester
        .edit_rule(EditRuleRequest {
            spec: Some(patch.into_spec(token)),
            unsubscribe: args.unsubscribe,
        })
        .await
        .on(&ctx.ingester)?;
    rule_report(&mut ingester, reply.rule, Some("updated")).await
}

/// The edit that makes `existing` what the rule file says: the file over the stored rule,
/// validated (errors name the field), compared in canonical form so `5m` and `300s` are equal.
fn apply_patch(existing: &Rule, file: RuleSpecInput) -> anyhow::Result<RuleSpecInput> {
    let stored = RuleSpecInput::from(existing);
    let wanted = stored
        .clone()
        .overlay(file)
        .validate()
        .map_err(|e| anyhow!("{e}"))?;
    let canonical = RuleSpecInput::from(&wanted.to_rule(proto::types::rule::RuleState::default()));
    Ok(canonical.changes_from(&stored))
}

async fn edit(ctx: &Ctx, args: EditArgs) -> anyhow::Result<Report> {
    let unsubscribe = args.unsubscribe;
    let (spec, token) = edit_spec(args)?;
    if token.is_some() {
        client::warn_if_in_clear("the rule's Pulsar token", &ctx.ingester);
    }
    let mut ingester = ctx.ingester().await?;
    let reply = ingester
        .edit_rule(EditRuleRequest {
            spec: Some(spec.into_spec(token)),
            unsubscribe,
        })
        .await
        .on(&ctx.ingester)?;
    let mut report = rule_report(&mut ingester, reply.rule, Some("updated")).await?;
    // Said only when there is something to say (a subscription left behind or removed).
    if !reply.notice.is_empty() {
        report.text = format!("{}\nnote: {}", report.text, reply.notice);
        if let Some(object) = report.json.as_object_mut() {
            object.insert("notice".into(), json!(reply.notice));
        }
    }
    Ok(report)
}

/// The change `rule edit` sends. Only fields given are set; the ingester validates the merged
/// rule (ctl can't: it doesn't have the rest of it).
pub fn edit_spec(args: EditArgs) -> anyhow::Result<(RuleSpecInput, Option<String>)> {
    let (file_spec, file_token) = match &args.from_file {
        Some(path) => load_rule_file(path)?,
        None => (RuleSpecInput::default(), None),
    };
    if let Some(file_name) = &file_spec.name {
        if file_name != &args.name {
            bail!(
                "name {file_name:?} in the rule file does not match the rule {:?}; names can't be changed",
                args.name
            );
        }
    }
    let (flag_spec, flag_token) = flags_spec(&args.spec);
    let mut spec = file_spec.overlay(flag_spec);
    let token_source = flag_token.or(file_token);
    if spec
        == (RuleSpecInput {
            name: spec.name.clone(),
            ..RuleSpecInput::default()
        })
        && token_source.is_none()
    {
        bail!(
            "nothing to change: give at least one rule flag (see `tdmq-backup rule edit --help`)"
        );
    }
    spec.name = Some(args.name);
    let token = match token_source {
        Some(source) => Some(source.read()?),
        None => None,
    };
    Ok((spec, token))
}

/// Where a rule's Pulsar token comes from. `what` names the flag or key, for errors.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    File { what: String, path: PathBuf },
    Env { what: String, var: String },
}

impl TokenSource {
    /// The token, trimmed. Errors name the flag/key and the path or variable, never the value.
    fn read(&self) -> anyhow::Result<String> {
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

fn flags_spec(f: &SpecFlags) -> (RuleSpecInput, Option<TokenSource>) {
    let spec = RuleSpecInput {
        name: None,
        service_url: f.service_url.clone(),
        topic: f.topic.clone(),
        subscription: f.subscription.clone(),
        subscription_type: f.subscription_type.clone(),
        bucket: f.bucket.clone(),
        region: f.region.clone(),
        prefix: f.prefix.clone(),
        window: f.window.clone(),
        max_messages: f.max_messages,
        max_bytes: f.max_bytes.clone(),
        start: f.start.clone(),
        cluster: f.cluster.clone(),
        role: f.role.clone(),
        endpoint: f.endpoint.clone(),
        compression: f.compression.clone(),
    };
    let token = match (&f.token_file, &f.token_env) {
        (Some(path), _) => Some(TokenSource::File {
            what: "--token-file".into(),
            path: path.clone(),
        }),
        (None, Some(var)) => Some(TokenSource::Env {
            what: "--token-env".into(),
            var: var.clone(),
        }),
        (None, None) => None,
    };
    (spec, token)
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

async fn list(ctx: &Ctx) -> anyhow::Result<Report> {
    let mut ingester = ctx.ingester().await?;
    let reply = ingester
        .list_rules(ListRulesRequest {})
        .await
        .on(&ctx.ingester)?;
    let states = live_states(&mut ingester, None).await;
    Ok(Report {
        json: rules_json(&reply.rules, &states),
        text: rules_text(&reply.rules, &states, &ctx.layout),
    })
}

/// Polls the rule's segments until `segment_no` is gone: stored, acknowledged and freed (an
/// older segment still waiting holds it back, as acknowledgements follow segment order).
async fn wait_acknowledged(
    ctx: &Ctx,
    ingester: &mut client::Ingester,
    name: &str,
    segment_no: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = Progress::start(&format!("segment {segment_no} of {name}: sealing"));
    loop {
        let segments = ingester
            .list_segments(RuleName { name: name.into() })
            .await
            .on(&ctx.ingester)?
            .segments;
        let Some(segment) = segments.iter().find(|s| s.segment_no == segment_no) else {
            progress.finish();
            return Ok(());
        };
        let state = segment.state.clone();
        progress.update(&format!("segment {segment_no} of {name}: {state}"));
        if tokio::time::Instant::now() >= deadline {
            progress.finish();
            bail!(
                "segment {segment_no} of rule {name} is still {state} after {}; it keeps going: \
                 see `tdmq-backup segments {name}` and `tdmq-backup status {name}`",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Runs the drain `call`, showing on stderr what is left until it answers.
async fn with_drain_progress<T>(ctx: &Ctx, name: &str, call: impl Future<Output = T>) -> T {
    let Ok(mut watcher) = ctx.ingester().await else {
        return call.await;
    };
    let mut progress = Progress::start(&format!("draining {name}: sealing the open segment"));
    tokio::pin!(call);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            out = &mut call => {
                progress.finish();
                return out;
            }
            _ = tick.tick() => {
                let listed = watcher.list_segments(RuleName { name: name.into() }).await;
                if let Ok(reply) = listed {
                    progress.update(&drain_message(name, &reply.into_inner().segments));
                }
            }
        }
    }
}

/// `draining orders: 3 segments left (1 sealing, 2 stored)`.
fn drain_message(name: &str, segments: &[proto::v1::SegmentInfo]) -> String {
    if segments.is_empty() {
        return format!("draining {name}: nothing left, deleting");
    }
    let mut states: Vec<(&str, usize)> = Vec::new();
    for s in segments {
        match states.iter_mut().find(|(state, _)| *state == s.state) {
            Some((_, n)) => *n += 1,
            None => states.push((&s.state, 1)),
        }
    }
    let by_state: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let plural = if segments.len() == 1 { "" } else { "s" };
    format!(
        "draining {name}: {} segment{plural} left ({})",
        segments.len(),
        by_state.join(", ")
    )
}

/// The ingester's drain timeout when `--drain-timeout` is not given.
const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<Report> {
    // The ingester answers a drain when it is done: up to its drain timeout (300 s by default).
    let drain_wait = match (args.drain, args.drain_timeout) {
        (false, _) => std::time::Duration::ZERO,
        (true, Some(timeout)) => timeout,
        (true, None) => DEFAULT_DRAIN_TIMEOUT,
    };
    let mut ingester = ctx.ingester_waiting(drain_wait).await?;
    if args.discard && !args.yes {
        let segments = ingester
            .list_segments(RuleName {
                name: args.name.clone(),
            })
            .await
            .on(&ctx.ingester)?
            .segments;
        let unstored = segments.iter().filter(|s| s.state != "stored").count();
        if unstored > 0 {
            confirm_discard(&args.name, unstored)?;
        }
    }
    let call = ingester.delete_rule(DeleteRuleRequest {
        name: args.name.clone(),
        drain: args.drain,
        discard: args.discard,
        drain_timeout_secs: args.drain_timeout.map(|d| d.as_secs().max(1)).unwrap_or(0),
        unsubscribe: args.unsubscribe,
    });
    let reply = if args.drain {
        with_drain_progress(ctx, &args.name, call).await
    } else {
        call.await
    }
    .on(&ctx.ingester)?;
    let mut text = format!("deleted rule {}", args.name);
    if reply.segments_discarded > 0 {
        text.push_str(&format!(
            "; discarded {} unstored segment(s) (their messages stay unacknowledged on Pulsar)",
            reply.segments_discarded
        ));
    }
    if !reply.notice.is_empty() {
        let label = if reply.unsubscribed { "" } else { "note: " };
        text.push_str(&format!("\n{label}{}", reply.notice));
    }
    Ok(Report {
        json: json!({
            "deleted": args.name,
            "segments_discarded": reply.segments_discarded,
            "unsubscribed": reply.unsubscribed,
            "notice": reply.notice,
        }),
        text,
    })
}

/// Asks on the terminal; without one, refuses (a script must say --yes explicitly).
fn confirm_discard(name: &str, unstored: usize) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!(
            "--discard would drop {unstored} unstored segment(s) of rule {name}; \
             stdin is not a terminal, so pass --yes to confirm"
        );
    }
    // The question goes to stderr: stdout carries only the command's result.
    let mut stderr = std::io::stderr();
    write!(
        stderr,
        "delete rule {name} and discard {unstored} unstored segments? [y/N] "
    )?;
    stderr.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => bail!("rule {name} not deleted"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command, OutputFormat};

    const BASE: [&str; 13] = [
        "tdmq-backup",
        "rule",
        "create",
        "orders",
        "--service-url",
        "pulsar://10.0.0.5:6650",
        "--topic",
        "orders",
        "--subscription",
        "backup",
        "--bucket",
        "backup-1250000000",
        "--region",
    ];

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args: Vec<&str> = BASE.to_vec();
        args.push("ap-guangzhou");
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    }

    fn create_args(cli: Cli) -> CreateArgs {
        match cli.command {
            Command::Rule(RuleCommand::Create(args)) => args,
            other => panic!("not rule create: {other:?}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn token_file_after_rule_create_is_the_pulsar_token() {
        let cli = parse(&["--token-file", "/run/pulsar.jwt"]).expect("parses");
        assert_eq!(cli.token_file, None);
        let args = create_args(cli);
        assert_eq!(args.spec.token_file, Some(PathBuf::from("/run/pulsar.jwt")));
    }

    #[test]
    fn token_file_before_the_command_is_the_control_plane_token() {
        let cli = Cli::try_parse_from(["tdmq-backup", "--token-file", "/etc/ctl.tok", "status"])
            .expect("parses");
        assert_eq!(cli.token_file, Some(PathBuf::from("/etc/ctl.tok")));
        assert!(matches!(
            cli.command,
            Command::Status {
                name: None,
                watch: None
            }
        ));

        // Both at once: each reaches its own.
        let mut args = vec!["tdmq-backup", "--token-file", "/etc/ctl.tok"];
        args.extend_from_slice(&BASE[1..]);
        args.extend_from_slice(&["ap-guangzhou", "--token-file", "/run/pulsar.jwt"]);
        let cli = Cli::try_parse_from(args).expect("parses");
        assert_eq!(cli.token_file, Some(PathBuf::from("/etc/ctl.tok")));
        assert_eq!(
            create_args(cli).spec.token_file,
            Some(PathBuf::from("/run/pulsar.jwt"))
        );

        // The control-plane flag is not taken after `status`.
        assert!(Cli::try_parse_from(["tdmq-backup", "status", "--token-file", "x"]).is_err());
    }

    #[test]
    fn token_file_and_token_env_conflict() {
        let err =
            parse(&["--token-file", "/a", "--token-env", "PULSAR_TOKEN"]).expect_err("conflict");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn globals_and_defaults() {
        let cli = Cli::try_parse_from(["tdmq-backup", "rule", "list"]).expect("parses");
        // Defaults unless the environment overrides them (CI may set these).
        if std::env::var_os("TDMQ_BACKUP_INGESTER").is_none() {
            assert_eq!(cli.ingester, "http://127.0.0.1:7601");
        }
        if std::env::var_os("TDMQ_BACKUP_UPLOADER").is_none() {
            assert_eq!(cli.uploader, "http://127.0.0.1:7602");
        }
        assert_eq!(cli.output, OutputFormat::Table);
        let cli = Cli::try_parse_from([
            "tdmq-backup",
            "--ingester",
            "http://h:1",
            "--output",
            "json",
            "status",
            "orders",
        ])
        .expect("parses");
        assert_eq!(cli.ingester, "http://h:1");
        assert_eq!(cli.output, OutputFormat::Json);
        // --output also works after the command.
        let cli = Cli::try_parse_from(["tdmq-backup", "segments", "orders", "--output", "json"])
            .expect("parses");
        assert_eq!(cli.output, OutputFormat::Json);
        assert!(Cli::try_parse_from(["tdmq-backup", "--output", "yaml", "status"]).is_err());
    }

    #[test]
    fn sizes_and_durations_pass_through_as_typed() {
        let cli = parse(&[
            "--window",
            "30s",
            "--max-messages",
            "100",
            "--max-bytes",
            "64MiB",
            "--prefix",
            "logs/",
            "--start",
            "latest",
            "--subscription-type",
            "exclusive",
            "--compression",
            "none",
            "--endpoint",
            "http://127.0.0.1:9000",
            "--cluster",
            "c1",
            "--role",
            "r1",
        ])
        .expect("parses");
        let (spec, token) = create_spec(create_args(cli)).expect("valid");
        assert_eq!(token, None);
        let p = spec.into_spec(None);
        assert_eq!(p.name, "orders");
        assert_eq!(p.window.as_deref(), Some("30s"));
        assert_eq!(p.max_messages, Some(100));
        assert_eq!(p.max_bytes.as_deref(), Some("64MiB"));
        assert_eq!(p.prefix.as_deref(), Some("logs/"));
        assert_eq!(p.start.as_deref(), Some("latest"));
        assert_eq!(p.subscription_type.as_deref(), Some("exclusive"));
        assert_eq!(p.compression.as_deref(), Some("none"));
        assert_eq!(p.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(p.cluster.as_deref(), Some("c1"));
        assert_eq!(p.role.as_deref(), Some("r1"));
        // Topic goes as typed; the ingester completes it.
        assert_eq!(p.topic.as_deref(), Some("orders"));
        assert!(parse(&["--max-messages", "lots"]).is_err());
    }

    #[test]
    fn bad_prefix_is_refused_client_side_with_its_message() {
        let cli = parse(&["--prefix", "logs"]).expect("parses");
        let err = create_spec(create_args(cli)).expect_err("refused");
        assert_eq!(err.to_string(), r#"prefix "logs" must end with "/""#);
    }

    #[test]
    fn missing_required_field_is_named() {
        let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "orders"]).expect("parses");
        let err = create_spec(create_args(cli)).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "service_url, topic, subscription, bucket and region are required"
        );
        // No NAME and no --from-file: a usage error.
        assert!(Cli::try_parse_from(["tdmq-backup", "rule", "create"]).is_err());
    }

    #[test]
    fn token_sources_are_read_and_errors_never_show_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tok = dir.path().join("pulsar.jwt");
        std::fs::write(&tok, "  eyJ.secret \n").expect("write");
        let tok_s = tok.to_string_lossy().to_string();
        let cli = parse(&["--token-file", &tok_s]).expect("parses");
        let (_, token) = create_spec(create_args(cli)).expect("valid");
        assert_eq!(token.as_deref(), Some("eyJ.secret"));

        let empty = dir.path().join("empty.jwt");
        std::fs::write(&empty, "\n").expect("write");
        let empty_s = empty.to_string_lossy().to_string();
        let cli = parse(&["--token-file", &empty_s]).expect("parses");
        let err = create_spec(create_args(cli)).expect_err("empty");
        assert_eq!(err.to_string(), format!("--token-file {empty_s} is empty"));

        let cli = parse(&["--token-env", "TDMQ_BACKUP_CTL_TEST_SURELY_UNSET"]).expect("parses");
        let err = create_spec(create_args(cli)).expect_err("unset");
        assert_eq!(
            err.to_string(),
            "--token-env TDMQ_BACKUP_CTL_TEST_SURELY_UNSET: the environment variable is not set"
        );
    }

    const RULE_TOML: &str = r#"
name = "orders"
service_url = "pulsar://10.0.0.5:6650"
topic = "persistent://public/default/orders"
subscription = "backup"
bucket = "backup-1250000000"
region = "ap-guangzhou"
prefix = "logs/"
window = "10m"
max_messages = 2000
max_bytes = "64MiB"
token_file = "pulsar.jwt"
"#;

    #[test]
    fn from_file_reads_the_rule_and_the_token_file_next_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rule = dir.path().join("rule.toml");
        std::fs::write(&rule, RULE_TOML).expect("write");
        std::fs::write(dir.path().join("pulsar.jwt"), "tok-123\n").expect("write");
        let rule_s = rule.to_string_lossy().to_string();
        let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "--from-file", &rule_s])
            .expect("parses");
        let (spec, token) = create_spec(create_args(cli)).expect("valid");
        assert_eq!(spec.name.as_deref(), Some("orders"));
        assert_eq!(spec.window.as_deref(), Some("10m"));
        assert_eq!(spec.max_messages, Some(2000));
        assert_eq!(spec.max_bytes.as_deref(), Some("64MiB"));
        assert_eq!(token.as_deref(), Some("tok-123"));

        // Flags replace the file's values.
        let cli = Cli::try_parse_from([
            "tdmq-backup",
            "rule",
            "create",
            "--from-file",
            &rule_s,
            "--window",
            "1m",
        ])
        .expect("parses");
        let (spec, _) = create_spec(create_args(cli)).expect("valid");
        assert_eq!(spec.window.as_deref(), Some("1m"));
    }

    #[test]
    fn drain_progress_counts_segments_by_state() {
        let seg = |state: &str| proto::v1::SegmentInfo {
            state: state.into(),
            ..proto::v1::SegmentInfo::default()
        };
        assert_eq!(
            drain_message("orders", &[seg("sealed"), seg("stored"), seg("sealed")]),
            "draining orders: 3 segments left (2 sealed, 1 stored)"
        );
        assert_eq!(
            drain_message("orders", &[seg("open")]),
            "draining orders: 1 segment left (1 open)"
        );
        assert_eq!(
            drain_message("orders", &[]),
            "draining orders: nothing left, deleting"
        );
    }

    #[test]
    fn from_file_type_errors_name_the_key() {
        let text = RULE_TOML.replace("max_messages = 2000", "max_messages = \"2000\"");
        assert_ne!(
            text, RULE_TOML,
            "the sample rule file sets max_messages = 2000"
        );
        let err = parse_rule_file(&text, Path::new("rule.toml")).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.starts_with("rule.toml: max_messages: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn from_file_refuses_unknown_keys_by_name() {
        let text = format!("{RULE_TOML}\nwindw = \"5m\"\n");
        let err = parse_rule_file(&text, Path::new("rule.toml")).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.starts_with("rule.toml: unknown field `windw`"), "{msg}");
        assert!(!msg.contains('\n'));

        let err = parse_rule_file("token = \"abc\"\n", Path::new("rule.toml")).expect_err("no");
        assert!(!err.to_string().contains("abc"));
        assert!(err.to_string().contains("token_file or token_env"));

        let err = parse_rule_file("name = \n", Path::new("rule.toml")).expect_err("syntax");
        assert!(err.to_string().starts_with("rule.toml: line 1:"), "{err}");
        assert!(!err.to_string().contains('\n'));

        let err =
            parse_rule_file("max_messages = \"many\"\n", Path::new("rule.toml")).expect_err("type");
        assert!(err.to_string().starts_with("rule.toml: "), "{err}");

        let (spec, token) =
            parse_rule_file("max_bytes = 1000\ntoken_env = \"T\"\n", Path::new("r.toml"))
                .expect("ok");
        assert_eq!(spec.max_bytes.as_deref(), Some("1000"));
        assert!(matches!(token, Some(TokenSource::Env { var, .. }) if var == "T"));
    }

    #[test]
    fn from_file_prefix_error_is_the_validation_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rule = dir.path().join("rule.toml");
        let text = RULE_TOML
            .replace("prefix = \"logs/\"", "prefix = \"logs\"")
            .replace("token_file = \"pulsar.jwt\"\n", "");
        std::fs::write(&rule, text).expect("write");
        let rule_s = rule.to_string_lossy().to_string();
        let cli = Cli::try_parse_from(["tdmq-backup", "rule", "create", "--from-file", &rule_s])
            .expect("parses");
        let err = create_spec(create_args(cli)).expect_err("refused");
        assert_eq!(err.to_string(), r#"prefix "logs" must end with "/""#);
    }

    fn edit_args(args: &[&str]) -> EditArgs {
        let mut all = vec!["tdmq-backup", "rule", "edit"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).expect("parses").command {
            Command::Rule(RuleCommand::Edit(args)) => args,
            other => panic!("not rule edit: {other:?}"),
        }
    }

    #[test]
    fn edit_sends_only_what_was_given() {
        let (spec, token) = edit_spec(edit_args(&[
            "orders",
            "--window",
            "15m",
            "--max-bytes",
            "1GB",
        ]))
        .expect("ok");
        let p = spec.into_spec(token);
        assert_eq!(p.name, "orders");
        assert_eq!(p.window.as_deref(), Some("15m"));
        assert_eq!(p.max_bytes.as_deref(), Some("1GB"));
        assert_eq!(p.topic, None);
        assert_eq!(p.token, None);
        let err = edit_spec(edit_args(&["orders"])).expect_err("nothing");
        assert!(err.to_string().starts_with("nothing to change"));
    }

    #[test]
    fn delete_flags() {
        let parse_delete = |args: &[&str]| {
            let mut all = vec!["tdmq-backup", "rule", "delete"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| match c.command {
                Command::Rule(RuleCommand::Delete(d)) => d,
                other => panic!("not delete: {other:?}"),
            })
        };
        let d = parse_delete(&["orders", "--discard", "--yes"]).expect("parses");
        assert!(d.discard && d.yes && !d.drain);
        let d = parse_delete(&["orders", "--drain", "--drain-timeout", "2m"]).expect("parses");
        assert_eq!(d.drain_timeout, Some(std::time::Duration::from_secs(120)));
        assert!(parse_delete(&["orders", "--drain", "--discard"]).is_err());
        let d = parse_delete(&["orders", "--drain", "--unsubscribe"]).expect("parses");
        assert!(d.unsubscribe && d.drain);
        assert!(!parse_delete(&["orders"]).expect("parses").unsubscribe);
        assert!(parse_delete(&["orders", "--drain-timeout", "2m"]).is_err());
    }

    #[test]
    fn logs_flags() {
        let cli = Cli::try_parse_from([
            "tdmq-backup",
            "logs",
            "orders",
            "--failed",
            "--since",
            "10m",
            "--limit",
            "20",
        ])
        .expect("parses");
        let Command::Logs(args) = cli.command else {
            panic!("not logs");
        };
        let req = crate::commands::logs::logs_request(&args);
        assert_eq!(req.name, "orders");
        assert!(req.failed_only);
        assert_eq!(req.since_secs, 600);
        assert_eq!(req.limit, 20);
        assert!(Cli::try_parse_from(["tdmq-backup", "logs", "orders", "--since", "soon"]).is_err());
    }

    #[test]
    fn example_rule_file_parses_and_validates() {
        let text = include_str!("../../../examples/rule.toml");
        let path = Path::new("examples/rule.toml");
        let (spec, token) = parse_rule_file(text, path).expect("examples/rule.toml parses");
        let rule = spec.validate().expect("examples/rule.toml validates");
        assert_eq!(rule.name, "orders-backup");
        assert_eq!(rule.prefix, "pulsar/");
        assert!(matches!(
            token,
            Some(TokenSource::File { path, .. }) if path == Path::new("examples/role-token.txt")
        ));
    }
}
