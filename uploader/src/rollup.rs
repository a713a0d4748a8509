//! Rolls the manifest up: every [`ROLLUP_EVERY`], for each rule the ingester runs, the hours that
//! can no longer change get their rollup ([`crate::manifest::roll_up`]), so that planning a
//! verify or a restore costs one GET per hour instead of one per object.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proto::v1::{ListRulesRequest, RuleName};
use tokio::sync::watch;

use crate::error::{status_text, UploadError};
use crate::ingester::Client;
use crate::manifest;
use crate::upload::UploadContext;

pub const ROLLUP_EVERY: Duration = Duration::from_secs(15 * 60);
/// The first pass, once the pipeline had time to connect.
const FIRST_AFTER: Duration = Duration::from_secs(60);

/// Runs until `shutdown` turns true. Failures are logged and retried at the next pass: a
/// missing rollup only costs readers more GETs.
pub async fn run(
    ctx: Arc<UploadContext>,
    mut ingester: Client,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = FIRST_AFTER;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        delay = ROLLUP_EVERY;
        match pass(&ctx, &mut ingester).await {
            Ok(0) => {}
            Ok(written) => tracing::info!(rollups = written, "manifest hours rolled up"),
            Err(err) => {
                tracing::warn!(error = %err, "rolling the manifest up failed; retrying at the next pass")
            }
        }
    }
}

async fn pass(ctx: &UploadContext, ingester: &mut Client) -> Result<usize, UploadError> {
    let rules = ingester
        .list_rules(ListRulesRequest {})
        .await
        .map_err(|s| UploadError::Ingester(format!("ListRules: {}", status_text(&s))))?
        .into_inner()
        .rules;
    let mut written = 0;
    for rule in rules {
        let segments = ingester
            .list_segments(RuleName {
                name: rule.name.clone(),
            })
            .await
            .map_err(|s| UploadError::Ingester(format!("ListSegments: {}", status_text(&s))))?
            .into_inner()
            .segments;
        // Segments not yet stored still get entries, in the hour of their window.
        let unfinished: Vec<DateTime<Utc>> = segments
            .iter()
            .filter(|s| s.state != "stored")
            .filter_map(|s| DateTime::parse_from_rfc3339(&s.window_start).ok())
            .map(|t| t.with_timezone(&Utc))
            .collect();
        let before = manifest::final_before(&unfinished, Utc::now());
        let store = ctx.stores.store_for(&rule.endpoint, &rule.region).await?;
        match manifest::roll_up(&store, &rule.bucket, &rule.prefix, &rule.name, before).await {
            Ok(n) => written += n,
            // One rule's store failing must not keep the others from their rollups.
            Err(err) => {
                tracing::warn!(rule = %rule.name, error = %err, "rolling the rule's manifest up failed")
            }
        }
    }
    Ok(written)
}
