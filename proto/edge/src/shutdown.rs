//! The graceful stop every daemon honours: Ctrl-C (SIGINT) or SIGTERM, what systemd and container
//! runtimes send.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Completes at the first SIGINT or SIGTERM. The SIGTERM handler is installed by this call, not
/// on the first poll, so a SIGTERM that arrives between start-up and serving stops the daemon
/// gracefully instead of killing it. Must be called inside a tokio runtime.
pub fn signal_received() -> impl Future<Output = ()> + Send + 'static {
    let sigterm = signal(SignalKind::terminate());
    async move {
        let terminate = async {
            match sigterm {
                Ok(mut sigterm) => {
                    sigterm.recv().await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the daemon");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            result = tokio::signal::ctrl_c() => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "cannot listen for Ctrl-C");
                    std::future::pending::<()>().await;
                }
            }
            () = terminate => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn completes_on_sigterm() -> std::io::Result<()> {
        let stop = signal_received();
        // The handler is installed now, so the signal below reaches it instead of ending the
        // test process. Sent with kill(1): no unsafe code for a libc call.
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()?;
        assert!(sent.success(), "kill -TERM failed: {sent}");
        assert!(
            tokio::time::timeout(Duration::from_secs(10), stop)
                .await
                .is_ok(),
            "SIGTERM did not complete the shutdown future"
        );
        Ok(())
    }
}
