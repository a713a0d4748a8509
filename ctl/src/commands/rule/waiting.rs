//! Commands that wait: `rule flush --wait` until its segment is acknowledged, and a drain's
//! progress while `rule delete --drain` waits for the ingester.

use std::future::Future;

use anyhow::bail;
use proto::v1::RuleName;

use crate::client::{self, CallResult as _};
use crate::commands::Ctx;
use crate::progress::Progress;

/// Polls the rule's segments until `segment_no` is gone: stored, acknowledged and freed (an
/// older segment still waiting holds it back, as acknowledgements follow segment order).
pub(super) async fn wait_acknowledged(
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
pub(super) async fn with_drain_progress<T>(
    ctx: &Ctx,
    name: &str,
    call: impl Future<Output = T>,
) -> T {
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
pub(super) fn drain_message(name: &str, segments: &[proto::v1::SegmentInfo]) -> String {
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
