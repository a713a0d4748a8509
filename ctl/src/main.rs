//! `tdmq-backup`: the operator's CLI. Parses, runs one command, prints its result on stdout
//! (a table, or exactly one JSON document) or one `error: ...` line on stderr.

mod cli;
mod client;
mod commands;
mod exit;
mod output;
mod progress;
mod table;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits 2, as the contract expects.
    let cli = cli::Cli::parse();
    let format = cli.output;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::execute(cli)));
    match result {
        // `status --watch` and `logs --follow` printed as they went.
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(report)) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not worth a second error line.
            let _ = writeln!(stdout, "{}", report.render(format));
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(partial) = e.downcast_ref::<exit::Partial>() {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{}", partial.report.render(format));
                let _ = stdout.flush();
            }
            // `{:#}` joins the context chain; one line, as scripts and the contract expect.
            eprintln!("error: {}", client::one_line(&format!("{e:#}")));
            exit::of(&e).into()
        }
    }
}
