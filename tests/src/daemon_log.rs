//! Reading the daemons' text logs: what the tests and the bench look for in them. Older builds
//! (the bench's `--bin-dir`) wrote ANSI colour codes into log files, so those are skipped.

/// `text` without ANSI colour sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Where each committed segment's bytes came from, from the uploader's log (`source=` of every
/// "segment stored and committed" line): `local_file`, `ingester` or `already_stored`.
pub fn stored_segment_sources(uploader_log: &str) -> Vec<String> {
    uploader_log
        .lines()
        .map(strip_ansi)
        .filter(|line| line.contains("segment stored and committed"))
        .filter_map(|line| {
            let rest = line.split(" source=").nth(1)?;
            Some(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            )
        })
        .collect()
}
