//! Private inference as a service: a long-running model owner (P1) and helper (P2), and clients
//! (P0) that come and go with their images.
//!
//! # Keys
//! [`super::pki::generate_deployment`] makes one CA for the deployment, the owner's and the
//! helper's certificates and `N` client certificates (`client-1` ... `client-N`, role 0, with a
//! second name `client-i.client.relushare` that the servers check the client's claimed identity
//! against). Every connection is mutual TLS 1.3 against that CA, followed by the hello of
//! [`super::tls`] carrying the deployment id (`K/session-id`).
//!
//! # A session
//! 1. The client draws a fresh 128-bit session id and connects to the owner and the helper at
//!    the same time. On each connection it sends a [`Request`] (its name, the session id, the
//!    protocol, fractional bits and the number of images) and waits for a verdict.
//! 2. Each server checks that the client certificate names the claimed client, that the client
//!    is not in the deny list `K/revoked` (one name per line, re-read whenever the file changes,
//!    see [`DenyList`]), and the request's values. A refusal is sent as a verdict with the reason
//!    and the connection closed: **no share has moved** at that point.
//! 3. The owner admits the session (at most `max_sessions` run at once, at most `queue` wait up
//!    to `queue_wait` for a slot, the rest are told the server is busy), dials the helper with
//!    the same session id, and the helper pairs the owner's connection with the client's and
//!    admits the session the same way. Only when the helper accepted both does the owner answer
//!    the client "ok". A half that waits longer than `timeout + 2 queue_wait` for its partner is
//!    refused with that reason.
//! 4. The three connections form the same mesh as `relushare party` ([`super::TlsTransport`]),
//!    and [`super::session::run_with`] runs the inference: announce, model structure, fresh
//!    input and bias shares, the suite's setup, offline and online phases, output shares to the
//!    client only. Every session draws fresh OS-seeded randomness for its shares and for all
//!    dealer material. Only the masked weights are shared between sessions (`fast`/`fss`/`mimo`):
//! 5. **Weight masks, once per owner–helper pair** ([`super::masks`], [`crate::fast::masks`]).
//!    The owner's request to the helper names the owner's mask state; the helper's verdict
//!    names the helper's instance (random per process) and whether it holds that state. The
//!    owner makes a new state (fresh keys) for every new helper instance, and at its own start;
//!    it computes the masked weights `F` once per state and context and hands every client `F`
//!    and the seed of its masks one-way; the keys go to the helper inside the first session
//!    that needs them. No session opens `F` any more. The crate README (*Serving*) argues why
//!    this is secure, and under which assumption.
//! 6. Each server logs the session's client name and outcome (never shares or images).
//!
//! A half of a session waiting at the helper for its partner is dropped as soon as its own
//! connection closes (e.g. the client left because the owner refused it), and the owner, while
//! it waits for the helper to pair a session, gives up (freeing its slot, and so the owner's half
//! at the helper) as soon as the client's connection closes: a refused or abandoned session
//! holds no slot or waiting entry until the pairing timeout.
//!
//! # Limits
//! Every read and write waits at most `timeout`; a whole session at most `session_timeout`
//! (a watchdog then closes its sockets); a connection that does not finish its TLS handshake and
//! request within `timeout` is dropped, and at most `max_pending` such connections are served at
//! once (more are closed at once). Frames are limited per session to what the model can need
//! ([`frame_limit`]; `mimo`: [`frame_limit_for`], from the dealer's keys for the session's
//! images, and a `mimo` session whose keys exceed `mimo::MAX_OFFLINE_BYTES` or a frame of
//! [`frame::DEFAULT_MAX_FRAME`] is refused in the owner's verdict), and the client's images to
//! `max_images`, so the memory of one session is bounded by the model and `max_images`, and of
//! the server by `max_sessions` times that.
//! A failure ends only its own session.

use super::error::pname;
use super::link::Link;
use super::masks::{HelperMasks, MaskReuse, OwnerMasks, WeightCache};
use super::pki::{self, PartyKeys};
use super::session::{self, ImageSource, PartyReport, SessionOptions};
use super::{frame, tls, NetConfig, NetError, TlsTransport};
use relushare_model::Model;
use rustls::Connection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Version of the request/verdict exchange (2: the masked-weights message carries `F`'s digest
/// and may leave `F` out for a client that holds it).
const SERVE_VERSION: u32 = 2;
/// Largest request or verdict frame.
const MAX_CONTROL: u64 = 4096;
/// Default most images per session.
pub const DEFAULT_MAX_IMAGES: usize = 64;
/// Default most connections in their TLS handshake or request at once.
pub const DEFAULT_MAX_PENDING: usize = 256;

/// Which server this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeRole {
    /// The model owner (P1).
    Owner,
    /// The helper (P2).
    Helper,
}

impl std::str::FromStr for ServeRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(ServeRole::Owner),
            "helper" => Ok(ServeRole::Helper),
            _ => Err(format!("role {s:?} must be owner or helper")),
        }
    }
}

/// What a connecting party asks for (JSON, the first frame after the TLS hello).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Request {
    pub version: u32,
    /// "client" or "owner" (the owner's connection to the helper).
    pub kind: String,
    /// Fresh per session (32 hex digits), drawn by the client.
    pub session: String,
    /// The client's name (as in its certificate).
    pub client: String,
    pub protocol: String,
    pub frac_bits: u32,
    pub images: usize,
    /// The owner's request: its weight-mask state id (empty: none yet).
    #[serde(default)]
    pub masks: String,
    /// The client's request: the masked weights it holds from an earlier session, as
    /// `STATE:SHA256` ([`super::masks::WeightCache::claim`]; empty: none). The owner then sends
    /// `F` only if they are not its current ones.
    #[serde(default)]
    pub cached: String,
}

/// A server's answer to a [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    /// The server is at capacity (try again later).
    pub busy: bool,
    /// Why the request was refused.
    pub reason: String,
    /// The helper's answer to the owner: its instance id (random per process).
    #[serde(default)]
    pub instance: String,
    /// The helper's answer to the owner: whether it holds the owner's weight-mask state.
    #[serde(default)]
    pub masks_known: bool,
}

impl Verdict {
    fn ok() -> Self {
        Verdict {
            ok: true,
            busy: false,
            reason: String::new(),
            instance: String::new(),
            masks_known: false,
        }
    }
    fn no(reason: impl ToString) -> Self {
        Verdict {
            ok: false,
            reason: reason.to_string(),
            ..Verdict::ok()
        }
    }
    fn busy(reason: impl ToString) -> Self {
        Verdict {
            ok: false,
            busy: true,
            reason: reason.to_string(),
            ..Verdict::ok()
        }
    }
}

/// The deny list `K/revoked`: one client name per line (`#` starts a comment). The file is
/// re-read whenever its size or modification time changes; a missing file denies nobody; a file
/// that exists but cannot be read denies everybody (fail closed) until it is fixed.
#[derive(Debug)]
pub struct DenyList {
    path: PathBuf,
    /// The file's (modification time, size) when last read, and the names it denied.
    state: Mutex<(Option<FileStamp>, HashSet<String>)>,
}

/// A file's modification time and size.
type FileStamp = (SystemTime, u64);

impl DenyList {
    /// The deny list of keys directory `dir` (`dir/revoked`).
    pub fn new(dir: &Path) -> DenyList {
        DenyList {
            path: dir.join("revoked"),
            state: Mutex::new((None, HashSet::new())),
        }
    }

    /// `Err(reason)` if `client` may not connect now.
    pub fn check(&self, client: &str) -> Result<(), String> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "the deny list {} cannot be read ({e}); refusing every client",
                    self.path.display()
                ))
            }
        };
        let stamp = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 != Some(stamp) {
            if meta.len() > 1 << 20 {
                return Err(format!(
                    "the deny list {} is larger than 1 MiB; refusing every client",
                    self.path.display()
                ));
            }
            let text = std::fs::read_to_string(&self.path).map_err(|e| {
                format!(
                    "the deny list {} cannot be read ({e}); refusing every client",
                    self.path.display()
                )
            })?;
            st.1 = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            st.0 = Some(stamp);
        }
        if st.1.contains(client) {
            Err(format!("client {client} is revoked"))
        } else {
            Ok(())
        }
    }
}

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The keys directory (`ca.crt`, `session-id`, `owner.*` or `helper.*`, `revoked`).
    pub keys_dir: PathBuf,
    pub role: ServeRole,
    /// Owner: the helper's address.
    pub helper: Option<String>,
    /// Sessions running at once.
    pub max_sessions: usize,
    /// Sessions waiting for a slot; more get a "busy" verdict.
    pub queue: usize,
    /// How long a queued session waits for a slot before it is told the server is busy.
    pub queue_wait: Duration,
    /// Per read/write (and per handshake) timeout.
    pub timeout: Duration,
    /// Longest whole session.
    pub session_timeout: Duration,
    /// Most images per session.
    pub max_images: usize,
    /// Most connections in their handshake or request at once.
    pub max_pending: usize,
    /// Helper: largest frame accepted on a session's connections (the owner derives its limit
    /// from the model, see [`frame_limit`]).
    pub max_frame: u64,
    /// Owner: an emulated network ([`super::emu`]) on its link to the helper (benchmarks);
    /// `None` = the real network.
    pub network: Option<super::emu::NetProfile>,
}

