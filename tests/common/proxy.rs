//! A loopback TCP proxy the tests put between a client and a server, and switch to
//! black-hole a link (connections stay open, nothing is forwarded, as after a NAT device
//! dropped the flow) or reset it (every connection closed with a TCP RST, as a restarted
//! middlebox answers) and heal it again, or to delay what it forwards (a slow link).
//!
//! Include with `#[path = "common/proxy.rs"] mod proxy;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    BlackHole,
    /// Open connections are reset and new ones reset on arrival.
    Reset,
}

/// The proxy; it stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Added to every forwarded chunk, in µs.
    delay: Arc<AtomicU64>,
    /// What the faults did: chunks dropped, connections reset.
    counts: Arc<Counts>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    dropped: AtomicU64,
    resets: AtomicU64,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let delay = Arc::new(AtomicU64::new(0));
        let delays = delay.clone();
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let modes = modes.subscribe();
                let delay = delays.clone();
                let counts = counted.clone();
                if *modes.borrow() == Mode::Reset {
                    reset(&client, &counts);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(Ok(server)) =
                        tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(upstream)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let dead = Arc::new(AtomicBool::new(false));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(
                        client_read,
                        server_write,
                        modes.clone(),
                        dead.clone(),
                        delay.clone(),
                        counts.clone(),
                    ));
                    tokio::spawn(pump(server_read, client_write, modes, dead, delay, counts));
                });
            }
        });
        Proxy {
            addr,
            mode,
            delay,
            counts,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every connection, open or new, stops forwarding: bytes are read and dropped.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Every connection, open or new, is closed with a TCP RST (both sides) until [`heal`].
    ///
    /// [`heal`]: Self::heal
    pub fn reset(&self) {
        self.mode.send_replace(Mode::Reset);
    }

    /// Chunks a black hole has dropped so far.
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(SeqCst)
    }

    /// Sockets reset so far (each connection has two).
    pub fn resets(&self) -> u64 {
        self.counts.resets.load(SeqCst)
    }

    /// Forwards again. A connection that lost bytes is closed (as a NAT device answers a flow
    /// it forgot with a reset); the others carry on.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Every byte forwarded from now on, both ways, arrives `delay` after it was read (order
    /// kept).
    pub fn set_delay(&self, delay: Duration) {
        self.delay.store(delay.as_micros() as u64, SeqCst);
    }
}

/// Makes the socket send a RST rather than a FIN once it is dropped.
fn reset(socket: &TcpStream, counts: &Counts) {
    if socket.set_zero_linger().is_ok() {
        counts.resets.fetch_add(1, SeqCst);
    }
}

/// Copies one direction, through a delay line. Once a connection has dropped bytes it never
/// forwards again. In `Reset` mode it resets the socket it reads from and ends (the other
/// direction's pump resets the other socket).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    dead: Arc<AtomicBool>,
    delay: Arc<AtomicU64>,
    counts: Arc<Counts>,
) {
    let (line, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    // Ends once the reader below has ended and what it read has been written.
    tokio::spawn(async move {
        while let Some((due, bytes)) = arrivals.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let current = *mode.borrow();
                if current == Mode::Reset {
                    reset(from.as_ref(), &counts);
                    return;
                }
                if current == Mode::BlackHole || dead.load(SeqCst) {
                    dead.store(true, SeqCst);
                    counts.dropped.fetch_add(1, SeqCst);
                    continue;
                }
                let due = tokio::time::Instant::now() + Duration::from_micros(delay.load(SeqCst));
                if line.send((due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || (*mode.borrow() == Mode::Forward && dead.load(SeqCst)) {
                    return;
                }
                if *mode.borrow() == Mode::Reset {
                    reset(from.as_ref(), &counts);
                    return;
                }
            }
        }
    }
}
