//! The TDMQ console's own backup limits, which tdmq-backup deliberately goes beyond: what a rule
//! outside them means, so ctl can say so without refusing it.

use super::RuleConfig;

impl RuleConfig {
    /// Where the rule leaves what the TDMQ console's own backup offers (windows of 5–15 min, at
    /// most 5,000 messages and 500 MB per file), each with why that may be fine. Not errors:
    /// tdmq-backup accepts the wider ranges on purpose.
    pub fn beyond_console_limits(&self) -> Vec<String> {
        const CONSOLE_WINDOW_SECS: std::ops::RangeInclusive<u64> = 300..=900;
        const CONSOLE_MAX_MESSAGES: u64 = 5_000;
        const CONSOLE_MAX_BYTES: u64 = 500_000_000;
        let mut notes = Vec::new();
        if !CONSOLE_WINDOW_SECS.contains(&self.window_secs) {
            let window =
                humantime::format_duration(std::time::Duration::from_secs(self.window_secs));
            notes.push(if self.window_secs < *CONSOLE_WINDOW_SECS.start() {
                format!("window {window} is shorter than the console's 5-15 min: more, smaller objects (more PUT requests and listing work); fine for tests and low-latency backups")
            } else {
                format!("window {window} is longer than the console's 5-15 min: messages wait longer in the spool before they are stored and acknowledged; fine when the backlog quota and spool disk allow it")
            });
        }
        if self.max_messages > CONSOLE_MAX_MESSAGES {
            notes.push(format!("max_messages {} is above the console's 5000 per file: fewer, bigger objects; fine if the tools that read them cope", self.max_messages));
        }
        if self.max_bytes > CONSOLE_MAX_BYTES {
            notes.push(format!("max_bytes {} is above the console's 500 MB per file: objects above the uploader's multipart threshold are sent in parts; fine if the tools that read them cope", self.max_bytes));
        }
        notes
    }
}
