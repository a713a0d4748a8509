//! Loopback ports the harness keeps for itself, so no other process can take them.
//!
//! Finding a free port by binding port 0 and releasing it is a race: with other work on the
//! machine, another process (or an outgoing connection) can get the port before it is bound
//! again. The harness binds port 0 and keeps what it got instead. A [`PortHold`] keeps a port
//! bound without listening on it: connections to it are refused, and the kernel gives it to no
//! other port-0 bind and no outgoing connection.
//!
//! On Linux a server can still bind and listen on a held port when both sockets set
//! `SO_REUSEADDR` (tokio's and std's listeners do, and so does pulsar-lite) and the held one never
//! listens. So a held port can be handed to a child process and taken back when it exits, without
//! ever being free. Elsewhere that bind fails; [`PortHold::make_bindable`] then lets the port go
//! first, which is the old race.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;

/// A loopback port kept bound (and not listening) until dropped.
#[derive(Debug)]
pub struct PortHold {
    addr: SocketAddr,
    socket: Option<tokio::net::TcpSocket>,
}

impl PortHold {
    /// A port the kernel picks on 127.0.0.1 (bound to port 0, kept).
    pub fn any() -> anyhow::Result<PortHold> {
        Self::on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Holds `addr` (port 0: one the kernel picks). Fails if anything else has it bound.
    pub fn on(addr: SocketAddr) -> anyhow::Result<PortHold> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .context("creating a socket to hold a port")?;
        socket
            .set_reuseaddr(true)
            .context("setting SO_REUSEADDR on a held port")?;
        socket
            .bind(addr)
            .with_context(|| format!("holding {addr}"))?;
        let addr = socket
            .local_addr()
            .context("reading the held port's address")?;
        Ok(PortHold {
            addr,
            socket: Some(socket),
        })
    }

    /// The held address: `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Lets a server (this process's or a child's) bind the port. On Linux it can while the
    /// hold stays, so this does nothing; elsewhere the port is released, and another process
    /// could take it before the server binds it.
    pub fn make_bindable(&mut self) {
        if !cfg!(target_os = "linux") {
            self.socket = None;
        }
    }
}

/// Where a daemon's port is held while the daemon is down, so that it can be started again on
/// the address its clients know (see [`crate::Daemon::keep_port_when_gone`]). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct PortKeeper(Arc<Mutex<Option<PortHold>>>);

impl PortKeeper {
    pub fn new() -> PortKeeper {
        PortKeeper::default()
    }

    /// Holds `addr`, which its owner has just released. Best effort: if something else bound it
    /// in between, nothing is held (and starting the owner there again will say so).
    pub fn hold(&self, addr: SocketAddr) {
        let hold = PortHold::on(addr).ok();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = hold;
    }

    /// Lets the port go (its owner listens on it again), or makes it bindable off Linux (see
    /// [`PortHold::make_bindable`]).
    pub fn release(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// [`PortHold::make_bindable`] on what is held.
    pub fn make_bindable(&self) {
        if let Some(hold) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            hold.make_bindable();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket without `SO_REUSEADDR`, as most programs bind.
    fn plain_bind(addr: SocketAddr) -> std::io::Result<()> {
        tokio::net::TcpSocket::new_v4()?.bind(addr)
    }

    #[tokio::test]
    async fn a_held_port_refuses_connections_and_only_its_server_binds_it() {
        let mut hold = PortHold::any().expect("hold");
        assert_ne!(hold.port(), 0);
        assert!(tokio::net::TcpStream::connect(hold.addr()).await.is_err());
        assert!(plain_bind(hold.addr()).is_err(), "bound a held port");

        hold.make_bindable();
        let listener = tokio::net::TcpListener::bind(hold.addr())
            .await
            .expect("a server binds the held port");
        let (client, accepted) = tokio::join!(
            tokio::net::TcpStream::connect(hold.addr()),
            listener.accept()
        );
        client.expect("connected");
        accepted.expect("accepted");
        drop(listener);
        if cfg!(target_os = "linux") {
            assert!(
                tokio::net::TcpStream::connect(hold.addr()).await.is_err(),
                "refused again once the server is gone"
            );
            assert!(plain_bind(hold.addr()).is_err(), "still held");
        }
    }
}
