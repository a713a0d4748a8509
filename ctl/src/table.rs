//! Aligned tables that fit the terminal.
//!
//! By default a table shows its narrow set of columns and, when it knows the width (a terminal,
//! or `COLUMNS`), shrinks the columns that can lose text until the rows fit: free text loses its
//! end, object keys their middle (the date path and the file name are what tell keys apart).
//! `-o wide` shows every column and never shortens a cell. Output to a pipe or file has no width,
//! so nothing is shortened there either.

use std::io::IsTerminal as _;

// Line breaks and tabs in a cell would break the alignment.
use crate::client::one_line;

/// How a column's cells may be shortened to make the row fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Never: numbers, states, names.
    Keep,
    /// Loses its end, marked `…`: free text such as an error.
    End,
    /// Loses its middle, marked `…`: object keys, topics.
    Middle,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub header: &'static str,
    pub fit: Fit,
    /// Shown only with `-o wide`.
    pub wide_only: bool,
}

impl Column {
    pub const fn keep(header: &'static str) -> Column {
        Column {
            header,
            fit: Fit::Keep,
            wide_only: false,
        }
    }

    pub const fn end(header: &'static str) -> Column {
        Column {
            header,
            fit: Fit::End,
            wide_only: false,
        }
    }

    pub const fn middle(header: &'static str) -> Column {
        Column {
            header,
            fit: Fit::Middle,
            wide_only: false,
        }
    }

    pub const fn wide(self) -> Column {
        Column {
            wide_only: true,
            ..self
        }
    }
}

/// How tables are laid out for this run of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Characters per line, if known.
    pub width: Option<usize>,
    /// Every column, nothing shortened.
    pub wide: bool,
    pub headers: bool,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            width: None,
            wide: false,
            headers: true,
        }
    }
}

impl Layout {
    /// The width from `COLUMNS` (as shells export it, and for tests), else stdout's terminal.
    pub fn detect(wide: bool, headers: bool) -> Layout {
        let from_env = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&c| c > 0);
        let width = from_env.or_else(|| {
            let stdout = std::io::stdout();
            if !stdout.is_terminal() {
                return None;
            }
            terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0))
        });
        Layout {
            width,
            wide,
            headers,
        }
    }
}

/// Columns never shrink below this (or their header, if longer).
const MIN_SHRUNK: usize = 12;
const GAP: usize = 2;

/// Renders `rows` (one cell per column, in `columns`' order) under `layout`. Empty cells show as
/// `-` so columns stay readable.
pub fn render(columns: &[Column], rows: &[Vec<String>], layout: &Layout) -> String {
    let rows: Vec<(&[String], bool)> = rows.iter().map(|r| (r.as_slice(), false)).collect();
    render_rows(columns, &rows, layout)
}

/// Like [`render`], but a row marked `true` keeps its last cell whole however long it is (an
/// error's cause must not be cut); the terminal wraps it.
pub fn render_rows(columns: &[Column], rows: &[(&[String], bool)], layout: &Layout) -> String {
    let shown: Vec<usize> = (0..columns.len())
        .filter(|&i| layout.wide || !columns[i].wide_only)
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(row, _)| {
            shown
                .iter()
                .map(|&i| match row.get(i).map(|c| one_line(c)) {
                    Some(c) if !c.is_empty() => c,
                    _ => "-".to_string(),
                })
                .collect()
        })
        .collect();
    let headers: Vec<&str> = shown.iter().map(|&i| columns[i].header).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let last = shown.len().saturating_sub(1);
    for (row, (_, whole)) in cells.iter().zip(rows) {
        for (i, (w, c)) in widths.iter_mut().zip(row).enumerate() {
            if !(*whole && i == last) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let fits: Vec<Fit> = shown.iter().map(|&i| columns[i].fit).collect();
    if let (Some(width), false) = (layout.width, layout.wide) {
        shrink(&mut widths, &fits, &headers, width);
    }
    let line = |cells: &[String], whole: bool| -> String {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let fit = if whole && i == last {
                Fit::Keep
            } else {
                fits.get(i).copied().unwrap_or(Fit::Keep)
            };
            let c = clip(c, w, fit);
            if i + 1 == cells.len() {
                // No trailing spaces on the last column.
                out.push_str(&c);
            } else {
                out.push_str(&format!("{c:<w$}{:GAP$}", ""));
            }
        }
        out
    };
    let mut lines = Vec::with_capacity(cells.len() + 1);
    if layout.headers {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        lines.push(line(&headers, false));
    }
    lines.extend(
        cells
            .iter()
            .zip(rows)
            .map(|(row, (_, whole))| line(row, *whole)),
    );
    lines.join("\n")
}

/// Narrows the shrinkable columns, widest first, until the line fits `width` or none can lose
/// more. A table that still does not fit is printed as it is and wraps.
fn shrink(widths: &mut [usize], fits: &[Fit], headers: &[&str], width: usize) {
    let total =
        |widths: &[usize]| widths.iter().sum::<usize>() + GAP * widths.len().saturating_sub(1);
    let floor = |i: usize| MIN_SHRUNK.max(headers.get(i).map_or(0, |h| h.chars().count()));
    while total(widths) > width {
        let widest = (0..widths.len())
            .filter(|&i| fits.get(i).is_some_and(|f| *f != Fit::Keep) && widths[i] > floor(i))
            .max_by_key(|&i| widths[i]);
        let Some(i) = widest else { return };
        widths[i] -= 1;
    }
}