impl ServeConfig {
    /// Defaults: `max_sessions` = the number of cores, queue = 4x that, 30 s timeouts, 10 min
    /// per session.
    pub fn new(keys_dir: PathBuf, role: ServeRole) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ServeConfig {
            keys_dir,
            role,
            helper: None,
            max_sessions: cores,
            queue: 4 * cores,
            queue_wait: Duration::from_secs(30),
            timeout: super::DEFAULT_TIMEOUT,
            session_timeout: Duration::from_secs(600),
            max_images: DEFAULT_MAX_IMAGES,
            max_pending: DEFAULT_MAX_PENDING,
            max_frame: 256 << 20,
            network: None,
        }
    }
}

/// Headroom of every frame limit (control messages, rounding).
const FRAME_HEADROOM: u64 = 16 << 20;

/// The largest frame a `fast`/`fss`/`securenn` session of `model` with at most `max_images`
/// images can need: every message carries at most one layer's activations for the batch (with
/// headroom for the suites' correlated material) or the model's secret vectors (weights,
/// deciders, fused `U`). `mimo`: [`frame_limit_for`].
pub fn frame_limit(model: &Model, frac_bits: u32, max_images: usize) -> crate::Result<u64> {
    frame_limit_for(model, "fast", frac_bits, max_images)
}

/// The largest frame a `protocol` session of `model` with `images` images can need. For `mimo`
/// that is [`frame_limit`]'s bound (on the model prepared for `mimo`) plus the dealer's largest
/// message (its DCF keys, [`crate::mimo::op_costs`]); a `mimo` session whose dealer material
/// exceeds [`crate::mimo::MAX_OFFLINE_BYTES`] or whose largest message does not fit a frame of
/// [`frame::DEFAULT_MAX_FRAME`] is an error (the owner refuses it, see [`serve`]).
pub fn frame_limit_for(
    model: &Model,
    protocol: &str,
    frac_bits: u32,
    images: usize,
) -> crate::Result<u64> {
    let p: crate::protocol::Protocol = protocol.parse()?;
    let mut fm = crate::plain::FixedModel::from_model(model, frac_bits)?;
    crate::protocol::prepare_model(p, &mut fm)?;
    if p == crate::protocol::Protocol::Mimo {
        let cfg = crate::mimo::config_for_model(&fm, model)?;
        return mimo_frame(&fm, &cfg, images);
    }
    Ok((base_frame(&fm, images) + FRAME_HEADROOM).min(frame::DEFAULT_MAX_FRAME))
}

/// Activations of the batch and the model's secret vectors (see [`frame_limit`]).
fn base_frame(fm: &crate::plain::FixedModel, images: usize) -> u64 {
    let weights: u64 = session::secret_lens(fm).iter().map(|&l| l as u64).sum();
    let act: u64 = fm.out_lens.iter().map(|&l| l as u64).sum::<u64>() + fm.input_len as u64;
    16 * (images as u64 + 1) * act + 16 * weights
}

/// The frame limit of a `mimo` session of `images` images of `fm` (prepared for `mimo`, rings
/// `cfg`), or why it is not served (see [`frame_limit_for`]).
fn mimo_frame(
    fm: &crate::plain::FixedModel,
    cfg: &crate::mimo::MimoConfig,
    images: usize,
) -> crate::Result<u64> {
    let (largest, total) = session::mimo_dealer_bytes(fm, cfg, images)?;
    let lim = base_frame(fm, images) + largest + FRAME_HEADROOM;
    let mb = |b: u64| b as f64 / 1e6;
    if total > crate::mimo::MAX_OFFLINE_BYTES as u64 || lim > frame::DEFAULT_MAX_FRAME {
        return Err(crate::error::MpcError::Param(format!(
            "a mimo session of {images} image(s) of this model needs {:.1} MB of dealer keys \
             (largest message {:.1} MB); at most {:.1} MB in all and {:.1} MB per message are \
             served: send fewer images",
            mb(total),
            mb(largest),
            mb(crate::mimo::MAX_OFFLINE_BYTES as u64),
            mb(frame::DEFAULT_MAX_FRAME - FRAME_HEADROOM)
        )));
    }
    Ok(lim)
}

/// Owner: the model prepared for `mimo` with its rings, for sizing `mimo` sessions (or why
/// the model cannot run `mimo`), by fractional bits.
type MimoSizing = Result<Arc<(crate::plain::FixedModel, crate::mimo::MimoConfig)>, String>;

/// The owner's frame limit for a session of `req` (refused with the reason if none fits).
fn owner_frame(sh: &Shared, req: &Request) -> Result<u64, String> {
    if req.protocol != "mimo" {
        return Ok(sh.owner_frame);
    }
    let model = sh.model.as_ref().ok_or("the owner has no model")?;
    let sizing = {
        let mut m = sh.mimo_sizing.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(req.frac_bits)
            .or_insert_with(|| {
                let prep = || -> crate::Result<_> {
                    let mut fm = crate::plain::FixedModel::from_model(model, req.frac_bits)?;
                    crate::protocol::prepare_model(crate::protocol::Protocol::Mimo, &mut fm)?;
                    let cfg = crate::mimo::config_for_model(&fm, model)?;
                    Ok(Arc::new((fm, cfg)))
                };
                prep().map_err(|e| format!("this model cannot be served with mimo: {e}"))
            })
            .clone()
    };
    let s = sizing?;
    mimo_frame(&s.0, &s.1, req.images).map_err(|e| e.to_string())
}

/// Counts running and queued sessions.
struct Admission {
    state: Mutex<(usize, usize)>,
    cv: Condvar,
    max: usize,
    queue: usize,
}

/// A running session's slot (released on drop).
struct Slot(Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 -= 1;
        self.0.cv.notify_one();
    }
}

impl Admission {
    fn new(max: usize, queue: usize) -> Arc<Self> {
        Arc::new(Admission {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            max: max.max(1),
            queue,
        })
    }

    /// A slot now, or after waiting in the queue at most `wait`; `Err` is the busy reason.
    fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Slot, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 < self.max {
            st.0 += 1;
            return Ok(Slot(self.clone()));
        }
        if st.1 >= self.queue {
            return Err(format!(
                "server busy: {} sessions running and {} queued (the limits); try again later",
                st.0, st.1
            ));
        }
        st.1 += 1;
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= deadline {
                st.1 -= 1;
                return Err(format!(
                    "server busy: no session slot became free within {:.0} s; try again later",
                    wait.as_secs_f64()
                ));
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if st.0 < self.max {
                st.0 += 1;
                st.1 -= 1;
                return Ok(Slot(self.clone()));
            }
        }
    }
}

/// One authenticated connection before it joins a mesh.
struct Half {
    peer: usize,
    conn: Connection,
    sock: TcpStream,
}

impl Half {
    fn io(&mut self) -> tls::SyncIo<'_> {
        tls::SyncIo {
            conn: &mut self.conn,
            sock: &mut self.sock,
        }
    }

    fn send_json<T: Serialize>(&mut self, v: &T) -> Result<(), NetError> {
        let body = serde_json::to_vec(v).map_err(|e| NetError::Config(e.to_string()))?;
        let peer = self.peer;
        let mut io = self.io();
        frame::write_frame(&mut io, &body)
            .and_then(|_| std::io::Write::flush(&mut io))
            .map_err(|e| tls::map_tls_io(peer, e, "sending", Duration::ZERO))
    }

    fn recv_json<T: for<'de> Deserialize<'de>>(
        &mut self,
        what: &str,
        wait: Duration,
    ) -> Result<T, NetError> {
        let peer = self.peer;
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(10))))
            .map_err(|e| NetError::io(peer, e, "receiving", wait))?;
        let body = match frame::read_frame(&mut self.io(), MAX_CONTROL) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(NetError::Disconnected { peer }),
            Err(frame::FrameError::Io(e)) => {
                return Err(match tls::map_tls_io(peer, e, "receiving", wait) {
                    NetError::Timeout { .. } => NetError::Timeout {
                        peer,
                        what: "waiting for the request or verdict",
                        secs: wait.as_secs_f64(),
                    },
                    other => other,
                })
            }
            Err(e) => {
                return Err(NetError::Protocol {
                    peer,
                    reason: format!("bad {what}: {e}"),
                })
            }
        };
        serde_json::from_slice(&body).map_err(|e| NetError::Protocol {
            peer,
            reason: format!("bad {what}: {e}"),
        })
    }

    /// Sends a refusal and closes.
    fn refuse(mut self, v: &Verdict) {
        let _ = self.send_json(v);
        self.conn.send_close_notify();
        let _ = std::io::Write::flush(&mut self.io());
        let _ = self.sock.shutdown(Shutdown::Write);
        // Let the verdict reach the peer before the socket is dropped (see tls::linger_close).
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1024];
        let stop = Instant::now() + Duration::from_secs(1);
        while Instant::now() < stop {
            match std::io::Read::read(&mut self.sock, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// Builds a party's mesh from authenticated connections; returns it with clones of the
/// sockets (for the session watchdog).
fn mesh(
    role: usize,
    halves: Vec<Half>,
    timeout: Duration,
    max_frame: u64,
) -> Result<(TlsTransport, Vec<TcpStream>), NetError> {
    let mut links: Vec<Option<Link>> = (0..pki::PARTIES).map(|_| None).collect();
    let mut socks = Vec::new();
    for h in halves {
        if let Ok(s) = h.sock.try_clone() {
            socks.push(s);
        }
        let p = h.peer;
        links[p] = Some(Link::new(p, h.conn, h.sock, timeout, max_frame)?);
    }
    Ok((
        TlsTransport {
            role,
            links,
            laned: false,
        },
        socks,
    ))
}

/// Closes `socks` if the session is still running after `limit` (drop the returned sender, or
/// send on it, when the session ends).
fn watchdog(socks: Vec<TcpStream>, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    });
    tx
}

