//! User-space network emulation: a shaping TCP relay between two parties.
//!
//! The kernel's `tc netem` is not available on every machine, so the emulated networks of
//! `relushare infer --network` and `relushare bench --network` are made here, below the TLS
//! transport: a [`Relay`] listens on a loopback port and forwards every connection it accepts to
//! a target address (a party's listening socket). Each direction of each connection is shaped on
//! its own:
//!
//! - **bandwidth**: a token bucket filled at the link rate (`mbit` Mbit/s) holding at most
//!   [`BURST_BYTES`]; a chunk read from the sender departs once the bucket has paid for it
//!   (chunks may drive the bucket into debt, so a long transfer departs at exactly the rate);
//! - **latency**: after its departure a chunk is delivered one one-way delay (RTT / 2) later;
//! - **order** is kept (one FIFO per direction; departure times never decrease);
//! - **back-pressure**: at most [`QUEUE_CHUNKS`] chunks of [`CHUNK`] bytes wait in a direction,
//!   then the relay stops reading, so the sender's TCP window (and its write timeout) applies;
//! - **end of stream** (half-close) and resets are passed on after the data queued before them.
//!
//! The parties do not know they are shaped: they run exactly as over a real network (TLS
//! handshake included, which also pays the round trips). Protocols above the transport are
//! unchanged. A relay on a 2-core machine adds the scheduling jitter of its sleeping threads
//! (tens of microseconds to a millisecond under load) on top of the set delay; the delay and the
//! rate are lower bounds, which the tests check.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::NetError;

/// Largest chunk read and forwarded at once.
pub const CHUNK: usize = 64 * 1024;
/// Most chunks waiting in one direction of a connection.
pub const QUEUE_CHUNKS: usize = 256;
/// Token-bucket depth: bytes that may leave at once after an idle period.
pub const BURST_BYTES: f64 = 64.0 * 1024.0;

/// An emulated network: round-trip time and bandwidth of every link (each direction has the
/// full bandwidth, as on a switched full-duplex network).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetProfile {
    /// Round-trip time in milliseconds (each direction delays by half of it).
    pub rtt_ms: f64,
    /// Bandwidth per direction in Mbit/s (10^6 bit/s); `None` is unlimited.
    pub mbit: Option<f64>,
}

impl NetProfile {
    /// The LAN setting of published 2PC/3PC inference work: 3 Gbit/s, 0.3 ms round trip.
    pub const LAN: NetProfile = NetProfile {
        rtt_ms: 0.3,
        mbit: Some(3000.0),
    };
    /// The WAN setting: 400 Mbit/s, 40 ms round trip.
    pub const WAN: NetProfile = NetProfile {
        rtt_ms: 40.0,
        mbit: Some(400.0),
    };

