//! The results: one row per measurement, the printed table, and the targets judged
//! from the rows.

use serde::Serialize;

use crate::uploader::UploaderCase;

/// One row of the final table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub scenario: String,
    pub messages: u64,
    /// Payload bytes (or, for upload rows, object bytes).
    pub bytes: u64,
    pub seconds: f64,
    pub ratio: Option<f64>,
    pub peak_rss_ingester_kb: Option<u64>,
    pub peak_rss_uploader_kb: Option<u64>,
    pub disk_written_per_payload: Option<f64>,
    pub notes: String,
    /// The rate columns mean nothing for this row (latency).
    #[serde(skip)]
    pub no_rates: bool,
    /// Targets this row is judged on by itself (the steady scenario's summary).
    pub judged: Vec<Judged>,
}

/// A target judged by the scenario that measured it.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub target: String,
    /// `None`: not measured.
    pub figure: Option<f64>,
    pub met: bool,
    /// The figure is a count (shown without decimals).
    pub count: bool,
}

impl Judged {
    pub fn new(target: &str, figure: Option<f64>, passes: fn(f64) -> bool) -> Judged {
        Judged {
            target: target.to_string(),
            figure,
            met: figure.is_some_and(passes),
            count: false,
        }
    }

    /// A count whose target is zero.
    pub fn count(target: &str, count: usize) -> Judged {
        Judged {
            target: format!("{target} = 0"),
            figure: Some(count as f64),
            met: count == 0,
            count: true,
        }
    }
}

impl Row {
    pub fn msg_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

pub fn row_line(r: &Row) -> String {
    format!(
        "{}: {} msgs, {:.1} MB in {:.2} s = {:.0} msg/s, {:.1} MB/s{} {}",
        r.scenario,
        r.messages,
        r.bytes as f64 / 1e6,
        r.seconds,
        r.msg_per_s(),
        r.mb_per_s(),
        r.ratio
            .map(|x| format!(", ratio {x:.2}"))
            .unwrap_or_default(),
        r.notes
    )
}

/// One target of the performance issue and the (row, figure) pairs it is judged on.
pub struct Target {
    name: &'static str,
    figures: Vec<(String, f64)>,
    /// Show only the largest figure (RSS, disk), not every one.
    only_largest: bool,
    unit: &'static str,
    passes: fn(f64) -> bool,
}

impl Target {
    pub fn each(
        name: &'static str,
        figures: Vec<(String, f64)>,
        passes: fn(f64) -> bool,
    ) -> Target {
        Target {
            name,
            figures,
            only_largest: false,
            unit: "",
            passes,
        }
    }

    pub fn largest(
        name: &'static str,
        figures: Vec<(String, f64)>,
        unit: &'static str,
        passes: fn(f64) -> bool,
    ) -> Target {
        Target {
            name,
            figures,
            only_largest: true,
            unit,
            passes,
        }
    }
}

/// Peak RSS as the table shows it: kB from /proc, MB of 10^6 bytes.
pub fn mb_of_kb(kb: u64) -> f64 {
    kb as f64 * 1024.0 / 1e6
}

/// The targets, judged from the rows that ran ("not run" for the others). Each target
/// is judged on a list of (row, figure); `worst` shows only the largest figure.
pub fn targets(rows: &[Row]) -> String {
    let ratios = |prefix: &str| -> Vec<(String, f64)> {
        rows.iter()
            // The variants that are not the default configuration are shown, not judged.
            .filter(|r| r.scenario.starts_with(prefix) && !r.scenario.contains("uncompressed"))
            .filter(|r| !r.scenario.contains(UploaderCase::GRPC.label))
            .filter_map(|r| r.ratio.map(|x| (r.scenario.clone(), x)))
            .collect()
    };
    let rss: Vec<(String, f64)> = rows
        .iter()
        .flat_map(|r| {
            [
                (r.peak_rss_ingester_kb, "ingester"),
                (r.peak_rss_uploader_kb, "uploader"),
            ]
            .into_iter()
            .filter_map(|(kb, daemon)| {
                kb.map(|kb| (format!("{daemon}, {}", r.scenario), mb_of_kb(kb)))
            })
        })
        .collect();
    let disk: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| r.disk_written_per_payload.map(|x| (r.scenario.clone(), x)))
        .collect();
    let latency: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.scenario.starts_with("latency"))
        .map(|r| ("median".to_string(), r.seconds))
        .collect();
    let judged = [
        Target::each(
            "end to end ≥ 0.8 × baseline (1 KB)",
            ratios("e2e 1 KB"),
            |x| x >= 0.8,
        ),
        Target::each(
            "uploader ≥ 0.8 × bare SDK loop (to stored)",
            ratios("uploader alone, to stored"),
            |x| x >= 0.8,
        ),
        Target::largest("peak RSS ≤ 150 MB per daemon", rss, " MB", |x| x <= 150.0),
        Target::largest("disk written ≤ 2.5 × payload", disk, "", |x| x <= 2.5),
        Target::each(
            "window end → object visible ≤ 1 s + upload",
            latency,
            |x| x <= 1.0,
        ),
    ];
    let mut out = String::from("| target | result | verdict |\n|---|---|---|\n");
    for t in judged {
        let digits = if t.unit.is_empty() { 2 } else { 0 };
        let unit = t.unit;
        let show = |(name, x): &(String, f64)| format!("{x:.digits$}{unit} ({name})");
        let shown: Vec<String> = if t.only_largest {
            t.figures
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|worst| format!("largest {}", show(worst)))
                .into_iter()
                .collect()
        } else {
            t.figures.iter().map(show).collect()
        };
        let verdict = if t.figures.is_empty() {
            "not run"
        } else if t.figures.iter().all(|(_, x)| (t.passes)(*x)) {
            "met"
        } else {
            "missed"
        };
        out.push_str(&format!(
            "| {} | {} | {verdict} |\n",
            t.name,
            shown.join(", ")
        ));
    }
    for (row, j) in rows
        .iter()
        .flat_map(|r| r.judged.iter().map(move |j| (r, j)))
    {
        let figure = match (j.figure, j.count) {
            (None, _) => "not measured".to_string(),
            (Some(x), true) => format!("{x:.0} ({})", row.scenario),
            (Some(x), false) => format!("{x:.2} ({})", row.scenario),
        };
        let verdict = match (j.figure, j.met) {
            (None, _) => "not run",
            (Some(_), true) => "met",
            (Some(_), false) => "missed",
        };
        out.push_str(&format!("| {} | {figure} | {verdict} |\n", j.target));
    }
    out
}