fn validate_request(r: &Request, max_images: usize) -> Result<(), String> {
    if r.version != SERVE_VERSION {
        return Err(format!(
            "request version {} (this server speaks {SERVE_VERSION})",
            r.version
        ));
    }
    pki::validate_session_id(&r.session).map_err(|e| e.to_string())?;
    pki::validate_client_name(&r.client).map_err(|e| e.to_string())?;
    if !session::PROTOCOLS.contains(&r.protocol.as_str()) {
        return Err(format!(
            "protocol {:?} is not served (use {})",
            r.protocol,
            session::PROTOCOLS.join(", ")
        ));
    }
    crate::fixed::FixedPoint::new(r.frac_bits).map_err(|e| e.to_string())?;
    if !r.masks.is_empty() && !super::masks::is_mask_id(&r.masks) {
        return Err(format!("bad weight-mask state id {:?}", r.masks));
    }
    if !super::masks::is_claim(&r.cached) {
        return Err(format!(
            "bad cached masked-weights claim {:?} (STATE:SHA256 in lower-case hex, or empty)",
            r.cached
        ));
    }
    if r.images == 0 || r.images > max_images {
        return Err(format!(
            "between 1 and {max_images} images per session (asked for {})",
            r.images
        ));
    }
    Ok(())
}

/// Whether the connection's certificate certifies client `name`.
fn cert_names_client(conn: &Connection, name: &str) -> bool {
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return false;
    };
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(sn) = rustls::pki_types::ServerName::try_from(pki::client_dns_name(name)) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&sn).is_ok()
}

/// Log sink of a server (one line per event).
pub type Logger = Arc<dyn Fn(&str) + Send + Sync>;

/// A logger that writes `relushare serve[ROLE] <unix time> <line>` to stderr.
pub fn stderr_logger(role: ServeRole) -> Logger {
    let tag = match role {
        ServeRole::Owner => "owner",
        ServeRole::Helper => "helper",
    };
    Arc::new(move |line: &str| {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        eprintln!("[{tag} {t:.3}] {line}");
    })
}

/// Half of a session waiting at the helper for the other half.
struct Waiting {
    half: Half,
    req: Request,
    taken: mpsc::Sender<()>,
}

struct Shared {
    cfg: ServeConfig,
    keys: PartyKeys,
    deny: DenyList,
    admission: Arc<Admission>,
    log: Logger,
    /// Owner: the model and the frame limit of its `fast`/`fss`/`securenn` sessions (`mimo`:
    /// [`owner_frame`], per session from its number of images).
    model: Option<Arc<Model>>,
    owner_frame: u64,
    /// Owner: `mimo` sizing by fractional bits (computed on first use).
    mimo_sizing: Mutex<HashMap<u32, MimoSizing>>,
    /// Helper: halves waiting for their partner, by (session, kind).
    waiting: Mutex<HashMap<(String, String), Waiting>>,
    /// Owner: the weight-mask state of this owner and the helper instance it serves with.
    owner_masks: Mutex<Option<Arc<OwnerMasks>>>,
    /// Owner: weight-mask states made so far.
    mask_states: AtomicUsize,
    /// Helper: the weight-mask keys owners registered, and this helper's instance id.
    helper_masks: Arc<HelperMasks>,
    pending: AtomicUsize,
    stop: Arc<AtomicBool>,
}

/// A running server (see [`serve`]).
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The shaping relay on the owner's link to the helper, when emulating a network.
    _relay: Option<super::emu::Relay>,
}