    /// `lan`, `wan` or `none` (no emulated network: `Ok(None)`).
    pub fn by_name(name: &str) -> Result<Option<NetProfile>, NetError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "lan" => Ok(Some(Self::LAN)),
            "wan" => Ok(Some(Self::WAN)),
            "none" => Ok(None),
            other => Err(NetError::Config(format!(
                "unknown network {other:?} (use lan, wan or none)"
            ))),
        }
    }

    /// A custom network; checks the values.
    pub fn new(rtt_ms: f64, mbit: Option<f64>) -> Result<NetProfile, NetError> {
        if !(rtt_ms.is_finite() && (0.0..=60_000.0).contains(&rtt_ms)) {
            return Err(NetError::Config(format!(
                "round-trip time must be between 0 and 60000 ms (got {rtt_ms})"
            )));
        }
        if let Some(m) = mbit {
            if !(m.is_finite() && m > 0.0 && m <= 1e6) {
                return Err(NetError::Config(format!(
                    "bandwidth must be above 0 and at most 10^6 Mbit/s (got {m})"
                )));
            }
        }
        Ok(NetProfile { rtt_ms, mbit })
    }

    /// The network of the command-line options `--network NAME [--rtt-ms X] [--mbit Y]`:
    /// `--rtt-ms`/`--mbit` override the named profile's values; with `none` (no emulated
    /// network) either of them selects one, the other value then being 0 ms / unlimited.
    pub fn from_args(
        network: &str,
        rtt_ms: Option<f64>,
        mbit: Option<f64>,
    ) -> Result<Option<NetProfile>, NetError> {
        let base = Self::by_name(network)?;
        if rtt_ms.is_none() && mbit.is_none() {
            return Ok(base);
        }
        let b = base.unwrap_or(NetProfile {
            rtt_ms: 0.0,
            mbit: None,
        });
        Self::new(rtt_ms.unwrap_or(b.rtt_ms), mbit.or(b.mbit)).map(Some)
    }

    /// The name of a standard profile, if this is one.
    pub fn name(&self) -> Option<&'static str> {
        if *self == Self::LAN {
            Some("lan")
        } else if *self == Self::WAN {
            Some("wan")
        } else {
            None
        }
    }

    /// One-way delay (half the round trip).
    pub fn one_way(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_ms / 2000.0)
    }

    /// Bytes per second of each direction, `None` if unlimited.
    pub fn bytes_per_second(&self) -> Option<f64> {
        self.mbit.map(|m| m * 1e6 / 8.0)
    }

    /// The simple cost model `rounds x RTT + bytes / bandwidth` (seconds), used for our own runs
    /// (plus their compute time) and for peers' published costs. It charges a full round trip per
    /// round and sends all bytes over one link; see BENCHMARKS.md for where it is pessimistic.
    pub fn modelled_seconds(&self, rounds: u64, bytes: f64) -> f64 {
        rounds as f64 * self.rtt_ms / 1000.0 + self.bytes_per_second().map_or(0.0, |r| bytes / r)
    }
}

impl std::fmt::Display for NetProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.mbit {
            Some(m) => write!(f, "{} ms RTT, {} Mbit/s", self.rtt_ms, m),
            None => write!(f, "{} ms RTT, unlimited bandwidth", self.rtt_ms),
        }
    }
}

/// The departure schedule of one direction: a token bucket followed by a fixed delay.
#[derive(Debug)]
pub struct Shaper {
    rate: Option<f64>,
    delay: Duration,
    /// Tokens in bytes (negative: debt to repay before the next departure).
    tokens: f64,
    last: Instant,
}

impl Shaper {
    /// A full bucket at `now`.
    pub fn new(profile: &NetProfile, now: Instant) -> Shaper {
        Shaper {
            rate: profile.bytes_per_second(),
            delay: profile.one_way(),
            tokens: BURST_BYTES,
            last: now,
        }
    }

    /// When `len` bytes that arrived at `now` are delivered at the far end. Calls must come in
    /// arrival order (`now` never decreasing); the results then never decrease either.
    pub fn schedule(&mut self, now: Instant, len: usize) -> Instant {
        let depart = match self.rate {
            None => now,
            Some(rate) => {
                let now = now.max(self.last);
                let refill = (now - self.last).as_secs_f64() * rate;
                self.tokens = (self.tokens + refill).min(BURST_BYTES) - len as f64;
                self.last = now;
                if self.tokens >= 0.0 {
                    now
                } else {
                    now + Duration::from_secs_f64(-self.tokens / rate)
                }
            }
        };
        depart + self.delay
    }
}

enum Item {
    Data(Vec<u8>, Instant),
    Eof(Instant),
    Reset,
}

/// Counters of a relay (both directions of every connection together).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes delivered.
    pub bytes: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

/// A shaping TCP relay: listens on a loopback port and forwards each accepted connection to
/// `target` through a [`Shaper`] per direction. Stops accepting when dropped (connections
/// already made run until their ends close them).
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish()
    }
}

