//! One module per command group. Each command returns a [`Report`]; main prints it.

pub mod completions;
mod fleet;
pub mod logs;
pub mod restore;
pub mod rule;
pub mod segments;
pub mod status;
pub mod verify;

use crate::cli::{Cli, Command, OutputFormat};
use crate::client::{self, Auth, Daemon, Tls};
use crate::output::Report;
use crate::table::Layout;

/// What every command needs from the global flags.
#[derive(Clone)]
pub struct Ctx {
    /// The ingester a command talks to: the first `--ingester` (or, when several are listed and
    /// the command goes to each, the one this copy is for).
    pub ingester: Daemon,
    /// Every `--ingester` listed, in order, each once.
    pub ingesters: Vec<Daemon>,
    pub uploader: Daemon,
    pub auth: Auth,
    pub tls: Tls,
    pub format: OutputFormat,
    pub layout: Layout,
    /// Per call; see `--timeout`.
    pub timeout: std::time::Duration,
}

impl Ctx {
    pub fn new(cli: &Cli) -> anyhow::Result<Ctx> {
        let mut urls: Vec<&str> = Vec::new();
        for url in cli.ingester.iter().map(|u| u.trim()) {
            if url.is_empty() {
                anyhow::bail!(
                    "--ingester: an empty URL in the list {:?}",
                    cli.ingester.join(",")
                );
            }
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        let ingesters: Vec<Daemon> = urls.into_iter().map(Daemon::ingester).collect();
        let ingester = ingesters
            .first()
            .cloned()
            .unwrap_or_else(|| Daemon::ingester(crate::cli::DEFAULT_INGESTER));
        Ok(Ctx {
            ingester,
            ingesters,
            uploader: Daemon::uploader(&cli.uploader),
            auth: Auth::from_token_file(cli.control_token_file())?,
            tls: Tls {
                ca_file: cli.ca_file.clone().filter(|p| !p.as_os_str().is_empty()),
                domain: cli.tls_domain.clone().filter(|d| !d.trim().is_empty()),
            },
            format: cli.output,
            layout: Layout::detect(cli.output == OutputFormat::Wide, !cli.no_headers),
            timeout: cli.timeout,
        })
    }

    pub async fn ingester(&self) -> anyhow::Result<client::Ingester> {
        self.ingester_waiting(std::time::Duration::ZERO).await
    }

    /// A client whose calls may take `extra` longer than `--timeout` (a drain).
    pub async fn ingester_waiting(
        &self,
        extra: std::time::Duration,
    ) -> anyhow::Result<client::Ingester> {
        let timeout = self.timeout.saturating_add(extra);
        client::ingester(&self.ingester, &self.tls, self.auth.clone(), timeout).await
    }

    pub async fn uploader(&self) -> anyhow::Result<client::Uploader> {
        client::uploader(&self.uploader, &self.tls, self.auth.clone(), self.timeout).await
    }
}

/// Runs the command. `None`: it printed its own output as it went (`status --watch`,
/// `logs --follow`) and there is nothing left to print.
pub async fn execute(cli: Cli) -> anyhow::Result<Option<Report>> {
    if cli.output == OutputFormat::Toml
        && !matches!(
            cli.command,
            Command::Rule(crate::cli::RuleCommand::Show { .. })
        )
    {
        anyhow::bail!("-o toml is only for `rule show`: other commands print table, wide or json");
    }
    match &cli.command {
        Command::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = std::io::Write::write_all(&mut stdout, &completions::script(*shell));
            Ok(None)
        }
        Command::Status {
            name,
            watch: Some(every),
        } => {
            let ctx = Ctx::new(&cli)?;
            status::watch(&ctx, name.clone(), *every).await?;
            Ok(None)
        }
        Command::Logs(args) if args.follow => {
            let ctx = Ctx::new(&cli)?;
            if ctx.ingesters.len() > 1 {
                anyhow::bail!(
                    "logs --follow follows one ingester: give one --ingester (without --follow, \
                     logs merges every listed ingester's history)"
                );
            }
            logs::follow(&ctx, args).await?;
            Ok(None)
        }
        _ => run(cli).await.map(Some),
    }
}

/// Runs a command that prints one result (a `--watch`/`--follow` command prints its first).
pub async fn run(cli: Cli) -> anyhow::Result<Report> {
    let ctx = Ctx::new(&cli)?;
    if ctx.ingesters.len() > 1 {
        match &cli.command {
            Command::Rule(_) | Command::Segments { .. } => {
                return fleet::each_ingester(&ctx, |one| run_on(one, cli.command.clone())).await;
            }
            Command::Status { name, .. } => return fleet::status(&ctx, name.clone()).await,
            Command::Logs(args) => return fleet::logs(&ctx, args.clone()).await,
            // Restore sends the target to the first ingester (the one the uploader talks to);
            // verify and completions do not involve the ingesters.
            Command::Restore(_) | Command::Verify { .. } | Command::Completions { .. } => {}
        }
    }
    run_on(ctx, cli.command).await
}

/// Runs `command` with `ctx`'s one ingester.
async fn run_on(ctx: Ctx, command: Command) -> anyhow::Result<Report> {
    let ctx = &ctx;
    match command {
        Command::Rule(cmd) => rule::run(ctx, cmd).await,
        Command::Status { name, .. } => status::run(ctx, name).await,
        Command::Logs(args) => logs::run(ctx, args).await,
        Command::Segments { name } => segments::run(ctx, name).await,
        Command::Restore(cmd) => restore::run(ctx, cmd).await,
        Command::Verify {
            name,
            from,
            to,
            deep,
        } => {
            verify::run(
                ctx,
                verify::VerifyArgs {
                    name,
                    from,
                    to,
                    deep,
                },
            )
            .await
        }
        Command::Completions { .. } => {
            anyhow::bail!("completions are printed by `execute`, not run as a command")
        }
    }
}

#[cfg(test)]
mod fake_tests;
