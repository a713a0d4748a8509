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

/// Where the backup to replay is: a rule the ingester knows, or a bucket/prefix written by
/// tdmq-backup (any rule's, this deployment's or another's).
#[derive(Debug, PartialEq, Eq)]
enum Source {
    Rule(String),
    Bucket {
        bucket: String,
        region: String,
        prefix: String,
        topic: String,
    },
}

/// The source the flags name: exactly one of `--rule NAME` and the group `--bucket B --region R
/// --prefix P/ --topic SOURCE` (all four); the error says what is missing or in conflict.
fn source_of(args: &RestoreCreateArgs) -> anyhow::Result<Source> {
    let group = [
        ("--bucket", &args.bucket),
        ("--region", &args.region),
        ("--prefix", &args.prefix),
        ("--topic", &args.topic),
    ];
    let given: Vec<&str> = group
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(flag, _)| *flag)
        .collect();
    let missing: Vec<&str> = group
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(flag, _)| *flag)
        .collect();
    match (&args.rule, given.is_empty()) {
        (Some(_), false) => anyhow::bail!(
            "--rule conflicts with {}: name the rule, or the backup's --bucket, --region, \
             --prefix and --topic, not both",
            given.join(", ")
        ),
        (Some(rule), true) => Ok(Source::Rule(rule.clone())),
        (None, true) => anyhow::bail!(
            "which backup? give --rule NAME, or --bucket B --region R --prefix P/ --topic SOURCE"
        ),
        (None, false) if !missing.is_empty() => anyhow::bail!(
            "restoring from a bucket without --rule also needs {} (given: {})",
            missing.join(", "),
            given.join(", ")
        ),
        (None, false) => {
            let value = |v: &Option<String>| v.clone().unwrap_or_default();
            let prefix = value(&args.prefix);
            if !prefix.is_empty() && !prefix.ends_with('/') {
                anyhow::bail!(
                    "--prefix {prefix:?} must end with / (the rule's prefix as it was given; \
                     --prefix \"\" for none)"
                );
            }
            for (flag, v) in [("--bucket", &args.bucket), ("--topic", &args.topic)] {
                if value(v).is_empty() {
                    anyhow::bail!("{flag} must not be empty");
                }
            }
            let topic = proto::types::TopicName::parse(&value(&args.topic))
                .map_err(|e| anyhow::anyhow!("--topic: {e}"))?
                .full_name();
            Ok(Source::Bucket {
                bucket: value(&args.bucket),
                region: value(&args.region),
                prefix,
                topic,
            })
        }
    }
}

