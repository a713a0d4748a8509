//! `rule create|apply|list|show|edit|delete|pause|resume|flush|skip`.
//!
//! - this file: the commands that send a rule (create, apply, edit) or read them (list, show);
//! - [`file`]: rule files (`--from-file`, `apply -f`) and where a rule's token comes from;
//! - [`delete`]: `rule delete`, with the drain and the confirmation;
//! - [`waiting`]: what a command that waits shows (`flush --wait`, a drain's progress).

mod delete;
pub(crate) mod file;
mod waiting;

use delete::delete;
use waiting::wait_acknowledged;

use anyhow::{anyhow, bail};
use proto::types::RuleSpecInput;
use proto::v1::{
    CreateRuleRequest, EditRuleRequest, ListRulesRequest, Rule, RuleName, SkipEntryRequest,
    StatusRequest,
};
use serde_json::json;

use super::Ctx;
use crate::cli::{ApplyArgs, CreateArgs, EditArgs, OutputFormat, RuleCommand, SpecFlags};
use crate::client::{self, CallResult as _};
use crate::output::{rule_json, rule_state, rule_text, rule_toml, rules_json, rules_text, Report};
#[cfg(test)]
pub use file::parse_rule_file;
pub use file::{load_rule_file, TokenSource};

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

/// A rule's Pulsar token about to cross plain http:// beyond loopback is sent, with a warning.
fn warn_if_token_in_clear(ctx: &Ctx, token: &Option<String>) {
    if token.is_some() {
        client::warn_if_in_clear("the rule's Pulsar token", &ctx.ingester);
    }
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
    warn_if_token_in_clear(ctx, &token);
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
        warn_if_token_in_clear(ctx, &token);
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
    warn_if_token_in_clear(ctx, &token);
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
    warn_if_token_in_clear(ctx, &token);
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
        compression_level: f.compression_level,
        layout: f.layout.clone(),
        format: f.format.clone(),
        fence: f.fence,
    };
    let token = TokenSource::from_flags(f.token_file.as_ref(), f.token_env.as_ref());
    (spec, token)
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

#[cfg(test)]
mod tests;
