//! Networked transport: the three parties in separate processes over TCP with TLS 1.3.
//!
//! - [`pki`]: a fresh CA per session, one certificate per role (SAN `relushare-party-R`), key
//!   files written atomically with owner-only permissions.
//! - [`tls`]: TLS 1.3-only configurations (ring provider), mutual authentication against the
//!   session CA, the peer's role taken from its certificate and checked against the expected one,
//!   and a session hello (session id + role) checked by both ends before anything else is sent.
//! - [`frame`]: length-prefixed frames with a maximum size checked before allocating.
//! - [`serve`]: private inference as a service: long-running owner and helper servers, clients
//!   that come and go, deployment keys with client identities, a deny list, admission control,
//!   per-session limits, and the load driver of `relushare bench --serve`.
//! - [`TlsTransport`]: the established mesh. Topology is deterministic: party `i` listens for
//!   every higher role and connects to every lower one (P0 listens, P1 listens and connects to P0,
//!   P2 connects to both). Connection attempts are retried until the deadline (`timeout` after
//!   start); afterwards every receive waits at most `timeout`, and writes that cannot make
//!   progress for `timeout` fail. Errors name the peer.
//! - [`emu`]: user-space network emulation (no `tc netem` needed): a shaping TCP relay with a
//!   per-direction one-way delay and token-bucket bandwidth cap, and the `lan`/`wan` profiles.
//! - [`launch`]: runs the three parties as separate `relushare party` processes on loopback,
//!   directly or through relays (an emulated network), and sums their reports.
//!
//! The protocols never see any of this: they run over a metered [`crate::transport::Transport`];
//! the in-process, TLS and emulated-network transports differ only below that line.

pub mod emu;
pub mod error;
pub mod frame;
pub mod launch;
mod link;
pub mod masks;
pub mod pki;
pub mod serve;
pub mod session;
#[cfg(test)]
mod tests;
pub mod tls;

pub use error::NetError;
pub use pki::{PartyKeys, PARTIES};

use error::{pname, UNIDENTIFIED};
use link::Link;
use rustls::Connection;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default timeout (connection deadline, read and write timeouts).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything one party needs to join the mesh.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// This party's credentials (its role is `keys.role`).
    pub keys: PartyKeys,
    /// Session id both ends must present (normally `keys.session_id`).
    pub session_id: String,
    /// Addresses of the lower-role parties this one connects to.
    pub peers: BTreeMap<usize, String>,
    /// Connection deadline and per-operation read/write timeout.
    pub timeout: Duration,
    /// Deadline for establishing all connections (from the start of `connect`); `None` means
    /// `timeout`.
    pub connect_timeout: Option<Duration>,
    /// Largest accepted message.
    pub max_frame: u64,
}

impl NetConfig {
    /// A configuration with the keys' session id, default timeout and frame limit.
    pub fn new(keys: PartyKeys, peers: BTreeMap<usize, String>) -> Self {
        let session_id = keys.session_id.clone();
        NetConfig {
            keys,
            session_id,
            peers,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            max_frame: frame::DEFAULT_MAX_FRAME,
        }
    }
}

impl NetConfig {
    /// The connection deadline.
    pub fn connect_window(&self) -> Duration {
        self.connect_timeout.unwrap_or(self.timeout)
    }
}

/// Parses `ROLE=ADDR[,ROLE=ADDR...]` (e.g. `0=127.0.0.1:7000,1=127.0.0.1:7001`).
pub fn parse_peers(s: &str) -> Result<BTreeMap<usize, String>, NetError> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (r, a) = item.split_once('=').ok_or_else(|| {
            NetError::Config(format!("peer {item:?} must look like ROLE=HOST:PORT"))
        })?;
        let role: usize = r
            .trim()
            .parse()
            .ok()
            .filter(|r| *r < PARTIES)
            .ok_or_else(|| NetError::Config(format!("peer role {r:?} must be 0, 1 or 2")))?;
        if out.insert(role, a.trim().to_string()).is_some() {
            return Err(NetError::Config(format!("peer role {role} given twice")));
        }
    }
    Ok(out)
}

type SetupResult = Result<(usize, Connection, TcpStream), (usize, NetError)>;