pub fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "messages",
        "MB",
        "seconds",
        "msg/s",
        "MB/s",
        "ratio",
        "peak RSS ingester",
        "peak RSS uploader",
        "disk written/payload",
        "notes",
    ];
    let mb = |kb: Option<u64>| {
        kb.map(|k| format!("{:.0} MB", mb_of_kb(k)))
            .unwrap_or_else(|| "-".into())
    };
    let mut lines = vec![
        format!("| {} |", header.join(" | ")),
        format!("|{}", "---|".repeat(header.len())),
    ];
    for r in rows {
        let rate = |text: String| if r.no_rates { "-".to_string() } else { text };
        let cells = [
            r.scenario.clone(),
            r.messages.to_string(),
            format!("{:.1}", r.bytes as f64 / 1e6),
            format!("{:.2}", r.seconds),
            rate(format!("{:.0}", r.msg_per_s())),
            rate(format!("{:.1}", r.mb_per_s())),
            r.ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            mb(r.peak_rss_ingester_kb),
            mb(r.peak_rss_uploader_kb),
            r.disk_written_per_payload
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.notes.clone(),
        ];
        lines.push(format!("| {} |", cells.join(" | ")));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table line of `text` whose first cell starts with `start`.
    fn line_starting(text: &str, start: &str) -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("| {start}")))
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn targets_are_judged_from_the_rows_that_ran() {
        let rows = vec![
            Row {
                scenario: "e2e 1 KB".into(),
                ratio: Some(0.39),
                peak_rss_ingester_kb: Some(170_000),
                peak_rss_uploader_kb: Some(30_000),
                disk_written_per_payload: Some(1.62),
                ..Row::default()
            },
            Row {
                scenario: "e2e 1 KB, uncompressed".into(),
                ratio: Some(0.2),
                ..Row::default()
            },
            Row {
                scenario: "e2e 100 B".into(),
                ratio: Some(0.9),
                disk_written_per_payload: Some(2.3),
                ..Row::default()
            },
        ];
        let text = targets(&rows);
        let line = |start: &str| line_starting(&text, start);
        let e2e = line("end to end");
        assert!(
            e2e.contains("0.39 (e2e 1 KB)") && e2e.ends_with("| missed |"),
            "{e2e}"
        );
        assert!(
            !e2e.contains("0.20"),
            "the uncompressed variant is not the target: {e2e}"
        );
        assert!(line("uploader").ends_with("| not run |"));
        let mut with_uploads = rows.clone();
        with_uploads.extend([
            Row {
                scenario: "uploader alone, to stored".into(),
                ratio: Some(0.86),
                ..Row::default()
            },
            Row {
                scenario: "uploader alone, to stored, over gRPC".into(),
                ratio: Some(0.7),
                ..Row::default()
            },
        ]);
        let uploader = line_starting(&targets(&with_uploads), "uploader");
        assert!(
            uploader.contains("0.86")
                && !uploader.contains("0.70")
                && uploader.ends_with("| met |"),
            "the gRPC variant is shown in the table, not judged: {uploader}"
        );
        let rss = line("peak RSS");
        assert!(
            rss.contains("largest 174 MB (ingester, e2e 1 KB)") && rss.ends_with("| missed |"),
            "{rss}"
        );
        let disk = line("disk");
        assert!(
            disk.contains("largest 2.30 (e2e 100 B)") && disk.ends_with("| met |"),
            "{disk}"
        );
        assert!(line("window end").ends_with("| not run |"));
    }
}
