//! Logging for every daemon: `tracing` to stderr (stdout is for what a command prints, and
//! journald and `2>&1` collect stderr alike), text or JSON lines, filtered by `RUST_LOG`.

/// The `log_format` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json` (surrounding spaces ignored); the error says what is allowed.
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} must be text or json")),
        }
    }
}

/// Installs the process-wide subscriber. `default_filter` applies when `RUST_LOG` is unset or
/// invalid (e.g. `info,pulsar=warn` to keep a chatty dependency quiet).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    // Colour codes only on a terminal: in journald or a log file they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(" json "), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::parse("yaml"),
            Err("\"yaml\" must be text or json".to_string())
        );
    }
}
