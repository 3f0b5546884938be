//! The message transport between the three parties, and an in-memory implementation for three
//! threads in one process.
//!
//! A transport only moves whole messages between parties 0, 1 and 2; it does not count anything
//! (cost accounting is [`crate::cost::Comm`], a wrapper above it). TCP/TLS lives in `net`.

use crate::error::{MpcError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A flag shared by the transports of a party (or a session): once set, every receive on
/// them that is waiting or starts later fails with [`MpcError::Cancelled`] within
/// [`CANCEL_POLL`]. A pipelined stream sets it when one of its threads fails, so the other
/// does not wait out its timeout for a message that will never come.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

/// How often a waiting receive looks at its [`CancelToken`].
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    /// Cancel every receive watching this token.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits on `rx` at most `timeout`, failing early once `cancel` (if any) is set. `Err(None)`:
/// timed out; `Err(Some(e))`: cancelled or disconnected (`e` says which).
pub fn recv_cancellable<T>(
    rx: &Receiver<T>,
    timeout: Duration,
    cancel: Option<&CancelToken>,
    from: usize,
) -> std::result::Result<T, Option<MpcError>> {
    let Some(c) = cancel else {
        return match rx.recv_timeout(timeout) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(None),
            Err(RecvTimeoutError::Disconnected) => Err(Some(MpcError::Disconnected(from))),
        };
    };
    let deadline = Instant::now() + timeout;
    loop {
        if c.is_cancelled() {
            return Err(Some(MpcError::Cancelled(format!(
                "stopped waiting for party {from}"
            ))));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(None);
        }
        match rx.recv_timeout(left.min(CANCEL_POLL)) {
            Ok(m) => return Ok(m),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Some(MpcError::Disconnected(from))),
        }
    }
}

/// Moves framed messages between the three parties.
pub trait Transport: Send {
    /// This party's index: 0, 1 or 2.
    fn party(&self) -> usize;
    /// Send one whole message to party `to`; must not block on the peer reading it.
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<(), MpcError>;
    /// Like [`Transport::send`] with an owned buffer, which an in-memory transport can pass on
    /// without copying (the default just borrows it).
    fn send_owned(&mut self, to: usize, msg: Vec<u8>) -> Result<(), MpcError> {
        self.send(to, &msg)
    }
    /// Receive the next whole message from party `from` (messages from one peer arrive in order).
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, MpcError>;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn party(&self) -> usize {
        (**self).party()
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<(), MpcError> {
        (**self).send(to, msg)
    }
    fn send_owned(&mut self, to: usize, msg: Vec<u8>) -> Result<(), MpcError> {
        (**self).send_owned(to, msg)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, MpcError> {
        (**self).recv(from)
    }
}

/// Default time a party waits for a peer's message before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// In-memory transport over unbounded `std::sync::mpsc` channels (sending never blocks).
pub struct MemTransport {
    party: usize,
    tx: [Option<Sender<Vec<u8>>>; 3],
    rx: [Option<Receiver<Vec<u8>>>; 3],
    timeout: Duration,
    cancel: Option<CancelToken>,
}

impl MemTransport {
    /// Three connected endpoints, for parties 0, 1 and 2 (in that order).
    pub fn trio() -> [MemTransport; 3] {
        Self::trio_with_timeout(DEFAULT_TIMEOUT)
    }

    /// Like [`MemTransport::trio`] with a custom receive timeout.
    pub fn trio_with_timeout(timeout: Duration) -> [MemTransport; 3] {
        let mut tx: [[Option<Sender<Vec<u8>>>; 3]; 3] = Default::default();
        let mut rx: [[Option<Receiver<Vec<u8>>>; 3]; 3] = Default::default();
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    let (s, r) = channel();
                    tx[from][to] = Some(s);
                    rx[to][from] = Some(r);
                }
            }
        }
        let [t0, t1, t2] = tx;
        let [r0, r1, r2] = rx;
        [
            MemTransport {
                party: 0,
                tx: t0,
                rx: r0,
                timeout,
                cancel: None,
            },
            MemTransport {
                party: 1,
                tx: t1,
                rx: r1,
                timeout,
                cancel: None,
            },
            MemTransport {
                party: 2,
                tx: t2,
                rx: r2,
                timeout,
                cancel: None,
            },
        ]
    }

    /// `lanes` independent trios (one per lane: independent ordered message streams between
    /// the same parties, as [`crate::pipeline`] uses them), every receive watching `cancel`.
    /// `result[p][l]` is party `p`'s end of lane `l`.
    pub fn trio_lanes(
        lanes: usize,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Vec<Vec<MemTransport>> {
        let mut out: Vec<Vec<MemTransport>> = (0..3).map(|_| Vec::with_capacity(lanes)).collect();
        for _ in 0..lanes {
            for (p, mut t) in Self::trio_with_timeout(timeout).into_iter().enumerate() {
                t.cancel = Some(cancel.clone());
                out[p].push(t);
            }
        }
        out
    }
}