async fn create(ctx: &Ctx, args: RestoreCreateArgs) -> anyhow::Result<Report> {
    // Before anything is sent: a flag error costs no call to either daemon.
    let source = source_of(&args)?;
    let token = TokenSource::from_flags(args.token_file.as_ref(), args.token_env.as_ref());
    let token = token.map(|t| t.read()).transpose()?.unwrap_or_default();
    let to_topic = proto::types::TopicName::parse(&args.to_topic)
        .map_err(|e| anyhow::anyhow!("--to-topic: {e}"))?
        .full_name();
    let mut ingester = ctx.ingester().await?;
    // The source as the uploader takes it: the rule's bucket, prefix and endpoint; or the
    // bucket given, read through the uploader's own endpoint and credentials.
    let request = match source {
        Source::Rule(name) => {
            let rule = ingester
                .get_rule(RuleName { name })
                .await
                .on(&ctx.ingester)?
                .rule
                .unwrap_or_default();
            CreateRestoreRequest {
                rule: rule.name,
                bucket: rule.bucket,
                region: rule.region,
                prefix: rule.prefix,
                endpoint: rule.endpoint,
                ..CreateRestoreRequest::default()
            }
        }
        Source::Bucket {
            bucket,
            region,
            prefix,
            topic,
        } => CreateRestoreRequest {
            bucket,
            region,
            prefix,
            source_topic: topic,
            ..CreateRestoreRequest::default()
        },
    };
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
            to_topic,
            target_partitions: target.partitions,
            from: args.from.unwrap_or_default(),
            to: args.to.unwrap_or_default(),
            partitions: args.partitions,
            rate: args.rate.unwrap_or(0),
            dry_run: args.dry_run,
            ..request
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

/// Where the job reads: the rule, or the bucket, prefix and topic it was given.
fn source_text(job: &RestoreJob) -> String {
    let place = format!(
        "{}/{}{}",
        job.bucket,
        job.prefix,
        if job.region.is_empty() {
            String::new()
        } else {
            format!(" ({})", job.region)
        }
    );
    if job.source_topic.is_empty() {
        format!("rule {} in {place}", job.rule)
    } else {
        format!("{} in {place}", job.source_topic)
    }
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
    pairs.push(("source", source_text(job)));
    if !job.manifest_rules.is_empty() {
        pairs.push(("manifest_of", job.manifest_rules.join(", ")));
    }
    pairs.extend([
        ("to_topic", job.to_topic.clone()),
        ("target_partitions", job.target_partitions.to_string()),
        (
            "objects",
            format!("{} ({} read so far)", job.objects, job.objects_read),
        ),
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
    Column::middle("SOURCE"),
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
                if j.source_topic.is_empty() {
                    j.rule.clone()
                } else {
                    format!("{} in {}/{}", j.source_topic, j.bucket, j.prefix)
                },
                j.to_topic.clone(),
                j.messages.to_string(),
                j.produced.to_string(),
            ]
        })
        .collect();
    table::render(&JOB_COLUMNS, &rows, layout)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    /// `restore create JOB --to-topic t --service-url URL` plus `flags`, through the real
    /// parser, then [`source_of`].
    fn source(flags: &[&str]) -> anyhow::Result<Source> {
        let mut argv = vec![
            "tdmq-backup",
            "restore",
            "create",
            "job",
            "--to-topic",
            "t",
            "--service-url",
            "pulsar://h:6650",
        ];
        argv.extend(flags);
        let cli = Cli::try_parse_from(argv)?;
        match cli.command {
            Command::Restore(RestoreCommand::Create(args)) => source_of(&args),
            other => anyhow::bail!("parsed as {other:?}"),
        }
    }

    fn error(flags: &[&str]) -> String {
        match source(flags) {
            Ok(s) => panic!("{flags:?} accepted as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    const GROUP: [&str; 8] = [
        "--bucket",
        "b-125",
        "--region",
        "ap-shanghai",
        "--prefix",
        "bk/",
        "--topic",
        "orders",
    ];

    #[test]
    fn the_rule_or_the_whole_bucket_group_names_the_backup() {
        assert_eq!(
            source(&["--rule", "orders-bk"]).expect("rule"),
            Source::Rule("orders-bk".into())
        );
        assert_eq!(
            source(&GROUP).expect("group"),
            Source::Bucket {
                bucket: "b-125".into(),
                region: "ap-shanghai".into(),
                prefix: "bk/".into(),
                topic: "persistent://public/default/orders".into(),
            }
        );
        // No prefix is a prefix too, said explicitly.
        let mut root = GROUP;
        root[5] = "";
        assert!(matches!(source(&root), Ok(Source::Bucket { prefix, .. }) if prefix.is_empty()));
    }

    #[test]
    fn flag_errors_name_what_is_missing_or_in_conflict() {
        let none = error(&[]);
        assert!(
            none.contains("--rule NAME") && none.contains("--bucket B"),
            "{none}"
        );

        let both = error(&["--rule", "r", "--bucket", "b", "--topic", "t"]);
        assert!(
            both.contains("--rule conflicts with --bucket, --topic"),
            "{both}"
        );

        let partial = error(&["--bucket", "b", "--topic", "orders"]);
        assert!(
            partial.contains("also needs --region, --prefix")
                && partial.contains("given: --bucket, --topic"),
            "{partial}"
        );

        let mut no_slash = GROUP;
        no_slash[5] = "bk";
        assert!(error(&no_slash).contains("must end with /"));
        let mut bad_topic = GROUP;
        bad_topic[7] = "a/b/c/d";
        assert!(
            error(&bad_topic).starts_with("--topic"),
            "{}",
            error(&bad_topic)
        );
        let mut empty_bucket = GROUP;
        empty_bucket[1] = "";
        assert!(error(&empty_bucket).contains("--bucket must not be empty"));
    }
}