/// The weight-mask reuse of a server (for tests and operators).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskStats {
    /// Owner: weight-mask states made (one per helper instance served with).
    pub states: usize,
    /// Owner: the current state's id and how many times it computed masked weights `F` (once
    /// per suite and fixed-point bits served).
    pub current: Option<(String, usize)>,
    /// Helper: its instance id and the number of owner states it holds.
    pub helper_instance: String,
    pub helper_states: usize,
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The weight-mask reuse so far.
    pub fn mask_stats(&self) -> MaskStats {
        let sh = &self.shared;
        let cur = sh
            .owner_masks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| (m.id().to_string(), m.openings_computed()));
        MaskStats {
            states: sh.mask_states.load(Ordering::SeqCst),
            current: cur,
            helper_instance: sh.helper_masks.instance().to_string(),
            helper_states: sh.helper_masks.len(),
        }
    }

    /// Stops accepting connections (running sessions finish on their own threads).
    pub fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Blocks while the server runs (until [`Server::stop`] from another handle, i.e. forever
    /// for the CLI).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server on `listener`. The owner needs `model`; the helper none. Returns once the
/// keys are loaded and the listener accepts.
pub fn serve(
    mut cfg: ServeConfig,
    listener: TcpListener,
    model: Option<Model>,
    log: Logger,
) -> Result<Server, NetError> {
    let (role, stem) = match cfg.role {
        ServeRole::Owner => (1, pki::OWNER_STEM),
        ServeRole::Helper => (2, pki::HELPER_STEM),
    };
    let keys = PartyKeys::load_stem(&cfg.keys_dir, role, stem)?;
    let (model, owner_frame) = match (cfg.role, model) {
        (ServeRole::Owner, Some(m)) => {
            if cfg.helper.is_none() {
                return Err(NetError::Config(
                    "the owner needs the helper's address (--helper HOST:PORT)".into(),
                ));
            }
            let lim = frame_limit(&m, crate::fixed::DEFAULT_FRAC_BITS, cfg.max_images)
                .map_err(|e| NetError::Config(format!("the model cannot be served: {e}")))?;
            (Some(Arc::new(m)), lim)
        }
        (ServeRole::Owner, None) => return Err(NetError::Config("the owner needs a model".into())),
        (ServeRole::Helper, Some(_)) => {
            return Err(NetError::Config(
                "the helper gets no model (it learns the structure per session)".into(),
            ))
        }
        (ServeRole::Helper, None) => (None, 0),
    };
    if cfg.max_sessions == 0 || cfg.timeout.is_zero() || cfg.max_images == 0 {
        return Err(NetError::Config(
            "max sessions, timeout and max images must be positive".into(),
        ));
    }
    // the owner dials the helper through a shaping relay when a network is emulated
    let relay = match (&cfg.network, &cfg.helper, cfg.role) {
        (Some(p), Some(h), ServeRole::Owner) => {
            let r = super::emu::Relay::start(h, *p, cfg.timeout)?;
            cfg.helper = Some(r.addr().to_string());
            Some(r)
        }
        _ => None,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| NetError::Config(format!("listener: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| NetError::Config(format!("listener: {e}")))?;
    let server_cfg = tls::server_config(&keys)
        .map_err(|e| NetError::Config(format!("TLS configuration: {e}")))?;
    let shared = Arc::new(Shared {
        deny: DenyList::new(&cfg.keys_dir),
        admission: Admission::new(cfg.max_sessions, cfg.queue),
        cfg,
        keys,
        log,
        model,
        owner_frame,
        mimo_sizing: Mutex::new(HashMap::new()),
        waiting: Mutex::new(HashMap::new()),
        owner_masks: Mutex::new(None),
        mask_states: AtomicUsize::new(0),
        helper_masks: Arc::new(
            HelperMasks::new().map_err(|e| NetError::Config(format!("weight masks: {e}")))?,
        ),
        pending: AtomicUsize::new(0),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let sh = shared.clone();
    let thread = std::thread::Builder::new()
        .name("serve-accept".into())
        .spawn(move || accept_loop(sh, listener, server_cfg))
        .map_err(|e| NetError::Config(format!("cannot start the server: {e}")))?;
    Ok(Server {
        shared,
        addr,
        thread: Some(thread),
        _relay: relay,
    })
}

fn accept_loop(sh: Arc<Shared>, listener: TcpListener, server_cfg: Arc<rustls::ServerConfig>) {
    while !sh.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, from)) => {
                if sh.pending.fetch_add(1, Ordering::SeqCst) >= sh.cfg.max_pending {
                    sh.pending.fetch_sub(1, Ordering::SeqCst);
                    (sh.log)(&format!(
                        "dropped the connection from {from}: {} connections are already being set up",
                        sh.cfg.max_pending
                    ));
                    let _ = sock.shutdown(Shutdown::Both);
                    continue;
                }
                let (sh2, server_cfg) = (sh.clone(), server_cfg.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("serve-conn".into())
                        .spawn(move || {
                            let r = accept_one(&sh2, sock, from, &server_cfg);
                            if let Err(e) = r {
                                (sh2.log)(&format!("refused the connection from {from}: {e}"));
                            }
                        });
                if spawned.is_err() {
                    sh.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Decrements the pending count once (when the connection leaves the set-up stage).
struct PendingGuard<'a>(&'a AtomicUsize, bool);
impl PendingGuard<'_> {
    fn release(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Handshake, request and checks of one incoming connection; then the session (owner) or the
/// pairing (helper). `Err` is a refused connection (logged by the caller).
fn accept_one(
    sh: &Arc<Shared>,
    sock: TcpStream,
    from: SocketAddr,
    server_cfg: &Arc<rustls::ServerConfig>,
) -> Result<(), NetError> {
    let mut pending = PendingGuard(&sh.pending, false);
    sock.set_nonblocking(false)
        .map_err(|e| NetError::io(super::error::UNIDENTIFIED, e, "accept", sh.cfg.timeout))?;
    let expected: &[usize] = match sh.cfg.role {
        ServeRole::Owner => &[0],
        ServeRole::Helper => &[0, 1],
    };
    let my_role = sh.keys.role;
    let conn = tls::server_conn(server_cfg)?;
    let deadline = Instant::now() + sh.cfg.timeout;
    let (peer, conn, sock) = tls::handshake(
        sock,
        conn,
        expected,
        my_role,
        &sh.keys.session_id,
        deadline,
        sh.cfg.timeout,
    )?;
    let mut half = Half { peer, conn, sock };
    let left = deadline.saturating_duration_since(Instant::now());
    let req: Request = half.recv_json("request", left)?;
    pending.release();
    let kind_ok = match (peer, req.kind.as_str()) {
        (0, "client") => true,
        (1, "owner") => sh.cfg.role == ServeRole::Helper,
        _ => false,
    };
    let check = if !kind_ok {
        Err(format!(
            "{} may not make a {:?} request",
            pname(peer),
            req.kind
        ))
    } else {
        validate_request(&req, sh.cfg.max_images)
    }
    .and_then(|_| {
        if peer == 0 && !cert_names_client(&half.conn, &req.client) {
            Err(format!(
                "the client certificate is not issued to {:?}",
                req.client
            ))
        } else {
            Ok(())
        }
    })
    .and_then(|_| sh.deny.check(&req.client))
    .and_then(|_| match sh.cfg.role {
        ServeRole::Owner => owner_frame(sh, &req).map(Some),
        ServeRole::Helper => Ok(None),
    });
    let frame = match check {
        Ok(f) => f,
        Err(reason) => {
            half.refuse(&Verdict::no(&reason));
            return Err(NetError::Refused {
                peer: format!("{} ({from}, client {:?})", pname(peer), req.client),
                reason,
            });
        }
    };
    match sh.cfg.role {
        ServeRole::Owner => {
            owner_session(sh, half, req, from, frame.unwrap_or(sh.owner_frame));
        }
        ServeRole::Helper => helper_pair(sh, half, req),
    }
    Ok(())
}

fn session_options(req: &Request) -> SessionOptions {
    SessionOptions {
        protocol: req.protocol.clone(),
        frac_bits: req.frac_bits,
    }
}

fn log_outcome(sh: &Shared, req: &Request, started: Instant, r: &crate::Result<PartyReport>) {
    let secs = started.elapsed().as_secs_f64();
    let line = match r {
        Ok(_) => format!(
            "session {}: client {}: ok, {} image(s), {}, {secs:.3} s",
            req.session, req.client, req.images, req.protocol
        ),
        Err(e) => format!(
            "session {}: client {}: failed after {secs:.3} s: {e}",
            req.session, req.client
        ),
    };
    (sh.log)(&line);
}

/// The owner's side of a session whose frames are limited to `max_frame` ([`owner_frame`]).
fn owner_session(
    sh: &Arc<Shared>,
    mut client: Half,
    req: Request,
    from: SocketAddr,
    max_frame: u64,
) {
    let started = Instant::now();
    let slot = match sh.admission.acquire(sh.cfg.queue_wait) {
        Ok(s) => s,
        Err(reason) => {
            (sh.log)(&format!(
                "session {}: client {} ({from}): {reason}",
                req.session, req.client
            ));
            client.refuse(&Verdict::busy(reason));
            return;
        }
    };
    // Join the helper with the same session id.
    let reuse = uses_masks(&req);
    let sent_masks = if reuse {
        current_mask_id(sh)
    } else {
        String::new()
    };
    // While the helper pairs the session, a client that leaves aborts the wait, so that its
    // slot (here and the owner's half at the helper) is freed at once.
    let watch = ClientWatch::start(&client);
    let dialed = dial_helper(sh, &req, &sent_masks, watch.as_ref());
    let left = watch.map(|w| w.stop()).unwrap_or(false);
    let (helper, hv) = match dialed {
        Ok(h) => h,
        Err(_) if left => {
            (sh.log)(&format!(
                "session {}: client {} ({from}): the client left before the helper paired the session; slot freed",
                req.session, req.client
            ));
            return;
        }
        Err(e) => {
            let reason = format!("the helper is unavailable: {e}");
            (sh.log)(&format!(
                "session {}: client {}: {reason}",
                req.session, req.client
            ));
            client.refuse(&Verdict::no(reason));
            return;
        }
    };
    if let Err(e) = client.send_json(&Verdict::ok()) {
        let r: crate::Result<PartyReport> = Err(e.into());
        log_outcome(sh, &req, started, &r);
        return;
    }
    (sh.log)(&format!(
        "session {}: client {} ({from}): started, {} image(s), {}",
        req.session, req.client, req.images, req.protocol
    ));
    let masks = if reuse {
        match owner_mask_state(sh, &hv.instance) {
            Ok(state) => {
                // The keys go to the helper while it does not hold this state.
                let register = !(hv.masks_known && sent_masks == state.id());
                Some(MaskReuse::Owner {
                    state,
                    register,
                    client_holds: req.cached.clone(),
                })
            }
            Err(e) => {
                let r: crate::Result<PartyReport> = Err(e);
                log_outcome(sh, &req, started, &r);
                return;
            }
        }
    } else {
        None
    };
    let model = sh.model.clone().expect("the owner has a model");
    let r = run_mesh(sh, 1, vec![client, helper], max_frame, |mesh| {
        session::run_with(
            mesh,
            Some(&*model),
            None,
            &session_options(&req),
            masks.as_ref(),
        )
    });
    log_outcome(sh, &req, started, &r);
    drop(slot);
}

/// Whether sessions of `req` reuse the owner–helper pair's weight masks (the suites with masked
/// weights).
fn uses_masks(req: &Request) -> bool {
    crate::fast::masks::context_label(&req.protocol, req.frac_bits).is_ok()
}

/// The owner's current weight-mask state id (empty if none yet).
fn current_mask_id(sh: &Shared) -> String {
    sh.owner_masks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|m| m.id().to_string())
        .unwrap_or_default()
}

/// The owner's weight-mask state for helper instance `instance`: the current one, or a new one
/// (fresh keys) if there is none yet or it was made for another helper instance (the helper
/// restarted).
fn owner_mask_state(sh: &Shared, instance: &str) -> crate::Result<Arc<OwnerMasks>> {
    if !super::masks::is_mask_id(instance) {
        return Err(crate::error::MpcError::Transport(format!(
            "the helper named no valid instance ({instance:?}); is it an older version?"
        )));
    }
    let mut cur = sh.owner_masks.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = cur.as_ref() {
        if m.helper_instance() == instance {
            return Ok(m.clone());
        }
    }
    let log = sh.log.clone();
    let note: super::masks::ComputeNote = Arc::new(move |l: &str| log(l));
    let m = Arc::new(OwnerMasks::new(instance, Some(note))?);
    let why = match cur.as_ref() {
        None => "first session with this helper".to_string(),
        Some(old) => format!(
            "the helper restarted (instance {} replaces {}); state {} is retired",
            short(instance),
            short(old.helper_instance()),
            old.id()
        ),
    };
    (sh.log)(&format!(
        "weight-mask state {} created for helper instance {} ({why})",
        m.id(),
        short(instance)
    ));
    sh.mask_states.fetch_add(1, Ordering::SeqCst);
    *cur = Some(m.clone());
    Ok(m)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

fn run_mesh(
    sh: &Shared,
    role: usize,
    halves: Vec<Half>,
    max_frame: u64,
    f: impl FnOnce(TlsTransport) -> crate::Result<PartyReport>,
) -> crate::Result<PartyReport> {
    let (mesh, socks) = mesh(role, halves, sh.cfg.timeout, max_frame)?;
    let dog = watchdog(socks, sh.cfg.session_timeout);
    let t = Instant::now();
    let r = f(mesh);
    let _ = dog.send(());
    match r {
        Err(e) if t.elapsed() >= sh.cfg.session_timeout => {
            Err(crate::error::MpcError::Transport(format!(
                "the session exceeded its limit of {:.0} s and was closed ({e})",
                sh.cfg.session_timeout.as_secs_f64()
            )))
        }
        r => r,
    }
}

/// Watches a client's connection while the owner waits for the helper: if the client closes
/// it, the owner's connection to the helper (once registered) is shut down, which ends the wait.
struct ClientWatch {
    done: Arc<AtomicBool>,
    left: Arc<AtomicBool>,
    helper: Arc<Mutex<Option<TcpStream>>>,
}

impl ClientWatch {
    /// Starts watching (`None` if the socket cannot be watched). The probe's read timeout is
    /// set here once; the session sets its own timeouts later.
    fn start(client: &Half) -> Option<ClientWatch> {
        let probe = client.sock.try_clone().ok()?;
        probe.set_read_timeout(Some(WAIT_PROBE)).ok()?;
        let w = ClientWatch {
            done: Arc::new(AtomicBool::new(false)),
            left: Arc::new(AtomicBool::new(false)),
            helper: Arc::new(Mutex::new(None)),
        };
        let (done, left, helper) = (w.done.clone(), w.left.clone(), w.helper.clone());
        std::thread::Builder::new()
            .name("serve-watch".into())
            .spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let closed = match probe.peek(&mut [0u8; 1]) {
                        Ok(0) => true,
                        Ok(_) => {
                            // data pending (the client's next message): do not spin
                            std::thread::sleep(WAIT_PROBE);
                            false
                        }
                        Err(e) => !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                    };
                    if closed {
                        if !done.load(Ordering::SeqCst) {
                            left.store(true, Ordering::SeqCst);
                            let h = helper.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(h) = h.as_ref() {
                                let _ = h.shutdown(Shutdown::Both);
                            }
                        }
                        return;
                    }
                }
            })
            .ok()?;
        Some(w)
    }

    /// Stops watching; whether the client left meanwhile.
    fn stop(self) -> bool {
        self.done.store(true, Ordering::SeqCst);
        self.left.load(Ordering::SeqCst)
    }
}

fn dial_helper(
    sh: &Shared,
    req: &Request,
    masks: &str,
    watch: Option<&ClientWatch>,
) -> Result<(Half, Verdict), NetError> {
    let addr = sh.cfg.helper.clone().expect("checked at start");
    let mut cfg = NetConfig::new(sh.keys.clone(), BTreeMap::new());
    cfg.timeout = sh.cfg.timeout;
    let client = tls::client_config(&sh.keys)
        .map_err(|e| NetError::Config(format!("TLS configuration: {e}")))?;
    let (peer, conn, sock) =
        super::connect_one(2, &addr, &cfg, &client, Instant::now() + sh.cfg.timeout)?;
    if let Some(w) = watch {
        let mut slot = w.helper.lock().unwrap_or_else(|p| p.into_inner());
        if w.left.load(Ordering::SeqCst) {
            return Err(NetError::Disconnected { peer: 0 });
        }
        *slot = sock.try_clone().ok();
    }
    let mut h = Half { peer, conn, sock };
    let mut r = req.clone();
    r.kind = "owner".into();
    r.masks = masks.to_string();
    r.cached = String::new();
    h.send_json(&r)?;
    // The helper answers once the client's connection arrived too and it has a free slot.
    let v: Verdict = h.recv_json("verdict", sh.cfg.timeout + 2 * sh.cfg.queue_wait)?;
    if !v.ok {
        return Err(NetError::Refused {
            peer: "the helper".into(),
            reason: v.reason,
        });
    }
    Ok((h, v))
}

fn helper_pair(sh: &Arc<Shared>, half: Half, req: Request) {
    let key = (req.session.clone(), req.kind.clone());
    let other = (
        req.session.clone(),
        if req.kind == "client" {
            "owner"
        } else {
            "client"
        }
        .to_string(),
    );
    let mut w = sh.waiting.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(partner) = w.remove(&other) {
        drop(w);
        let _ = partner.taken.send(());
        if partner.req.client != req.client
            || partner.req.protocol != req.protocol
            || partner.req.frac_bits != req.frac_bits
            || partner.req.images != req.images
        {
            let v = Verdict::no("the owner's and the client's requests for this session differ");
            (sh.log)(&format!("session {}: {}", req.session, v.reason));
            partner.half.refuse(&v);
            half.refuse(&v);
            return;
        }
        let (client, owner, owner_req) = if req.kind == "client" {
            (half, partner.half, partner.req)
        } else {
            (partner.half, half, req.clone())
        };
        helper_session(sh, client, owner, req, &owner_req.masks);
        return;
    }
    if w.contains_key(&key) {
        drop(w);
        half.refuse(&Verdict::no("this session id is already waiting here"));
        return;
    }
    // Watch our own connection while waiting: a half whose peer leaves (e.g. a client the owner
    // refused) is dropped at once. The probe's short read timeout is set before the half is
    // shared and never touched again (the session sets its own timeouts).
    let probe = half
        .sock
        .try_clone()
        .ok()
        .filter(|p| p.set_read_timeout(Some(WAIT_PROBE)).is_ok());
    let (tx, rx) = mpsc::channel();
    w.insert(
        key.clone(),
        Waiting {
            half,
            req: req.clone(),
            taken: tx,
        },
    );
    drop(w);
    let wait = sh.cfg.timeout + 2 * sh.cfg.queue_wait;
    let deadline = Instant::now() + wait;
    let left = loop {
        if rx.try_recv().is_ok() {
            return; // the partner's thread runs the session
        }
        if Instant::now() >= deadline {
            break false;
        }
        match &probe {
            Some(p) => match p.peek(&mut [0u8; 1]) {
                Ok(0) => break true,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break true,
                Ok(_) => {
                    let _ = rx.recv_timeout(WAIT_PROBE);
                }
            },
            None => {
                let _ = rx.recv_timeout(WAIT_PROBE);
            }
        }
    };
    let mine = sh
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    if let Some(me) = mine {
        let who = if req.kind == "client" {
            "the model owner"
        } else {
            "the client"
        };
        if left {
            let me_who = if req.kind == "client" {
                "the client"
            } else {
                "the model owner"
            };
            (sh.log)(&format!(
                "session {}: client {}: {me_who} left before {who} joined (refused elsewhere?); dropped at once",
                req.session, req.client
            ));
            let _ = me.half.sock.shutdown(Shutdown::Both);
            return;
        }
        let reason = format!(
            "{who} did not join session {} within {:.0} s",
            req.session,
            wait.as_secs_f64()
        );
        (sh.log)(&format!(
            "session {}: client {}: {reason}",
            req.session, req.client
        ));
        me.half.refuse(&Verdict::no(reason));
    }
}

/// How often a half waiting at the helper checks that its own connection is still open.
const WAIT_PROBE: Duration = Duration::from_millis(100);

fn helper_session(
    sh: &Arc<Shared>,
    mut client: Half,
    mut owner: Half,
    req: Request,
    owner_masks: &str,
) {
    let started = Instant::now();
    // The owner admitted the session already; the helper's slots are freed a little later
    // than the owner's (a failed session ends at each server on its own), so wait as well.
    let slot = match sh.admission.acquire(sh.cfg.queue_wait) {
        Ok(s) => s,
        Err(reason) => {
            (sh.log)(&format!(
                "session {}: client {}: {reason}",
                req.session, req.client
            ));
            client.refuse(&Verdict::busy(&reason));
            owner.refuse(&Verdict::busy(&reason));
            return;
        }
    };
    let reuse = uses_masks(&req);
    // The owner learns this helper's instance and whether it holds the owner's mask state.
    let to_owner = Verdict {
        instance: sh.helper_masks.instance().to_string(),
        masks_known: reuse && !owner_masks.is_empty() && sh.helper_masks.knows(owner_masks),
        ..Verdict::ok()
    };
    for (h, v) in [(&mut owner, &to_owner), (&mut client, &Verdict::ok())] {
        if let Err(e) = h.send_json(v) {
            let r: crate::Result<PartyReport> = Err(e.into());
            log_outcome(sh, &req, started, &r);
            return;
        }
    }
    (sh.log)(&format!(
        "session {}: client {}: started, {} image(s), {}",
        req.session, req.client, req.images, req.protocol
    ));
    let masks = reuse.then(|| MaskReuse::Helper(sh.helper_masks.clone()));
    let r = run_mesh(sh, 2, vec![client, owner], sh.cfg.max_frame, |mesh| {
        session::run_with(mesh, None, None, &session_options(&req), masks.as_ref())
    });
    log_outcome(sh, &req, started, &r);
    drop(slot);
}

/// Settings of a client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The keys directory holding `ca.crt`, `session-id` and `NAME.crt/.key`.
    pub keys_dir: PathBuf,
    /// This client's name (`client-1` ...).
    pub name: String,
    pub owner: String,
    pub helper: String,
    pub protocol: String,
    pub frac_bits: u32,
    /// Per read/write timeout during the session.
    pub timeout: Duration,
    /// How long to wait for the servers to admit the session (they may queue it).
    pub admission_wait: Duration,
    /// Largest frame accepted from the servers (`mimo`: at least
    /// [`frame::DEFAULT_MAX_FRAME`], the bound the owner sizes its `mimo` sessions to, since the
    /// dealer's keys for one layer of a batch can exceed the default 256 MiB).
    pub max_frame: u64,
    /// An emulated network ([`super::emu`]) on the client's links to both servers
    /// (benchmarks); `None` = the real network.
    pub network: Option<super::emu::NetProfile>,
    /// A directory for the masked weights of earlier sessions ([`super::masks::WeightCache`],
    /// one file per deployment, client, suite and fractional bits): a returning client is sent
    /// `F` only when the owner's state changed. `None`: no cache, `F` every session.
    pub cache_dir: Option<PathBuf>,
}

impl ClientConfig {
    /// Defaults: `fast`, 13 fractional bits, 30 s timeout, 90 s admission wait.
    pub fn new(keys_dir: PathBuf, name: &str, owner: &str, helper: &str) -> Self {
        ClientConfig {
            keys_dir,
            name: name.to_string(),
            owner: owner.to_string(),
            helper: helper.to_string(),
            protocol: "fast".into(),
            frac_bits: crate::fixed::DEFAULT_FRAC_BITS,
            timeout: super::DEFAULT_TIMEOUT,
            admission_wait: Duration::from_secs(90),
            max_frame: 256 << 20,
            network: None,
            cache_dir: None,
        }
    }
}

/// A client's connection to one server, after the TLS handshake and the request, before the
/// verdict is read (for tests and fault injection: a client that then stalls, disconnects or
/// sends garbage).
pub struct ClientConn {
    half: Half,
}

impl ClientConn {
    /// Connects to server role `peer` (1 = owner, 2 = helper) at `addr` and sends `req`.
    pub fn open(
        keys: &PartyKeys,
        peer: usize,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<ClientConn, NetError> {
        let mut cfg = NetConfig::new(keys.clone(), BTreeMap::new());
        cfg.timeout = timeout;
        let client = tls::client_config(keys)
            .map_err(|e| NetError::Config(format!("TLS configuration: {e}")))?;
        let (peer, conn, sock) =
            super::connect_one(peer, addr, &cfg, &client, Instant::now() + timeout)?;
        let mut half = Half { peer, conn, sock };
        half.send_json(req)?;
        Ok(ClientConn { half })
    }

    /// Waits for the server's verdict; `Err` names the server and its reason.
    pub fn verdict(&mut self, wait: Duration) -> Result<(), NetError> {
        let v: Verdict = self.half.recv_json("verdict", wait)?;
        if v.ok {
            return Ok(());
        }
        let who = match self.half.peer {
            1 => "the model owner",
            _ => "the helper",
        };
        Err(NetError::Refused {
            peer: who.into(),
            reason: v.reason,
        })
    }

    /// Sends one frame of raw bytes (after the verdict: as if it were a session message).
    pub fn send_frame(&mut self, msg: &[u8]) -> Result<(), NetError> {
        let peer = self.half.peer;
        let mut io = self.half.io();
        frame::write_frame(&mut io, msg)
            .and_then(|_| std::io::Write::flush(&mut io))
            .map_err(|e| tls::map_tls_io(peer, e, "sending", Duration::ZERO))
    }

    /// Writes raw bytes into the TLS stream (no framing), e.g. a bare oversized header.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let peer = self.half.peer;
        let mut io = self.half.io();
        std::io::Write::write_all(&mut io, bytes)
            .and_then(|_| std::io::Write::flush(&mut io))
            .map_err(|e| tls::map_tls_io(peer, e, "sending", Duration::ZERO))
    }

    /// Drops the TCP connection without a TLS close.
    pub fn drop_connection(self) {
        let _ = self.half.sock.shutdown(Shutdown::Both);
    }
}

/// A new request of client `name` for `images` images.
pub fn new_request(
    name: &str,
    protocol: &str,
    frac_bits: u32,
    images: usize,
) -> Result<Request, NetError> {
    Ok(Request {
        version: SERVE_VERSION,
        kind: "client".into(),
        session: pki::random_session_id()?,
        client: name.to_string(),
        protocol: protocol.to_string(),
        frac_bits,
        images,
        masks: String::new(),
        cached: String::new(),
    })
}

/// Classifies `images` privately: one session with the owner and the helper. Only this client
/// learns the result (`logits`/`classes` of the report).
pub fn classify(cfg: &ClientConfig, images: &ImageSource) -> crate::Result<PartyReport> {
    let keys = PartyKeys::load_stem(&cfg.keys_dir, 0, &cfg.name)?;
    pki::validate_client_name(&cfg.name)?;
    let n = images.count();
    let mut req = new_request(&cfg.name, &cfg.protocol, cfg.frac_bits, n)?;
    let cache = match (&cfg.cache_dir, uses_masks(&req)) {
        (Some(dir), true) => {
            let c = WeightCache::open(&WeightCache::path_in(
                dir,
                &keys.session_id,
                &cfg.name,
                &cfg.protocol,
                cfg.frac_bits,
            ));
            req.cached = c.claim();
            Some(Arc::new(c))
        }
        _ => None,
    };
    // with an emulated network, both links go through shaping relays that live for the session
    let (owner_addr, helper_addr, _relays) = match &cfg.network {
        Some(p) => {
            let o = super::emu::Relay::start(&cfg.owner, *p, cfg.timeout)?;
            let h = super::emu::Relay::start(&cfg.helper, *p, cfg.timeout)?;
            (o.addr().to_string(), h.addr().to_string(), vec![o, h])
        }
        None => (cfg.owner.clone(), cfg.helper.clone(), Vec::new()),
    };
    // Both requests first (the owner answers only after the helper has paired us), then both
    // verdicts at once; the first refusal closes the other connection so that, e.g., a "busy"
    // from the owner is reported at once rather than after the helper's pairing timeout.
    let helper = ClientConn::open(&keys, 2, &helper_addr, &req, cfg.timeout)?;
    let owner = ClientConn::open(&keys, 1, &owner_addr, &req, cfg.timeout)?;
    let socks: Vec<TcpStream> = [&helper, &owner]
        .iter()
        .filter_map(|c| c.half.sock.try_clone().ok())
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, Result<Half, NetError>)>();
    for (i, mut c) in [owner, helper].into_iter().enumerate() {
        let (tx, wait) = (tx.clone(), cfg.admission_wait);
        std::thread::spawn(move || {
            let r = c.verdict(wait).map(|_| c.half);
            let _ = tx.send((i, r));
        });
    }
    drop(tx);
    let mut halves = Vec::new();
    let mut errors: Vec<(usize, NetError)> = Vec::new();
    for (i, r) in rx.iter() {
        match r {
            Ok(h) => halves.push(h),
            Err(e) => {
                if errors.is_empty() {
                    for s in &socks {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                errors.push((i, e));
            }
        }
    }
    if !errors.is_empty() {
        // A refusal says more than the disconnect it causes on the other connection; the
        // first error came first.
        let pick = errors
            .iter()
            .position(|(_, e)| matches!(e, NetError::Refused { .. }))
            .unwrap_or(0);
        for h in halves {
            let _ = h.sock.shutdown(Shutdown::Both);
        }
        return Err(errors.swap_remove(pick).1.into());
    }
    // mimo's dealer keys come in larger messages; the owner admits no mimo session whose
    // messages exceed the default frame limit ([`frame_limit_for`]).
    let max_frame = if req.protocol == "mimo" {
        cfg.max_frame.max(frame::DEFAULT_MAX_FRAME)
    } else {
        cfg.max_frame
    };
    let (mesh, _) = mesh(0, halves, cfg.timeout, max_frame)?;
    let masks = uses_masks(&req).then_some(MaskReuse::Client { cache });
    session::run_with(
        mesh,
        None,
        Some(images),
        &SessionOptions {
            protocol: cfg.protocol.clone(),
            frac_bits: cfg.frac_bits,
        },
        masks.as_ref(),
    )
}

/// The plaintext fixed-point classes of `pixels` (raw CHW images) under `protocol`'s model
/// preparation (fused gates for the fast suites), as a served session should return them.
pub fn plaintext_classes(
    model: &Model,
    pixels: &[Vec<u8>],
    protocol: &str,
    frac_bits: u32,
) -> crate::Result<Vec<usize>> {
    let p: crate::protocol::Protocol = protocol.parse()?;
    let mut fm = crate::plain::FixedModel::from_model(model, frac_bits)?;
    crate::protocol::prepare_model(p, &mut fm)?;
    let mut buf = vec![0f32; fm.input_len];
    pixels
        .iter()
        .map(|img| {
            if img.len() != fm.input_len {
                return Err(crate::error::MpcError::Shape(format!(
                    "image of {} pixels for a model input of {}",
                    img.len(),
                    fm.input_len
                )));
            }
            model.spec.normalization.apply(img, &mut buf);
            let x = fm.encode_input(&buf)?;
            let t = crate::plain::forward_fixed_trace(&fm, &x, &mut |_| false)?;
            Ok(crate::plain::argmax_fixed(
                t.last().map(|v| v.as_slice()).unwrap_or(&[]),
            ))
        })
        .collect()
}

/// Outcome of a load run ([`run_load`]).
#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub sessions: usize,
    /// Sessions that failed, with their errors.
    pub failures: Vec<String>,
    /// Sessions whose secure class differs from the plaintext class.
    pub mismatches: usize,
    /// Seconds per session (one image each), sorted.
    pub latencies: Vec<f64>,
    pub wall_seconds: f64,
}

impl LoadResult {
    /// The `q`-quantile (nearest rank) of the latencies.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1]
    }
    /// Images per second over the whole run.
    pub fn throughput(&self) -> f64 {
        (self.sessions - self.failures.len()) as f64 / self.wall_seconds.max(1e-9)
    }
}

/// Runs `clients.len()` concurrent clients, each classifying `per_client` images in sessions of
/// one image (image `j` of `pixels`, cycling), and checks every secure class against
/// `expected[j]`.
pub fn run_load(
    clients: &[ClientConfig],
    pixels: &[Vec<u8>],
    expected: &[usize],
    per_client: usize,
) -> LoadResult {
    let t0 = Instant::now();
    let results: Vec<Vec<Result<(f64, bool), String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(ci, cfg)| {
                s.spawn(move || {
                    (0..per_client)
                        .map(|k| {
                            let j = (ci * per_client + k) % pixels.len().max(1);
                            let t = Instant::now();
                            let src = ImageSource::Pixels(vec![pixels[j].clone()]);
                            match classify(cfg, &src) {
                                Ok(r) => {
                                    let c = r.classes.as_ref().and_then(|c| c.first().copied());
                                    Ok((t.elapsed().as_secs_f64(), c == expected.get(j).copied()))
                                }
                                Err(e) => Err(format!("{}: {e}", cfg.name)),
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err("client thread panicked".into())])
            })
            .collect()
    });
    let mut out = LoadResult {
        clients: clients.len(),
        sessions: 0,
        failures: Vec::new(),
        mismatches: 0,
        latencies: Vec::new(),
        wall_seconds: t0.elapsed().as_secs_f64(),
    };
    for r in results.into_iter().flatten() {
        out.sessions += 1;
        match r {
            Ok((secs, same)) => {
                out.latencies.push(secs);
                if !same {
                    out.mismatches += 1;
                }
            }
            Err(e) => out.failures.push(e),
        }
    }
    out.latencies.sort_by(|a, b| a.total_cmp(b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_list_is_reread_when_it_changes() {
        let d = std::env::temp_dir().join(format!("relushare-deny-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let deny = DenyList::new(&d);
        deny.check("client-1").unwrap();
        std::fs::write(d.join("revoked"), "# revoked clients\nclient-1\n").unwrap();
        assert!(deny.check("client-1").unwrap_err().contains("revoked"));
        deny.check("client-2").unwrap();
        std::fs::write(d.join("revoked"), "client-2  # lost laptop\n").unwrap();
        deny.check("client-1").unwrap();
        assert!(deny.check("client-2").is_err());
        std::fs::remove_file(d.join("revoked")).unwrap();
        deny.check("client-2").unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn admission_queues_then_refuses() {
        let a = Admission::new(1, 1);
        let s1 = a.acquire(Duration::ZERO).unwrap();
        // One waits in the queue and gets the slot when it is freed.
        let a2 = a.clone();
        let waiter = std::thread::spawn(move || a2.acquire(Duration::from_secs(20)).is_ok());
        let t = Instant::now();
        while a.state.lock().unwrap().1 == 0 {
            assert!(t.elapsed() < Duration::from_secs(10), "never queued");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The queue (of 1) is full: the next is told the server is busy.
        let e = a.acquire(Duration::from_secs(5)).err().unwrap();
        assert!(e.contains("busy"), "{e}");
        drop(s1);
        assert!(waiter.join().unwrap());
        assert_eq!(*a.state.lock().unwrap(), (0, 0));
        // A queued session that waits too long is told so.
        let _s = a.acquire(Duration::ZERO).unwrap();
        let e = a.acquire(Duration::from_millis(50)).err().unwrap();
        assert!(e.contains("within"), "{e}");
    }

    #[test]
    fn requests_are_validated() {
        let mut r = new_request("client-1", "fast", 13, 2).unwrap();
        validate_request(&r, 4).unwrap();
        r.images = 5;
        assert!(validate_request(&r, 4).unwrap_err().contains("images"));
        r.images = 1;
        r.protocol = "plaintext".into();
        assert!(validate_request(&r, 4).unwrap_err().contains("protocol"));
        r.protocol = "mimo".into();
        validate_request(&r, 4).unwrap();
        r.protocol = "fss".into();
        r.client = "Client 1".into();
        assert!(validate_request(&r, 4).is_err());
        r.client = "client-1".into();
        r.session = "../x".into();
        assert!(validate_request(&r, 4).is_err());
        let mut r = new_request("client-1", "fast", 13, 2).unwrap();
        r.cached = "0123456789abcdef0123456789abcdef:".to_string() + &"ab".repeat(32);
        validate_request(&r, 4).unwrap();
        r.cached = "../../etc".into();
        assert!(validate_request(&r, 4).unwrap_err().contains("cached"));
    }

    /// An owner and a helper serving in this process.
    struct Pair {
        /// The deployment's directory (certificates, deny list).
        d: PathBuf,
        /// Fashion-MNIST `uniform32` with random weights (seed 3).
        model: Model,
        owner: Server,
        helper: Server,
        /// The owner's and the helper's addresses.
        oa: String,
        ha: String,
        /// Two 28x28 test images.
        pixels: Vec<Vec<u8>>,
    }

    /// A fresh deployment in a temporary directory named after `tag` with `clients` client
    /// certificates, and its owner and helper serving in this process with `timeout`.
    fn start_pair(tag: &str, clients: usize, timeout: Duration) -> Pair {
        use relushare_model::{presets, Arch};
        let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        pki::generate_deployment(&d, clients, Some("ut"), false).unwrap();
        let spec = presets::build(Arch::Fmnist, "uniform32").unwrap();
        let model = Model::random(spec, None, 3).unwrap();
        let log: Logger = Arc::new(|_: &str| {});
        let mut hc = ServeConfig::new(d.clone(), ServeRole::Helper);
        hc.timeout = timeout;
        let helper = serve(
            hc.clone(),
            super::super::bind("127.0.0.1:0").unwrap(),
            None,
            log.clone(),
        )
        .unwrap();
        let mut oc = hc.clone();
        oc.role = ServeRole::Owner;
        oc.helper = Some(helper.addr().to_string());
        let owner = serve(
            oc,
            super::super::bind("127.0.0.1:0").unwrap(),
            Some(model.clone()),
            log,
        )
        .unwrap();
        let (oa, ha) = (owner.addr().to_string(), helper.addr().to_string());
        let pixels: Vec<Vec<u8>> = (0..2u8)
            .map(|k| {
                (0..784)
                    .map(|i| ((i * 37 + k as usize * 101) % 256) as u8)
                    .collect()
            })
            .collect();
        Pair {
            d,
            model,
            owner,
            helper,
            oa,
            ha,
            pixels,
        }
    }

    /// Owner and helper in this process, two clients concurrently, a revoked client refused,
    /// a client with the certificate of another name refused.
    #[test]
    fn serve_in_process() {
        let Pair {
            d,
            model,
            owner,
            helper,
            oa,
            ha,
            pixels,
        } = start_pair("relushare-serve-ut", 3, Duration::from_secs(20));
        let want = plaintext_classes(&model, &pixels, "fast", 13).unwrap();
        let reports: Vec<PartyReport> = std::thread::scope(|s| {
            let hs: Vec<_> = ["client-1", "client-2"]
                .into_iter()
                .map(|name| {
                    let (d, oa, ha, pixels, want) = (&d, &oa, &ha, &pixels, &want);
                    s.spawn(move || {
                        let cfg = ClientConfig::new(d.clone(), name, oa, ha);
                        let r = classify(&cfg, &ImageSource::Pixels(pixels.clone())).unwrap();
                        assert_eq!(r.classes.as_ref().unwrap(), want);
                        assert_eq!(r.arch, "fmnist");
                        r
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // One weight-mask state for the pair, its masked weights computed once; the clients
        // opened nothing and got the same state.
        let st = owner.mask_stats();
        let (id, computed) = st.current.clone().unwrap();
        assert_eq!((st.states, computed), (1, 1), "{st:?}");
        let hs = helper.mask_stats();
        assert_eq!(hs.helper_states, 1);
        for r in &reports {
            assert_eq!(r.weight_masks.as_deref(), Some(id.as_str()));
            assert_eq!(r.model_setup_bytes, 0);
        }
        // A later session and another suite: the same state; fss gets its own masked weights.
        let cfg = ClientConfig::new(d.clone(), "client-2", &oa, &ha);
        let r = classify(&cfg, &ImageSource::Pixels(pixels[..1].to_vec())).unwrap();
        assert_eq!(r.weight_masks.as_deref(), Some(id.as_str()));
        let mut cfg = ClientConfig::new(d.clone(), "client-1", &oa, &ha);
        cfg.protocol = "fss".into();
        let r = classify(&cfg, &ImageSource::Pixels(pixels[..1].to_vec())).unwrap();
        assert_eq!(r.weight_masks.as_deref(), Some(id.as_str()));
        assert_eq!(
            r.classes.unwrap()[0],
            plaintext_classes(&model, &pixels[..1], "fss", 13).unwrap()[0]
        );
        assert_eq!(owner.mask_stats().current, Some((id.clone(), 2)));
        assert_eq!(owner.mask_stats().states, 1);
        std::fs::write(d.join("revoked"), "client-3\n").unwrap();
        let cfg = ClientConfig::new(d.clone(), "client-3", &oa, &ha);
        let e = classify(&cfg, &ImageSource::Pixels(pixels.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("client-3 is revoked"), "{e}");
        // client-2's certificate claiming to be client-1.
        std::fs::copy(d.join("client-2.crt"), d.join("fake.crt")).unwrap();
        std::fs::copy(d.join("client-2.key"), d.join("fake.key")).unwrap();
        let keys = PartyKeys::load_stem(&d, 0, "fake").unwrap();
        let req = new_request("client-1", "fast", 13, 1).unwrap();
        let mut c = ClientConn::open(&keys, 1, &oa, &req, Duration::from_secs(10)).unwrap();
        let e = c.verdict(Duration::from_secs(10)).unwrap_err().to_string();
        assert!(e.contains("not issued to"), "{e}");
        owner.stop();
        helper.stop();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `mimo` served: two sessions of one client reuse the pair's weight masks (the owner
    /// computes `F` once; the client opens nothing: 0 model-setup bytes, where a one-off run
    /// opens 8 bytes per masked weight), the classes are the plaintext fixed point's of the
    /// model prepared for `mimo` and the logits are within the truncation error; `fast` next to
    /// it gets its own masked weights.
    #[test]
    fn serve_mimo_in_process() {
        let Pair {
            d,
            model,
            owner,
            helper,
            oa,
            ha,
            pixels,
        } = start_pair("relushare-serve-mimo", 2, Duration::from_secs(30));
        let want = plaintext_classes(&model, &pixels, "mimo", 13).unwrap();
        // The plaintext fixed-point logits of the model prepared for mimo.
        let mut fm = crate::plain::FixedModel::from_model(&model, 13).unwrap();
        crate::protocol::prepare_model(crate::protocol::Protocol::Mimo, &mut fm).unwrap();
        let logits: Vec<Vec<f32>> = pixels
            .iter()
            .map(|img| {
                let mut buf = vec![0f32; fm.input_len];
                model.spec.normalization.apply(img, &mut buf);
                let x = fm.encode_input(&buf).unwrap();
                let t = crate::plain::forward_fixed_trace(&fm, &x, &mut |_| false).unwrap();
                fm.fp.decode_vec(t.last().unwrap())
            })
            .collect();
        let mut cfg = ClientConfig::new(d.clone(), "client-1", &oa, &ha);
        cfg.protocol = "mimo".into();
        let mut reports = Vec::new();
        for imgs in [&pixels[..], &pixels[1..]] {
            let t = Instant::now();
            let r = classify(&cfg, &ImageSource::Pixels(imgs.to_vec())).unwrap();
            eprintln!(
                "mimo session of {} image(s): {:.2} s; client sent {} B setup, {} B offline, {} B online ({} rounds)",
                imgs.len(),
                t.elapsed().as_secs_f64(),
                r.setup_bytes,
                r.offline_bytes,
                r.online_bytes,
                r.online_rounds
            );
            let k = pixels.len() - imgs.len();
            assert_eq!(r.classes.as_deref(), Some(&want[k..]));
            for (got, want) in r.logits.as_ref().unwrap().iter().zip(&logits[k..]) {
                for (a, b) in got.iter().zip(want) {
                    assert!((a - b).abs() < 0.01 + 0.01 * b.abs(), "{got:?} vs {want:?}");
                }
            }
            assert_eq!(r.model_setup_bytes, 0, "the client opened weights");
            reports.push(r);
        }
        let st = owner.mask_stats();
        let (id, computed) = st.current.clone().unwrap();
        assert_eq!((st.states, computed), (1, 1), "{st:?}");
        assert_eq!(helper.mask_stats().helper_states, 1);
        for r in &reports {
            assert_eq!(r.weight_masks.as_deref(), Some(id.as_str()));
        }
        // A one-off mimo run opens F: 8 bytes per masked weight from each computing party.
        let all: Vec<Vec<u64>> = session::secret_vectors(&fm).into_iter().cloned().collect();
        let (pw, pg) = session::assign_shares(&fm, 1, all);
        let plan = crate::runner::build_plan(&fm, 1, &pg);
        let n = crate::fast::masks::masked_len_for("mimo", &plan, &pw).unwrap();
        assert!(n > 0);
        eprintln!(
            "mimo masks {n} weights: a one-off run opens {} B per party; served sessions 0",
            8 * n
        );
        // fast next to it: its own masked weights in the same state.
        let mut cfg = ClientConfig::new(d.clone(), "client-2", &oa, &ha);
        cfg.protocol = "fast".into();
        let r = classify(&cfg, &ImageSource::Pixels(pixels[..1].to_vec())).unwrap();
        assert_eq!(r.weight_masks.as_deref(), Some(id.as_str()));
        assert_eq!(owner.mask_stats().current, Some((id, 2)));
        owner.stop();
        helper.stop();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A client's masked-weights cache: the first session receives `F` and stores it, the next
    /// takes it from the file (exactly 8 bytes per masked weight fewer received), a damaged file
    /// is ignored and replaced, and a file of another owner state gets the current `F`; the
    /// classes are the plaintext ones throughout.
    #[test]
    fn client_cache_of_masked_weights() {
        use super::super::masks::Held;
        let p = start_pair("relushare-serve-cache", 1, Duration::from_secs(20));
        let (d, oa, ha, pixels) = (&p.d, &p.oa, &p.ha, &p.pixels);
        let want = plaintext_classes(&p.model, &pixels[..1], "fast", 13).unwrap();
        let run = |cfg: &ClientConfig| {
            let r = classify(cfg, &ImageSource::Pixels(pixels[..1].to_vec())).unwrap();
            assert_eq!(r.classes.as_deref(), Some(&want[..]));
            r
        };
        let note = |r: &PartyReport| r.weight_cache.clone().unwrap_or_default();
        let plain = run(&ClientConfig::new(d.clone(), "client-1", oa, ha));
        assert!(plain.weight_cache.is_none());
        let dir = d.join("cache");
        let mut cfg = ClientConfig::new(d.clone(), "client-1", oa, ha);
        cfg.cache_dir = Some(dir.clone());
        let first = run(&cfg);
        assert!(
            note(&first).contains("received and stored"),
            "{}",
            note(&first)
        );
        assert_eq!(first.setup_received_bytes, plain.setup_received_bytes);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        let file = &files[0];
        let held = WeightCache::open(file).held().cloned().expect("stored");
        assert_eq!(Some(held.id.clone()), first.weight_masks);
        let n = held.f.len() as u64;
        assert!(n > 1000);

        let second = run(&cfg);
        assert!(note(&second).contains("taken from"), "{}", note(&second));
        assert_eq!(
            first.setup_received_bytes - second.setup_received_bytes,
            8 * n,
            "a cached F is not sent"
        );

        // A damaged file: ignored (with the reason), F received again and the file replaced.
        let mut b = std::fs::read(file).unwrap();
        let l = b.len();
        b[l - 3] ^= 0x10;
        std::fs::write(file, &b).unwrap();
        let third = run(&cfg);
        let t = note(&third);
        assert!(
            t.contains("received and stored") && t.contains("ignored") && t.contains("digest"),
            "{t}"
        );
        assert_eq!(third.setup_received_bytes, first.setup_received_bytes);
        assert_eq!(WeightCache::open(file).held().unwrap().digest, held.digest);

        // A file of another state (the owner restarted since): F is sent.
        let stale = Held {
            id: "0123456789abcdef0123456789abcdef".into(),
            ..held.clone()
        };
        WeightCache::open(file).store(&stale).unwrap();
        let fourth = run(&cfg);
        assert!(
            note(&fourth).contains("received and stored"),
            "{}",
            note(&fourth)
        );
        assert_eq!(fourth.setup_received_bytes, first.setup_received_bytes);
        assert_eq!(WeightCache::open(file).held().unwrap().id, held.id);
        p.owner.stop();
        p.helper.stop();
        let _ = std::fs::remove_dir_all(d);
    }

    /// The client's checks of the owner's masked-weights message: `F` must match the digest
    /// sent with it, and a message without `F` must name what the client holds.
    #[test]
    fn masked_weights_message_is_checked() {
        use super::super::masks::{digest_of, Held, MASK_ID_BYTES};
        let f: Vec<u64> = (1..=50).collect();
        let id = "00112233445566778899aabbccddeeff";
        let held = Held {
            id: id.into(),
            digest: digest_of(&f),
            f: Arc::new(f.clone()),
        };
        let mut head = super::super::masks::id_bytes(id).unwrap().to_vec();
        head.extend_from_slice(&[7u8; MASK_ID_BYTES]);
        head.extend_from_slice(&held.digest);
        let mut full = head.clone();
        full.extend_from_slice(&crate::ring::u64s_to_bytes(&f));
        let (h, fresh) = session::client_fixed(&full, 50, None).unwrap();
        assert!(fresh && *h.f == f && h.id == id);
        let (h, fresh) = session::client_fixed(&head, 50, Some(&held)).unwrap();
        assert!(!fresh && *h.f == f);
        // F that does not match its digest.
        let mut bad = full.clone();
        let l = bad.len();
        bad[l - 1] ^= 1;
        let e = session::client_fixed(&bad, 50, None).unwrap_err();
        assert!(e.contains("digest"), "{e}");
        // "You hold it" to a client that holds nothing, or another state, or another size.
        let e = session::client_fixed(&head, 50, None).unwrap_err();
        assert!(e.contains("does not"), "{e}");
        let other = Held {
            id: "ffeeddccbbaa99887766554433221100".into(),
            ..held.clone()
        };
        assert!(session::client_fixed(&head, 50, Some(&other)).is_err());
        let e = session::client_fixed(&head, 49, Some(&held)).unwrap_err();
        assert!(e.contains("49"), "{e}");
        // Wrong lengths.
        assert!(session::client_fixed(&full[..full.len() - 8], 50, None).is_err());
        assert!(session::client_fixed(&head[..10], 50, Some(&held)).is_err());
    }

    /// `mimo`'s frames fit its dealer keys: above `fast`'s limit, growing with the images, and a
    /// session whose keys exceed the bounds is an error (the owner refuses it).
    #[test]
    fn mimo_frame_limits() {
        use relushare_model::{presets, Arch};
        let spec = presets::build(Arch::Fmnist, "uniform32").unwrap();
        let model = Model::random(spec, None, 3).unwrap();
        let fast = frame_limit(&model, 13, 4).unwrap();
        let m1 = frame_limit_for(&model, "mimo", 13, 1).unwrap();
        let m4 = frame_limit_for(&model, "mimo", 13, 4).unwrap();
        assert!(m4 > m1 && m4 > fast, "{fast} {m1} {m4}");
        assert!(m4 <= frame::DEFAULT_MAX_FRAME);
        let spec = presets::build(Arch::Cifar10, "uniform32").unwrap();
        let model = Model::random(spec, None, 3).unwrap();
        let one = frame_limit_for(&model, "mimo", 13, 1).unwrap();
        eprintln!("cifar10 uniform32 mimo frame limit for one image: {one} B");
        let e = frame_limit_for(&model, "mimo", 13, DEFAULT_MAX_IMAGES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("send fewer images"), "{e}");
        // The owner refuses such a session in its verdict, before any share moves.
        let d = std::env::temp_dir().join(format!("relushare-serve-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        pki::generate_deployment(&d, 1, Some("ut"), false).unwrap();
        let log: Logger = Arc::new(|_: &str| {});
        let hc = ServeConfig::new(d.clone(), ServeRole::Helper);
        let helper = serve(
            hc.clone(),
            super::super::bind("127.0.0.1:0").unwrap(),
            None,
            log.clone(),
        )
        .unwrap();
        let mut oc = hc;
        oc.role = ServeRole::Owner;
        oc.helper = Some(helper.addr().to_string());
        let owner = serve(
            oc,
            super::super::bind("127.0.0.1:0").unwrap(),
            Some(model),
            log,
        )
        .unwrap();
        let (oa, ha) = (owner.addr().to_string(), helper.addr().to_string());
        let mut cfg = ClientConfig::new(d.clone(), "client-1", &oa, &ha);
        cfg.protocol = "mimo".into();
        let imgs = ImageSource::Random {
            seed: 1,
            count: DEFAULT_MAX_IMAGES,
        };
        let e = classify(&cfg, &imgs).unwrap_err().to_string();
        assert!(e.contains("send fewer images"), "{e}");
        assert_eq!(owner.mask_stats().states, 0, "no session started");
        owner.stop();
        helper.stop();
        let _ = std::fs::remove_dir_all(&d);
    }
}