impl Relay {
    /// Starts a relay on `127.0.0.1` (a free port) towards `target`. Each accepted connection is
    /// joined to a new connection to the target, retried for at most `connect_timeout` (the
    /// target may start after its dialler); if that fails, the accepted connection is closed.
    pub fn start(
        target: &str,
        profile: NetProfile,
        connect_timeout: Duration,
    ) -> Result<Relay, NetError> {
        let target: SocketAddr = target
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| NetError::Config(format!("relay target {target:?} does not resolve")))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| NetError::Config(format!("relay cannot listen: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| NetError::Config(format!("relay address: {e}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NetError::Config(format!("relay listener: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let accept = std::thread::Builder::new()
            .name("relay-accept".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((a, _)) => {
                            st.connections.fetch_add(1, Ordering::Relaxed);
                            let st = st.clone();
                            // On failure the accepted socket is dropped: the dialler sees the
                            // connection close and reports its peer as unreachable.
                            std::thread::spawn(move || {
                                let _ = join(a, target, profile, connect_timeout, st);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .map_err(|e| NetError::Config(format!("relay thread: {e}")))?;
        Ok(Relay {
            addr,
            stop,
            stats,
            accept: Some(accept),
        })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes delivered so far (both directions, all connections).
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn join(
    a: TcpStream,
    target: SocketAddr,
    profile: NetProfile,
    connect_timeout: Duration,
    stats: Arc<RelayStats>,
) -> io::Result<()> {
    a.set_nonblocking(false)?;
    // The target may not listen yet (parties start in any order): retry until the deadline,
    // as a dialler would.
    let deadline = Instant::now() + connect_timeout;
    let b = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&target, left.max(Duration::from_millis(10))) {
            Ok(b) => break b,
            Err(e) if Instant::now() + Duration::from_millis(20) >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    pump(a.try_clone()?, b.try_clone()?, profile, stats.clone())?;
    pump(b, a, profile, stats)?;
    Ok(())
}

/// Forwards `src` to `dst` through a shaper: a reader thread stamps and queues chunks, a writer
/// thread delivers each at its time.
fn pump(
    src: TcpStream,
    dst: TcpStream,
    profile: NetProfile,
    stats: Arc<RelayStats>,
) -> io::Result<()> {
    let (tx, rx) = sync_channel::<Item>(QUEUE_CHUNKS);
    let src_w = src.try_clone()?;
    std::thread::Builder::new()
        .name("relay-read".into())
        .spawn(move || read_loop(src, profile, tx))?;
    std::thread::Builder::new()
        .name("relay-write".into())
        .spawn(move || write_loop(dst, src_w, rx, stats))?;
    Ok(())
}

fn read_loop(mut src: TcpStream, profile: NetProfile, tx: SyncSender<Item>) {
    let mut shaper = Shaper::new(&profile, Instant::now());
    loop {
        let mut buf = vec![0u8; CHUNK];
        match src.read(&mut buf) {
            Ok(0) => {
                let at = shaper.schedule(Instant::now(), 0);
                let _ = tx.send(Item::Eof(at));
                return;
            }
            Ok(n) => {
                buf.truncate(n);
                let at = shaper.schedule(Instant::now(), n);
                if tx.send(Item::Data(buf, at)).is_err() {
                    // The writer is gone (its side failed): stop reading.
                    let _ = src.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                let _ = tx.send(Item::Reset);
                return;
            }
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn write_loop(mut dst: TcpStream, src: TcpStream, rx: Receiver<Item>, stats: Arc<RelayStats>) {
    for item in rx.iter() {
        match item {
            Item::Data(buf, at) => {
                sleep_until(at);
                if dst.write_all(&buf).is_err() {
                    // The receiver is gone: make the sender see it too.
                    let _ = src.shutdown(Shutdown::Both);
                    let _ = dst.shutdown(Shutdown::Both);
                    return;
                }
                stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Item::Eof(at) => {
                sleep_until(at);
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Item::Reset => {
                let _ = dst.shutdown(Shutdown::Both);
                return;
            }
        }
    }
    let _ = dst.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 4096];
            loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (addr, h)
    }

    #[test]
    fn profiles_and_model() {
        assert_eq!(NetProfile::by_name("lan").unwrap(), Some(NetProfile::LAN));
        assert_eq!(NetProfile::by_name("WAN").unwrap(), Some(NetProfile::WAN));
        assert_eq!(NetProfile::by_name("none").unwrap(), None);
        assert!(NetProfile::by_name("moon").is_err());
        assert!(NetProfile::new(-1.0, None).is_err());
        assert!(NetProfile::new(1.0, Some(0.0)).is_err());
        assert_eq!(NetProfile::WAN.one_way(), Duration::from_millis(20));
        assert_eq!(NetProfile::WAN.bytes_per_second(), Some(50e6));
        // 72 rounds and 107 MB over WAN: 72 x 40 ms + 107e6 / 50e6 s.
        let s = NetProfile::WAN.modelled_seconds(72, 107e6);
        assert!((s - (2.88 + 2.14)).abs() < 1e-9, "{s}");
        assert_eq!(NetProfile::WAN.name(), Some("wan"));
        assert_eq!(NetProfile::from_args("none", None, None).unwrap(), None);
        let w = NetProfile::from_args("wan", Some(10.0), None)
            .unwrap()
            .unwrap();
        assert_eq!((w.rtt_ms, w.mbit), (10.0, Some(400.0)));
        let c = NetProfile::from_args("none", None, Some(100.0))
            .unwrap()
            .unwrap();
        assert_eq!((c.rtt_ms, c.mbit), (0.0, Some(100.0)));
        assert!(NetProfile::from_args("lan", Some(-2.0), None).is_err());
        assert_eq!(NetProfile::new(5.0, None).unwrap().name(), None);
    }

    #[test]
    fn shaper_paces_at_the_rate_and_keeps_order() {
        let p = NetProfile::new(10.0, Some(8.0)).unwrap(); // 1 MB/s, 5 ms one way
        let t0 = Instant::now();
        let mut s = Shaper::new(&p, t0);
        // The burst leaves at once; then 100 KB chunks arriving together leave 0.1 s apart.
        let first = s.schedule(t0, BURST_BYTES as usize);
        assert_eq!(first, t0 + Duration::from_millis(5));
        let mut last = first;
        for i in 1..=5u32 {
            let at = s.schedule(t0, 100_000);
            assert!(at >= last);
            let want = t0 + Duration::from_millis(5) + Duration::from_millis(100) * i;
            let diff = if at > want { at - want } else { want - at };
            assert!(diff < Duration::from_micros(10), "chunk {i}: {diff:?}");
            last = at;
        }
    }

    /// N request/reply exchanges through the relay take at least N round trips.
    #[test]
    fn ping_pong_takes_a_round_trip_per_round() {
        let (addr, h) = echo_server();
        let rtt_ms = 20.0;
        let relay = Relay::start(
            &addr.to_string(),
            NetProfile::new(rtt_ms, None).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let rounds = 10u32;
        let t0 = Instant::now();
        for i in 0..rounds {
            c.write_all(&[i as u8; 3]).unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).unwrap();
            assert_eq!(b, [i as u8; 3]);
        }
        let secs = t0.elapsed().as_secs_f64();
        assert!(
            secs >= rounds as f64 * rtt_ms / 1000.0,
            "{rounds} rounds in {secs} s"
        );
        assert!(secs < 10.0, "{secs}");
        drop(c);
        h.join().unwrap();
        assert_eq!(relay.connections(), 1);
        assert_eq!(relay.bytes(), 2 * 3 * rounds as u64);
    }

    /// A bulk transfer through the relay is capped at the set rate, arrives complete and in
    /// order, and its end of stream is passed on.
    #[test]
    fn bulk_transfer_is_capped_at_the_rate() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sink = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).unwrap();
            (v, Instant::now())
        });
        let mbit = 40.0; // 5 MB/s
        let relay = Relay::start(
            &addr.to_string(),
            NetProfile::new(0.0, Some(mbit)).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        let len = 1_500_000usize;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        let t0 = Instant::now();
        c.write_all(&data).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let (got, t1) = sink.join().unwrap();
        let secs = (t1 - t0).as_secs_f64();
        assert!(got == data, "data changed in transit");
        let floor = (len as f64 - BURST_BYTES) / (mbit * 1e6 / 8.0);
        assert!(
            secs >= floor,
            "{len} bytes in {secs} s, the cap allows {floor} s at best"
        );
        assert!(secs < 10.0 * floor + 2.0, "{secs}");
    }

    /// A relay whose target is gone closes the accepted connection instead of leaving the
    /// dialler waiting.
    #[test]
    fn dead_target_closes_the_connection() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(); // dropped: nothing listens there
        let relay = Relay::start(
            &addr.to_string(),
            NetProfile::LAN,
            Duration::from_millis(500),
        )
        .unwrap();
        let mut c = TcpStream::connect(relay.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        let t0 = Instant::now();
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(4));
    }
}