/// `text` in at most `width` characters, shortened as `fit` says.
pub fn clip(text: &str, width: usize, fit: Fit) -> String {
    let len = text.chars().count();
    if len <= width || fit == Fit::Keep || width == 0 {
        return text.to_string();
    }
    let keep = width - 1;
    match fit {
        Fit::Keep => text.to_string(),
        Fit::End => {
            let mut out: String = text.chars().take(keep).collect();
            out.push('…');
            out
        }
        Fit::Middle => {
            // Two thirds for the end: keys share their leading path and differ in the file name.
            let head = keep / 3;
            let tail = keep - head;
            let mut out: String = text.chars().take(head).collect();
            out.push('…');
            out.extend(text.chars().skip(len - tail));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLUMNS: [Column; 4] = [
        Column::keep("NAME"),
        Column::keep("STATE"),
        Column::middle("KEY").wide(),
        Column::end("LAST-ERROR"),
    ];

    fn rows() -> Vec<Vec<String>> {
        vec![vec![
            "orders".into(),
            "running".into(),
            "backup/public/default/orders/2026/12/02/10/orders-20261202T100000Z-2_0_-1_50-91c2.jsonl.gz".into(),
            "3s ago: lost the connection to Pulsar at pulsar://10.0.0.1:6650: connection refused".into(),
        ]]
    }

    fn at(width: usize) -> Layout {
        Layout {
            width: Some(width),
            ..Layout::default()
        }
    }

    #[test]
    fn narrow_tables_fit_the_width_and_drop_wide_columns() {
        let text = render(&COLUMNS, &rows(), &at(60));
        for line in text.lines() {
            assert!(line.chars().count() <= 60, "{line:?} is longer than 60");
        }
        assert!(!text.contains("KEY"), "{text}");
        assert!(text.contains("3s ago: lost the"), "{text}");
        assert!(text.ends_with('…'), "{text}");
    }

    #[test]
    fn wide_shows_every_column_whole() {
        let layout = Layout {
            wide: true,
            ..at(60)
        };
        let text = render(&COLUMNS, &rows(), &layout);
        assert!(text.contains("KEY"));
        assert!(text.contains("orders-20261202T100000Z-2_0_-1_50-91c2.jsonl.gz"));
        assert!(text.contains("connection refused"));
    }

    #[test]
    fn without_a_width_nothing_is_shortened() {
        let text = render(&COLUMNS, &rows(), &Layout::default());
        assert!(text.contains("connection refused"), "{text}");
    }

    #[test]
    fn keys_lose_their_middle_and_keep_the_file_name() {
        let key =
            "backup/public/default/orders/2026/12/02/10/orders-20261202T100000Z-2_0_-1_50.jsonl.gz";
        let short = clip(key, 40, Fit::Middle);
        assert_eq!(short.chars().count(), 40);
        assert!(short.starts_with("backup/"), "{short}");
        assert!(short.ends_with("Z-2_0_-1_50.jsonl.gz"), "{short}");
        assert!(short.ends_with("-2_0_-1_50.jsonl.gz"), "{short}");
        assert_eq!(clip("short", 40, Fit::Middle), "short");
        assert_eq!(clip("abcdef", 4, Fit::End), "abc…");
        assert_eq!(clip("abcdef", 4, Fit::Keep), "abcdef");
    }

    #[test]
    fn columns_keep_their_header_width_and_a_floor() {
        let text = render(&COLUMNS, &rows(), &at(10));
        let header = text.lines().next().unwrap_or_default();
        assert!(header.contains("LAST-ERROR"), "{header}");
        let row = text.lines().nth(1).unwrap_or_default();
        assert!(row.ends_with('…'));
        assert_eq!(
            row.split("  ").last().map(|c| c.chars().count()),
            Some(MIN_SHRUNK)
        );
    }

    #[test]
    fn a_whole_row_keeps_its_last_cell() {
        let cols = [Column::keep("AT"), Column::middle("KEY/ERROR")];
        let error =
            "upload failed: PutObject: service error: SlowDown: please reduce your request rate"
                .to_string();
        let key = "backup/public/default/orders/2026/12/02/10/orders-20261202T100000Z.jsonl.gz"
            .to_string();
        let time = "2026-12-02T10:00:00Z".to_string();
        let failed = [time.clone(), error.clone()];
        let stored = [time, key];
        let text = render_rows(&cols, &[(&failed[..], true), (&stored[..], false)], &at(50));
        assert!(text.contains(&error), "{text}");
        let key_line = text.lines().last().unwrap_or_default();
        assert_eq!(key_line.chars().count(), 50, "{key_line}");
        assert!(key_line.ends_with("Z.jsonl.gz"), "{key_line}");
    }

    #[test]
    fn no_headers_and_empty_cells() {
        let layout = Layout {
            headers: false,
            ..Layout::default()
        };
        let text = render(
            &[Column::keep("A"), Column::keep("B")],
            &[vec!["x".into(), String::new()]],
            &layout,
        );
        assert_eq!(text, "x  -");
    }

    #[test]
    fn cells_are_aligned() {
        let text = render(
            &[
                Column::keep("A"),
                Column::keep("LONG-HEADER"),
                Column::keep("C"),
            ],
            &[
                vec!["xxxx".into(), "".into(), "z".into()],
                vec!["y".into(), "b".into(), "".into()],
            ],
            &Layout::default(),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "A     LONG-HEADER  C",
                "xxxx  -            z",
                "y     b            -"
            ]
        );
    }
}