impl Transport for MemTransport {
    fn party(&self) -> usize {
        self.party
    }

    fn send(&mut self, to: usize, msg: &[u8]) -> Result<()> {
        self.send_owned(to, msg.to_vec())
    }

    fn send_owned(&mut self, to: usize, msg: Vec<u8>) -> Result<()> {
        let tx = self
            .tx
            .get(to)
            .and_then(|t| t.as_ref())
            .ok_or(MpcError::BadParty(to))?;
        tx.send(msg).map_err(|_| MpcError::Disconnected(to))
    }

    fn recv(&mut self, from: usize) -> Result<Vec<u8>> {
        let rx = self
            .rx
            .get(from)
            .and_then(|r| r.as_ref())
            .ok_or(MpcError::BadParty(from))?;
        recv_cancellable(rx, self.timeout, self.cancel.as_ref(), from)
            .map_err(|e| e.unwrap_or(MpcError::Timeout(from)))
    }
}

/// Test only: what a [`Recording`] transport received, in order, with the sender.
#[cfg(test)]
pub(crate) type RecvLog = Arc<std::sync::Mutex<Vec<(usize, Vec<u8>)>>>;

/// Test only: a [`MemTransport`] that records every message it receives, with its sender (for
/// the tests of what a party sees: the view tests, the fixed masks' tests).
#[cfg(test)]
pub(crate) struct Recording {
    pub inner: MemTransport,
    pub log: RecvLog,
}

#[cfg(test)]
impl Transport for Recording {
    fn party(&self) -> usize {
        self.inner.party()
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<()> {
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>> {
        let m = self.inner.recv(from)?;
        self.log.lock().expect("log").push((from, m.clone()));
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_flow_in_order() {
        let [mut a, mut b, mut c] = MemTransport::trio();
        a.send(1, b"x").unwrap();
        a.send(1, b"yz").unwrap();
        c.send(1, b"c").unwrap();
        assert_eq!(b.recv(0).unwrap(), b"x");
        assert_eq!(b.recv(2).unwrap(), b"c");
        assert_eq!(b.recv(0).unwrap(), b"yz");
        a.send_owned(1, b"owned".to_vec()).unwrap();
        assert_eq!(b.recv(0).unwrap(), b"owned");
        assert!(matches!(a.send(0, b""), Err(MpcError::BadParty(0))));
        assert!(matches!(a.recv(5), Err(MpcError::BadParty(5))));
        drop(c);
        assert!(matches!(a.recv(2), Err(MpcError::Disconnected(2))));
    }

    #[test]
    fn lanes_are_independent_and_cancellable() {
        let c = CancelToken::new();
        let mut l = MemTransport::trio_lanes(2, Duration::from_secs(30), &c);
        l[0][1].send(1, b"lane1").unwrap();
        l[0][0].send(1, b"lane0").unwrap();
        assert_eq!(l[1][0].recv(0).unwrap(), b"lane0");
        assert_eq!(l[1][1].recv(0).unwrap(), b"lane1");
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                c.cancel();
            });
            assert!(matches!(l[2][0].recv(0), Err(MpcError::Cancelled(_))));
        });
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn timeout_is_an_error() {
        let [mut a, _b, _c] = MemTransport::trio_with_timeout(Duration::from_millis(10));
        assert!(matches!(a.recv(1), Err(MpcError::Timeout(1))));
    }
}
