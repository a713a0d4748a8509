//! `restore create|list|show|pause|resume|cancel`. The source side (the rule's bucket, prefix,
//! manifest) goes to the uploader, which owns the job; the target side (topic, service URL,
//! token) to the ingester, which alone holds Pulsar credentials.

use proto::v1::{
    CreateRestoreRequest, ListRestoresRequest, RestoreJob, RestoreJobRef, RestoreTargetRequest,
    RuleName,
};
use serde_json::Value;

use super::rule::file::TokenSource;
use super::Ctx;
use crate::cli::{RestoreCommand, RestoreCreateArgs};
use crate::client::CallResult as _;
use crate::output::{key_values, Report};
use crate::table::{self, Column, Layout};

pub async fn run(ctx: &Ctx, cmd: RestoreCommand) -> anyhow::Result<Report> {
    match cmd {
        RestoreCommand::Create(args) => create(ctx, *args).await,
        RestoreCommand::List => {
            let mut uploader = ctx.uploader().await?;
            let reply = uploader
                .list_restores(ListRestoresRequest {})
                .await
                .on(&ctx.uploader)?;
            Ok(Report {
                json: Value::Array(reply.jobs.iter().map(job_json).collect()),
                text: jobs_text(&reply.jobs, &ctx.layout),
            })
        }
        RestoreCommand::Show { job } => {
            let mut uploader = ctx.uploader().await?;
            let job = uploader
                .get_restore(RestoreJobRef { job })
                .await
                .on(&ctx.uploader)?
                .job
                .unwrap_or_default();
            Ok(job_report(&job, &ctx.layout))
        }
        RestoreCommand::Pause { job } => {
            let mut uploader = ctx.uploader().await?;
            let reply = uploader
                .pause_restore(RestoreJobRef { job })
                .await
                .on(&ctx.uploader)?;
            Ok(job_report(&reply.job.unwrap_or_default(), &ctx.layout))
        }
        RestoreCommand::Resume { job } => {
            let mut uploader = ctx.uploader().await?;
            let reply = uploader
                .resume_restore(RestoreJobRef { job })
                .await
                .on(&ctx.uploader)?;
            Ok(job_report(&reply.job.unwrap_or_default(), &ctx.layout))
        }
        RestoreCommand::Cancel { job } => {
            let mut uploader = ctx.uploader().await?;
            // The uploader owns the job: it also makes the ingester forget the target's token.
            let reply = uploader
                .cancel_restore(RestoreJobRef { job })
                .await
                .on(&ctx.uploader)?;
            Ok(job_report(&reply.job.unwrap_or_default(), &ctx.layout))
        }
    }
}

async fn create(ctx: &Ctx, args: RestoreCreateArgs) -> anyhow::Result<Report> {
    let token = TokenSource::from_flags(args.token_file.as_ref(), args.token_env.as_ref());
    let token = token.map(|t| t.read()).transpose()?.unwrap_or_default();
    let to_topic = proto::types::TopicName::parse(&args.to_topic)
        .map_err(|e| anyhow::anyhow!("--to-topic: {e}"))?
        .full_name();
    let mut ingester = ctx.ingester().await?;
    let rule = ingester
        .get_rule(RuleName {
            name: args.rule.clone(),
        })
        .await
        .on(&ctx.ingester)?
        .rule
        .unwrap_or_default();
    // The target first: a job whose target cannot be reached is not created.
    let target = ingester
        .set_restore_target(RestoreTargetRequest {
            job: args.job.clone(),
            to_topic: to_topic.clone(),
            service_url: args.service_url.clone(),
            token,
            dry_run: args.dry_run,
        })
        .await
        .on(&ctx.ingester)?;
    let mut uploader = ctx.uploader().await?;
    let job = uploader
        .create_restore(CreateRestoreRequest {
            job: args.job,
            rule: rule.name,
            bucket: rule.bucket,
            region: rule.region,
            prefix: rule.prefix,
            endpoint: rule.endpoint,
            to_topic,
            target_partitions: target.partitions,
            from: args.from.unwrap_or_default(),
            to: args.to.unwrap_or_default(),
            partitions: args.partitions,
            rate: args.rate.unwrap_or(0),
            dry_run: args.dry_run,
        })
        .await
        .on(&ctx.uploader)?
        .job
        .unwrap_or_default();
    let mut report = job_report(&job, &ctx.layout);
    if args.dry_run {
        report.text = format!(
            "dry run: nothing produced, no job recorded\n{}",
            report.text
        );
        if let Value::Object(map) = &mut report.json {
            map.insert("dry_run".into(), Value::Bool(true));
        }
    }
    Ok(report)
}

fn job_json(job: &RestoreJob) -> Value {
    serde_json::to_value(job).unwrap_or(Value::Null)
}

/// Where a source partition goes, as a table shows it.
fn target_cell(target: i32) -> String {
    match target {
        -1 => "topic".into(),
        -2 => "by key".into(),
        p => p.to_string(),
    }
}

fn job_report(job: &RestoreJob, layout: &Layout) -> Report {
    let mut pairs = vec![("job", job.job.clone()), ("state", job.state.clone())];
    if !job.reason.is_empty() {
        pairs.push(("reason", job.reason.clone()));
    }
    pairs.extend([
        ("rule", job.rule.clone()),
        ("to_topic", job.to_topic.clone()),
        ("target_partitions", job.target_partitions.to_string()),
        ("objects", job.objects.to_string()),
        ("messages", job.messages.to_string()),
        ("produced", job.produced.to_string()),
        ("skipped", job.skipped.to_string()),
        (
            "publish_times",
            format!("{} .. {}", job.min_publish_time, job.max_publish_time),
        ),
        (
            "selected",
            format!(
                "{} .. {}",
                if job.from.is_empty() {
                    "start"
                } else {
                    &job.from
                },
                if job.to.is_empty() { "end" } else { &job.to }
            ),
        ),
        (
            "rate",
            if job.rate == 0 {
                "unlimited".into()
            } else {
                format!("{}/s", job.rate)
            },
        ),
    ]);
    let rows: Vec<Vec<String>> = job
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.source_partition.to_string(),
                target_cell(p.target_partition),
                p.objects.to_string(),
                p.messages.to_string(),
                p.position.to_string(),
                p.produced.to_string(),
            ]
        })
        .collect();
    Report {
        json: job_json(job),
        text: format!(
            "{}\n\n{}",
            key_values(&pairs),
            table::render(&PARTITION_COLUMNS, &rows, layout)
        ),
    }
}

const PARTITION_COLUMNS: [Column; 6] = [
    Column::keep("SOURCE"),
    Column::keep("TARGET"),
    Column::keep("OBJECTS"),
    Column::keep("MESSAGES"),
    Column::keep("DONE"),
    Column::keep("PRODUCED"),
];

const JOB_COLUMNS: [Column; 6] = [
    Column::keep("JOB"),
    Column::keep("STATE"),
    Column::keep("RULE"),
    Column::middle("TO-TOPIC"),
    Column::keep("MESSAGES"),
    Column::keep("PRODUCED"),
];

fn jobs_text(jobs: &[RestoreJob], layout: &Layout) -> String {
    if jobs.is_empty() {
        return "no restore jobs".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.job.clone(),
                j.state.clone(),
                j.rule.clone(),
                j.to_topic.clone(),
                j.messages.to_string(),
                j.produced.to_string(),
            ]
        })
        .collect();
    table::render(&JOB_COLUMNS, &rows, layout)
}
