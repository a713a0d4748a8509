//! Progress of a command that waits (a drain, `rule flush --wait`), on stderr so stdout keeps
//! only the result. On a terminal a spinner line is redrawn in place; elsewhere (a log file, a
//! CI job) a plain line is printed when the message changes, at most every few seconds.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Between two plain lines when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    spinner: Option<ProgressBar>,
    last_plain: Option<(Instant, String)>,
}

impl Progress {
    pub fn start(first: &str) -> Progress {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let spinner = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
                spinner.set_style(style);
            }
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        let mut progress = Progress {
            spinner,
            last_plain: None,
        };
        progress.update(first);
        progress
    }

    pub fn update(&mut self, message: &str) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(message.to_string());
            return;
        }
        let due = match &self.last_plain {
            None => true,
            Some((at, last)) => last != message && at.elapsed() >= PLAIN_EVERY,
        };
        if due {
            eprintln!("{message}");
            self.last_plain = Some((Instant::now(), message.to_string()));
        }
    }

    /// Clears the spinner; the command's result follows on stdout.
    pub fn finish(self) {
        if let Some(spinner) = self.spinner {
            spinner.finish_and_clear();
        }
    }
}
