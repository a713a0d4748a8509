//! `logs NAME [--failed] [--since DURATION] [--limit N] [--follow]`: the rule's run history.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use proto::v1::{LogEntry, LogsRequest};
use tonic::Code;

use super::Ctx;
use crate::cli::{LogsArgs, OutputFormat};
use crate::client::{one_line, CallResult as _};
use crate::output::{
    log_entry_json, log_follow_header, log_follow_line, logs_json, logs_text, Report,
};

/// How often `--follow` asks the ingester for new entries.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// Entries asked for per poll; grown while a whole page is new (a burst), up to the cap.
const FOLLOW_PAGE: u32 = 100;
const FOLLOW_PAGE_MAX: u32 = 10_000;

pub async fn run(ctx: &Ctx, args: LogsArgs) -> anyhow::Result<Report> {
    let request = logs_request(&args);
    let mut ingester = ctx.ingester().await?;
    let reply = ingester.logs(request).await.on(&ctx.ingester)?;
    Ok(Report {
        json: logs_json(&reply.entries),
        text: logs_text(&reply.entries, &ctx.layout),
    })
}

pub fn logs_request(args: &LogsArgs) -> LogsRequest {
    LogsRequest {
        name: args.name.clone(),
        failed_only: args.failed,
        since_secs: args.since.map(since_secs).unwrap_or(0),
        limit: args.limit.unwrap_or(0),
    }
}

/// Whole seconds, rounded up: 0 means "no limit" on the wire, so `--since 500ms` must not
/// become 0 and return everything.
fn since_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The newest entry printed so far: its time and every entry printed with that same time
/// (several can share a millisecond). An entry is new when it is later, or as late but unseen.
/// Entry times are RFC 3339 UTC with milliseconds, so they compare as strings.
#[derive(Debug, Default)]
pub struct Cursor {
    at: Option<String>,
    seen: HashSet<String>,
}

fn identity(e: &LogEntry) -> String {
    log_entry_json(e).to_string()
}

impl Cursor {
    /// The entries of `page` (newest first, as the ingester sends them) not printed yet,
    /// oldest first.
    pub fn new_entries(&self, page: &[LogEntry]) -> Vec<LogEntry> {
        let mut fresh: Vec<LogEntry> = page
            .iter()
            .filter(|e| match &self.at {
                None => true,
                Some(at) => {
                    e.at.as_str() > at.as_str()
                        || (e.at == *at && !self.seen.contains(&identity(e)))
                }
            })
            .cloned()
            .collect();
        fresh.reverse();
        fresh
    }

    /// Records entries as printed (in any order).
    pub fn advance(&mut self, printed: &[LogEntry]) {
        for e in printed {
            match &self.at {
                Some(at) if e.at.as_str() < at.as_str() => {}
                Some(at) if e.at == *at => {
                    self.seen.insert(identity(e));
                }
                _ => {
                    self.at = Some(e.at.clone());
                    self.seen.clear();
                    self.seen.insert(identity(e));
                }
            }
        }
    }
}

/// `logs NAME --follow`: prints the entries `logs` would (oldest first), then polls every
/// second and prints what is new, until Ctrl-C or stdout closes. The first call must succeed;
/// later ones that fail (the ingester restarting) are reported on stderr and retried, except
/// that the rule being deleted ends the command with an error.
pub async fn follow(ctx: &Ctx, args: &LogsArgs) -> anyhow::Result<()> {
    let json = ctx.format == OutputFormat::Json;
    let mut ingester = ctx.ingester().await?;
    let first = ingester
        .logs(logs_request(args))
        .await
        .on(&ctx.ingester)?
        .entries;
    let started = Instant::now();
    let mut cursor = Cursor::default();
    let fresh = cursor.new_entries(&first);
    if !json && !print(&log_follow_header()) {
        return Ok(());
    }
    if !emit(&fresh, json) {
        return Ok(());
    }
    cursor.advance(&fresh);

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut page = FOLLOW_PAGE;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        // Until something has been printed, `--since` still bounds what counts as new: it was
        // measured from the start, so widen it by the time spent following.
        let since = match (&cursor.at, args.since) {
            (None, Some(since)) => since_secs(since + started.elapsed() + Duration::from_secs(1)),
            _ => 0,
        };
        let fresh = loop {
            let request = LogsRequest {
                name: args.name.clone(),
                failed_only: args.failed,
                since_secs: since,
                limit: page,
            };
            match ingester.logs(request).await {
                Ok(reply) => {
                    let entries = reply.into_inner().entries;
                    let fresh = cursor.new_entries(&entries);
                    // A whole page of new entries may have more behind it: ask for more.
                    if fresh.len() == entries.len()
                        && entries.len() as u64 >= u64::from(page)
                        && page < FOLLOW_PAGE_MAX
                        && cursor.at.is_some()
                    {
                        page = (page * 4).min(FOLLOW_PAGE_MAX);
                        continue;
                    }
                    last_error.clear();
                    break fresh;
                }
                Err(status) if status.code() == Code::NotFound => {
                    return Err(ctx.ingester.call_error(status));
                }
                Err(status) => {
                    let error = one_line(&format!("{:#}", ctx.ingester.call_error(status)));
                    if error != last_error {
                        eprintln!("warning: {error} (retrying every second)");
                        last_error = error;
                    }
                    break Vec::new();
                }
            }
        };
        if !emit(&fresh, json) {
            return Ok(());
        }
        cursor.advance(&fresh);
    }
}

/// Prints entries, one line each; false when stdout is closed.
fn emit(entries: &[LogEntry], json: bool) -> bool {
    if entries.is_empty() {
        return true;
    }
    let text: Vec<String> = entries
        .iter()
        .map(|e| {
            if json {
                log_entry_json(e).to_string()
            } else {
                log_follow_line(e)
            }
        })
        .collect();
    print(&text.join("\n"))
}

fn print(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: &str, kind: &str) -> LogEntry {
        LogEntry {
            at: at.into(),
            kind: kind.into(),
            ..LogEntry::default()
        }
    }

    #[test]
    fn the_cursor_prints_each_entry_once_oldest_first() {
        let mut c = Cursor::default();
        let page = vec![
            entry("2026-01-01T00:00:02.000Z", "b"),
            entry("2026-01-01T00:00:01.000Z", "a"),
        ];
        let fresh = c.new_entries(&page);
        assert_eq!(
            fresh.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        c.advance(&fresh);
        assert!(c.new_entries(&page).is_empty());
        // Same millisecond as the newest printed, but a different entry: new.
        let page = vec![
            entry("2026-01-01T00:00:03.000Z", "d"),
            entry("2026-01-01T00:00:02.000Z", "c"),
            entry("2026-01-01T00:00:02.000Z", "b"),
            entry("2026-01-01T00:00:01.000Z", "a"),
        ];
        let fresh = c.new_entries(&page);
        assert_eq!(
            fresh.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        c.advance(&fresh);
        assert!(c.new_entries(&page).is_empty());
    }
}