/// A party's TLS connections to the other two parties.
pub struct TlsTransport {
    role: usize,
    links: Vec<Option<Link>>,
    /// Split into lanes ([`TlsTransport::lanes`]): whole-mesh messages are refused.
    laned: bool,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Binds the listening socket of a party (do this before starting peers to avoid races).
pub fn bind(addr: &str) -> Result<TcpListener, NetError> {
    TcpListener::bind(addr).map_err(|e| NetError::Config(format!("cannot listen on {addr}: {e}")))
}

fn resolve(addr: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(addr.to_socket_addrs()?.collect())
}

fn connect_one(
    peer: usize,
    addr: &str,
    cfg: &NetConfig,
    client: &Arc<rustls::ClientConfig>,
    deadline: Instant,
) -> Result<(usize, Connection, TcpStream), NetError> {
    let mut backoff = Duration::from_millis(50);
    let sock = loop {
        let now = Instant::now();
        let remaining = deadline.saturating_duration_since(now);
        let attempt = resolve(addr).and_then(|addrs| {
            let mut last =
                std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing");
            for a in addrs {
                match TcpStream::connect_timeout(
                    &a,
                    remaining.clamp(Duration::from_millis(10), Duration::from_secs(2)),
                ) {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
            Err(last)
        });
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() + backoff >= deadline {
                    return Err(NetError::NotConnected {
                        peer,
                        secs: cfg.connect_window().as_secs_f64(),
                        detail: format!("cannot connect to {addr}: {e}"),
                    });
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    };
    let conn = tls::client_conn(client, peer)?;
    tls::handshake(
        sock,
        conn,
        &[peer],
        cfg.keys.role,
        &cfg.session_id,
        deadline,
        cfg.timeout,
    )
}

impl TlsTransport {
    /// Establishes the connections of party `cfg.keys.role`. `listener` is required for P0 and
    /// P1 (they accept the higher roles). Fails if any peer is not authenticated before the
    /// deadline; refused incoming connections (wrong CA, wrong role, other session) are listed
    /// in the error.
    pub fn connect(
        cfg: &NetConfig,
        listener: Option<TcpListener>,
    ) -> Result<TlsTransport, NetError> {
        let role = cfg.keys.role;
        if role >= PARTIES {
            return Err(NetError::Config(format!(
                "role must be 0, 1 or 2 (got {role})"
            )));
        }
        pki::validate_session_id(&cfg.session_id)?;
        let incoming: Vec<usize> = (role + 1..PARTIES).collect();
        let outgoing: Vec<usize> = (0..role).collect();
        for j in &outgoing {
            if !cfg.peers.contains_key(j) {
                return Err(NetError::Config(format!(
                    "party {role} needs the address of party {j} (--peers {j}=HOST:PORT)"
                )));
            }
        }
        if !incoming.is_empty() && listener.is_none() {
            return Err(NetError::Config(format!(
                "party {role} must listen (--listen HOST:PORT) for the parties above it"
            )));
        }
        let start = Instant::now();
        let deadline = start + cfg.connect_window();
        let tls_cfg = |e: rustls::Error| NetError::Config(format!("TLS configuration: {e}"));
        let (tx, rx) = mpsc::channel::<SetupResult>();
        let stop = Arc::new(AtomicBool::new(false));

        if let Some(listener) = listener.filter(|_| !incoming.is_empty()) {
            let server = tls::server_config(&cfg.keys).map_err(tls_cfg)?;
            listener
                .set_nonblocking(true)
                .map_err(|e| NetError::Config(format!("listener: {e}")))?;
            let (tx, stop, incoming) = (tx.clone(), stop.clone(), incoming.clone());
            let (sid, timeout) = (cfg.session_id.clone(), cfg.timeout);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((sock, from)) => {
                            let (tx, server, incoming, sid) =
                                (tx.clone(), server.clone(), incoming.clone(), sid.clone());
                            std::thread::spawn(move || {
                                let r = sock
                                    .set_nonblocking(false)
                                    .map_err(|e| NetError::io(UNIDENTIFIED, e, "accept", timeout))
                                    .and_then(|_| tls::server_conn(&server))
                                    .and_then(|conn| {
                                        tls::handshake(
                                            sock, conn, &incoming, role, &sid, deadline, timeout,
                                        )
                                    });
                                let _ = tx.send(r.map_err(|e| {
                                    (
                                        UNIDENTIFIED,
                                        NetError::Refused {
                                            peer: format!("the connection from {from}"),
                                            reason: e.to_string(),
                                        },
                                    )
                                }));
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            });
        }
        if !outgoing.is_empty() {
            let client = tls::client_config(&cfg.keys).map_err(tls_cfg)?;
            for &j in &outgoing {
                let (tx, client, cfg) = (tx.clone(), client.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let addr = cfg.peers[&j].clone();
                    let _ =
                        tx.send(connect_one(j, &addr, &cfg, &client, deadline).map_err(|e| (j, e)));
                });
            }
        }
        drop(tx);

        let mut links: Vec<Option<Link>> = (0..PARTIES).map(|_| None).collect();
        let mut refusals: Vec<String> = Vec::new();
        let missing = |links: &Vec<Option<Link>>| {
            (0..PARTIES)
                .filter(|&j| j != role && links[j].is_none())
                .collect::<Vec<_>>()
        };
        let result = loop {
            let miss = missing(&links);
            if miss.is_empty() {
                break Ok(());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(Ok((j, conn, sock))) => {
                    if links[j].is_some() {
                        refusals.push(format!("a second connection from {} was dropped", pname(j)));
                        continue;
                    }
                    match Link::new(j, conn, sock, cfg.timeout, cfg.max_frame) {
                        Ok(l) => links[j] = Some(l),
                        Err(e) => break Err(e),
                    }
                }
                // Our own dial failed or was refused: final.
                Ok(Err((j, e))) if j != UNIDENTIFIED => break Err(e),
                // An incoming connection was refused; keep waiting for the genuine peer.
                Ok(Err((_, e))) => refusals.push(e.to_string()),
                Err(_) => {
                    let j = miss[0];
                    let detail = if refusals.is_empty() {
                        if j > role {
                            "it never connected".to_string()
                        } else {
                            "the connection was not established".to_string()
                        }
                    } else {
                        format!(
                            "refused {} connection(s): {}",
                            refusals.len(),
                            refusals.join("; ")
                        )
                    };
                    break Err(NetError::NotConnected {
                        peer: j,
                        secs: cfg.connect_window().as_secs_f64(),
                        detail,
                    });
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        match result {
            Ok(()) => Ok(TlsTransport {
                role,
                links,
                laned: false,
            }),
            Err(e) => {
                for l in links.iter_mut().flatten() {
                    l.abort();
                }
                Err(e)
            }
        }
    }

    /// This party's role.
    pub fn role(&self) -> usize {
        self.role
    }

    /// The read/write timeout of the connections.
    pub fn timeout(&self) -> Duration {
        self.links
            .iter()
            .flatten()
            .next()
            .map_or(DEFAULT_TIMEOUT, |l| l.timeout())
    }

    fn link(&mut self, peer: usize) -> Result<&mut Link, NetError> {
        let me = self.role;
        self.links
            .get_mut(peer)
            .and_then(|l| l.as_mut())
            .ok_or(NetError::NoPeer { me, peer })
    }

    /// Queues a message for `to` without waiting for it to be read.
    pub fn send_msg(&mut self, to: usize, msg: &[u8]) -> Result<(), NetError> {
        if self.laned {
            return Err(NetError::Config(
                "internal: a whole-mesh message on a mesh split into lanes".into(),
            ));
        }
        self.link(to)?.send(msg)
    }

    /// Splits the mesh into `k` lanes (at most 255): independent ordered message streams to the
    /// same peers over the same connections (so through the same relays and shaping), each a
    /// [`crate::transport::Transport`] for its own thread. A message carries its lane as one
    /// trailing byte (framing, not payload: not counted); one demultiplexing thread per peer
    /// sorts the received messages into the lanes. Sending locks the mesh only while a message
    /// is encrypted and queued. Every receive waits at most the mesh's timeout and gives up
    /// early once `cancel` is set. From then on the mesh itself neither sends nor receives
    /// messages (close it as usual at the end).
    pub fn lanes(
        mesh: &Arc<Mutex<TlsTransport>>,
        k: usize,
        cancel: &crate::transport::CancelToken,
    ) -> Result<Vec<LaneTransport>, NetError> {
        if k == 0 || k > 255 {
            return Err(NetError::Config(format!("{k} lanes (1 to 255)")));
        }
        let mut t = mesh
            .lock()
            .map_err(|_| NetError::Config("mesh lock poisoned".into()))?;
        if t.laned {
            return Err(NetError::Config(
                "the mesh is already split into lanes".into(),
            ));
        }
        t.laned = true;
        let role = t.role;
        let mut rx: Vec<[Option<mpsc::Receiver<link::Inbox>>; 3]> =
            (0..k).map(|_| Default::default()).collect();
        let mut timeout = DEFAULT_TIMEOUT;
        for (peer, l) in t.links.iter_mut().enumerate() {
            let Some(l) = l.as_mut() else { continue };
            timeout = l.timeout();
            let inbox = l.take_inbox();
            let mut tx = Vec::with_capacity(k);
            for lane in rx.iter_mut() {
                let (s, r) = mpsc::channel();
                tx.push(s);
                lane[peer] = Some(r);
            }
            std::thread::Builder::new()
                .name(format!("net-lanes-P{peer}"))
                .spawn(move || demux(peer, &inbox, &tx))
                .map_err(|e| NetError::Config(format!("cannot start a lane thread: {e}")))?;
        }
        Ok(rx
            .into_iter()
            .enumerate()
            .map(|(lane, rx)| LaneTransport {
                role,
                lane: lane as u8,
                mesh: mesh.clone(),
                rx,
                timeout,
                cancel: cancel.clone(),
            })
            .collect())
    }

    /// The next whole message from `from` (waits at most the timeout).
    pub fn recv_msg(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        self.link(from)?.recv()
    }

    /// Flushes everything queued and closes every connection gracefully.
    pub fn close(mut self) -> Result<(), NetError> {
        let mut first = Ok(());
        for l in self.links.iter_mut().flatten() {
            if let Err(e) = l.close() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Closes every connection after a failure: flushes what was queued (so peers learn the
    /// cause rather than see a reset) but waits at most about a second per connection.
    pub fn close_after_error(mut self) {
        for l in self.links.iter_mut().flatten() {
            l.close_quick();
        }
    }

    /// Drops every connection at once without flushing.
    pub fn abort(mut self) {
        for l in self.links.iter_mut().flatten() {
            l.abort();
        }
    }
}

/// Sorts one peer's messages into lanes by their trailing byte, until the link ends; a failure
/// reaches every lane.
fn demux(peer: usize, inbox: &mpsc::Receiver<link::Inbox>, tx: &[mpsc::Sender<link::Inbox>]) {
    let fail = |e: &NetError| {
        for s in tx {
            let copy = match e {
                NetError::Disconnected { peer } => NetError::Disconnected { peer: *peer },
                e => NetError::LinkFailed {
                    peer,
                    reason: e.to_string(),
                },
            };
            let _ = s.send(Err(copy));
        }
    };
    for m in inbox.iter() {
        match m {
            Ok(mut m) => match m.pop().map(usize::from) {
                Some(lane) if lane < tx.len() => {
                    let _ = tx[lane].send(Ok(m));
                }
                other => {
                    fail(&NetError::Protocol {
                        peer,
                        reason: format!("a message on lane {other:?}, not one of 0..{}", tx.len()),
                    });
                    return;
                }
            },
            Err(e) => {
                fail(&e);
                return;
            }
        }
    }
}

/// One lane of a mesh split by [`TlsTransport::lanes`].
pub struct LaneTransport {
    role: usize,
    lane: u8,
    mesh: Arc<Mutex<TlsTransport>>,
    rx: [Option<mpsc::Receiver<link::Inbox>>; 3],
    timeout: Duration,
    cancel: crate::transport::CancelToken,
}

impl crate::transport::Transport for LaneTransport {
    fn party(&self) -> usize {
        self.role
    }

    fn send(&mut self, to: usize, msg: &[u8]) -> Result<(), crate::error::MpcError> {
        let mut t = self
            .mesh
            .lock()
            .map_err(|_| crate::error::MpcError::Transport("mesh lock poisoned".into()))?;
        Ok(t.link(to)?.send_with(msg, &[self.lane])?)
    }

    fn recv(&mut self, from: usize) -> Result<Vec<u8>, crate::error::MpcError> {
        let rx = self
            .rx
            .get(from)
            .and_then(|r| r.as_ref())
            .ok_or(crate::error::MpcError::BadParty(from))?;
        match crate::transport::recv_cancellable(rx, self.timeout, Some(&self.cancel), from) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.into()),
            Err(None) => Err(NetError::Timeout {
                peer: from,
                what: "waiting for a message",
                secs: self.timeout.as_secs_f64(),
            }
            .into()),
            Err(Some(crate::error::MpcError::Disconnected(p))) => {
                Err(NetError::Disconnected { peer: p }.into())
            }
            Err(Some(e)) => Err(e),
        }
    }
}

/// One authenticated connection driven by hand (after the TLS handshake and session hello):
/// for tests and fault injection, e.g. a peer that sends a short frame or an oversized length.
pub struct RawPeer {
    /// The authenticated role of the other end.
    pub peer: usize,
    conn: Connection,
    sock: TcpStream,
}

impl RawPeer {
    /// Dials `addr` as party `cfg.keys.role` and authenticates it as `peer`.
    pub fn dial(cfg: &NetConfig, peer: usize, addr: &str) -> Result<RawPeer, NetError> {
        let client = tls::client_config(&cfg.keys).map_err(|e| NetError::Config(e.to_string()))?;
        let (peer, conn, sock) = connect_one(
            peer,
            addr,
            cfg,
            &client,
            Instant::now() + cfg.connect_window(),
        )?;
        Ok(RawPeer { peer, conn, sock })
    }

    /// Accepts one connection on `listener` from one of the `expected` roles.
    pub fn accept(
        cfg: &NetConfig,
        listener: &TcpListener,
        expected: &[usize],
    ) -> Result<RawPeer, NetError> {
        let server = tls::server_config(&cfg.keys).map_err(|e| NetError::Config(e.to_string()))?;
        let (sock, _) = listener
            .accept()
            .map_err(|e| NetError::Config(format!("accept: {e}")))?;
        let conn = tls::server_conn(&server)?;
        let deadline = Instant::now() + cfg.connect_window();
        let (peer, conn, sock) = tls::handshake(
            sock,
            conn,
            expected,
            cfg.keys.role,
            &cfg.session_id,
            deadline,
            cfg.timeout,
        )?;
        Ok(RawPeer { peer, conn, sock })
    }

    /// Writes raw plaintext bytes into the TLS stream (no framing added).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        use std::io::Write;
        let mut io = tls::SyncIo {
            conn: &mut self.conn,
            sock: &mut self.sock,
        };
        io.write_all(bytes)
            .and_then(|_| io.flush())
            .map_err(|e| tls::map_tls_io(self.peer, e, "sending", Duration::ZERO))
    }

    /// Writes one well-formed frame.
    pub fn send_frame(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.write_raw(&[&frame::header(msg.len())[..], msg].concat())
    }

    /// Reads one frame (blocking, with the configured timeout).
    pub fn recv_frame(&mut self, max: u64) -> Result<Option<Vec<u8>>, NetError> {
        let peer = self.peer;
        let mut io = tls::SyncIo {
            conn: &mut self.conn,
            sock: &mut self.sock,
        };
        frame::read_frame(&mut io, max).map_err(|e| match e {
            frame::FrameError::Io(e) => tls::map_tls_io(peer, e, "receiving", Duration::ZERO),
            frame::FrameError::Short { got, expected } => NetError::ShortFrame {
                peer,
                got,
                expected,
            },
            frame::FrameError::Oversized { len, max } => NetError::Oversized { peer, len, max },
        })
    }

    /// Closes the TCP connection abruptly (no `close_notify`).
    pub fn drop_connection(self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

impl From<NetError> for crate::error::MpcError {
    fn from(e: NetError) -> Self {
        use crate::error::MpcError;
        match e {
            NetError::Disconnected { peer } if peer < PARTIES => MpcError::Disconnected(peer),
            NetError::Timeout {
                peer,
                what: "waiting for a message",
                ..
            } if peer < PARTIES => MpcError::Timeout(peer),
            NetError::ShortFrame { peer, .. }
            | NetError::Oversized { peer, .. }
            | NetError::Protocol { peer, .. }
                if peer < PARTIES =>
            {
                let reason = e.to_string();
                MpcError::Malformed { from: peer, reason }
            }
            NetError::NoPeer { peer, .. } => MpcError::BadParty(peer),
            NetError::Tls { .. } => MpcError::Tls(e.to_string()),
            other => MpcError::Transport(other.to_string()),
        }
    }
}

impl crate::transport::Transport for TlsTransport {
    fn party(&self) -> usize {
        self.role
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<(), crate::error::MpcError> {
        if to == self.role || to >= PARTIES {
            return Err(crate::error::MpcError::BadParty(to));
        }
        self.send_msg(to, msg).map_err(Into::into)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, crate::error::MpcError> {
        if from == self.role || from >= PARTIES {
            return Err(crate::error::MpcError::BadParty(from));
        }
        self.recv_msg(from).map_err(Into::into)
    }
}
