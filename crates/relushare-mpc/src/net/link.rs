//! One established TLS connection to a peer, driven by two threads so that sending never
//! waits for the peer to read:
//!
//! - `send` encrypts on the caller's thread (under the connection lock) and queues the TLS
//!   records for the writer thread, which writes them to the socket with the write timeout;
//! - the reader thread reads the socket, decrypts (under the lock), decodes frames and queues
//!   whole messages; `recv` takes the next one with the read timeout.
//!
//! Any failure (disconnect, short frame, oversized length, TLS error, stalled write) is queued
//! as an error naming the peer, so the next `recv` reports it, and later calls report the link
//! as down. Closing flushes queued records, sends `close_notify`, and waits (briefly) for the
//! peer to close its side so the last messages are not lost to a reset.

use super::frame::{header, FrameDecoder, FrameError};
use super::NetError;
use rustls::Connection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Plaintext bytes encrypted and queued at a time when sending a large message.
const SEND_CHUNK: usize = 256 * 1024;
/// Longest wait for the peer to close its side after we closed ours.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Flush and peer-close limits when closing after a failure.
const QUICK_CLOSE: Duration = Duration::from_secs(1);

enum Out {
    Data(Vec<u8>),
    Close,
}

pub(crate) type Inbox = Result<Vec<u8>, NetError>;

pub(crate) struct Link {
    peer: usize,
    conn: Arc<Mutex<Connection>>,
    out_tx: Sender<Out>,
    in_rx: Receiver<Inbox>,
    failure: Arc<Mutex<Option<String>>>,
    sock: TcpStream,
    writer_done: Receiver<()>,
    reader_done: Receiver<()>,
    write_failed: Arc<AtomicBool>,
    timeout: Duration,
    closed: bool,
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock would leave the TLS state unusable; treat it as fatal for
    // this link by still handing out the guard (later TLS calls then fail cleanly).
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(failure: &Mutex<Option<String>>, e: &NetError) {
    let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(e.to_string());
    }
}

/// Moves all queued TLS records into one buffer.
fn take_tls(conn: &mut Connection) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut v)?;
    }
    Ok(v)
}

impl Link {
    pub(crate) fn new(
        peer: usize,
        mut conn: Connection,
        sock: TcpStream,
        timeout: Duration,
        max_frame: u64,
    ) -> Result<Link, NetError> {
        let io_err = |e: io::Error| NetError::io(peer, e, "connection setup", timeout);
        sock.set_read_timeout(None).map_err(io_err)?;
        sock.set_write_timeout(Some(timeout)).map_err(io_err)?;
        conn.set_buffer_limit(None);
        let conn = Arc::new(Mutex::new(conn));
        let failure = Arc::new(Mutex::new(None));
        let (out_tx, out_rx) = mpsc::channel::<Out>();
        let (in_tx, in_rx) = mpsc::channel::<Inbox>();
        let (done_tx, reader_done) = mpsc::channel::<()>();

        let wsock = sock.try_clone().map_err(io_err)?;
        let w_sock = sock.try_clone().map_err(io_err)?;
        let (w_in, w_fail, write_failed) = (
            in_tx.clone(),
            failure.clone(),
            Arc::new(AtomicBool::new(false)),
        );
        let w_flag = write_failed.clone();
        let (w_done_tx, writer_done) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("net-writer-P{peer}"))
            .spawn(move || {
                // `out_rx` lives until the failure is recorded, so a concurrent `send` that finds
                // the queue closed always finds the reason too.
                if let Err(e) = writer_loop(wsock, &out_rx) {
                    let e = NetError::io(peer, e, "sending", timeout);
                    w_flag.store(true, Ordering::Relaxed);
                    record(&w_fail, &e);
                    let _ = w_in.send(Err(e));
                    let _ = w_sock.shutdown(Shutdown::Both);
                }
                let _ = w_done_tx.send(());
            })
            .map_err(io_err)?;

        let rsock = sock.try_clone().map_err(io_err)?;
        let (r_conn, r_out, r_fail) = (conn.clone(), out_tx.clone(), failure.clone());
        std::thread::Builder::new()
            .name(format!("net-reader-P{peer}"))
            .spawn(move || {
                let e = reader_loop(peer, &r_conn, rsock, &r_out, &in_tx, max_frame, timeout);
                record(&r_fail, &e);
                let _ = in_tx.send(Err(e));
                let _ = done_tx.send(());
            })
            .map_err(io_err)?;
        Ok(Link {
            peer,
            conn,
            out_tx,
            in_rx,
            failure,
            sock,
            writer_done,
            reader_done,
            write_failed,
            timeout,
            closed: false,
        })
    }

    /// The read/write timeout of this link.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn down(&self) -> Option<NetError> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref().map(|reason| NetError::LinkFailed {
            peer: self.peer,
            reason: reason.clone(),
        })
    }

    /// Queues one message; returns once it is encrypted and handed to the writer thread.
    pub(crate) fn send(&mut self, msg: &[u8]) -> Result<(), NetError> {
        self.send_with(msg, &[])
    }

    /// Queues one message made of `msg` followed by `trailer` (e.g. a lane tag), without
    /// copying `msg`.
    pub(crate) fn send_with(&mut self, msg: &[u8], trailer: &[u8]) -> Result<(), NetError> {
        if let Some(e) = self.down() {
            return Err(e);
        }
        if self.closed {
            return Err(NetError::LinkFailed {
                peer: self.peer,
                reason: "closed".into(),
            });
        }
        let peer = self.peer;
        let tls_err = |e: io::Error| super::tls::map_tls_io(peer, e, "sending", self.timeout);
        let mut conn = lock(&self.conn);
        let hdr = header(msg.len() + trailer.len());
        let mut first = true;
        let mut rest = msg;
        loop {
            let take = rest.len().min(SEND_CHUNK);
            if first {
                conn.writer()
                    .write_all(&[&hdr[..], &rest[..take]].concat())
                    .map_err(tls_err)?;
                first = false;
            } else {
                conn.writer().write_all(&rest[..take]).map_err(tls_err)?;
            }
            rest = &rest[take..];
            if rest.is_empty() && !trailer.is_empty() {
                conn.writer().write_all(trailer).map_err(tls_err)?;
            }
            let records = take_tls(&mut conn).map_err(tls_err)?;
            // Queued while holding the lock so records leave in the order they were sealed.
            if self.out_tx.send(Out::Data(records)).is_err() {
                drop(conn);
                return Err(self.down().unwrap_or(NetError::Disconnected { peer }));
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    /// Takes the queue of received messages (the reader thread keeps filling it) for a
    /// demultiplexer; [`Link::recv`] reports the link as disconnected afterwards.
    pub(crate) fn take_inbox(&mut self) -> Receiver<Inbox> {
        let (_tx, rx) = mpsc::channel();
        std::mem::replace(&mut self.in_rx, rx)
    }

    /// The next whole message, waiting at most the read timeout.
    pub(crate) fn recv(&mut self) -> Result<Vec<u8>, NetError> {
        match self.in_rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                let e = NetError::Timeout {
                    peer: self.peer,
                    what: "waiting for a message",
                    secs: self.timeout.as_secs_f64(),
                };
                record(&self.failure, &e);
                Err(e)
            }
            Err(RecvTimeoutError::Disconnected) => Err(self
                .down()
                .unwrap_or(NetError::Disconnected { peer: self.peer })),
        }
    }

    /// Graceful close: flush, `close_notify`, half-close, wait briefly for the peer's close.
    /// Returns the first error seen while flushing.
    pub(crate) fn close(&mut self) -> Result<(), NetError> {
        self.close_within(self.timeout, CLOSE_GRACE.min(self.timeout))
    }

    /// Close after a failure: flush and wait for the peer only briefly.
    pub(crate) fn close_quick(&mut self) {
        let d = QUICK_CLOSE.min(self.timeout);
        let _ = self.close_within(d, d);
    }

    /// Graceful close that waits at most `flush` for queued data to be written and then at
    /// most `peer_close` for the peer to close its side.
    fn close_within(&mut self, flush: Duration, peer_close: Duration) -> Result<(), NetError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        {
            let mut conn = lock(&self.conn);
            conn.send_close_notify();
            if let Ok(v) = take_tls(&mut conn) {
                let _ = self.out_tx.send(Out::Data(v));
            }
            let _ = self.out_tx.send(Out::Close);
        }
        let flushed = self.writer_done.recv_timeout(flush).is_ok();
        // A write failure means queued data may not have left.
        let write_err = self
            .down()
            .filter(|_| self.write_failed.load(Ordering::Relaxed))
            .or_else(|| {
                (!flushed).then(|| NetError::Timeout {
                    peer: self.peer,
                    what: "flushing on close",
                    secs: flush.as_secs_f64(),
                })
            });
        if flushed {
            let _ = self.reader_done.recv_timeout(peer_close);
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        match write_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Immediate close without flushing (error paths).
    pub(crate) fn abort(&mut self) {
        self.closed = true;
        let _ = self.out_tx.send(Out::Close);
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if !self.closed {
            self.close_quick();
        }
    }
}

fn writer_loop(mut sock: TcpStream, out_rx: &Receiver<Out>) -> io::Result<()> {
    for out in out_rx.iter() {
        match out {
            Out::Data(buf) => {
                sock.write_all(&buf)?;
            }
            Out::Close => break,
        }
    }
    let _ = sock.flush();
    let _ = sock.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads until the connection ends or fails; returns the reason it ended.
fn reader_loop(
    peer: usize,
    conn: &Mutex<Connection>,
    mut sock: TcpStream,
    out_tx: &Sender<Out>,
    in_tx: &Sender<Inbox>,
    max_frame: u64,
    timeout: Duration,
) -> NetError {
    let mut dec = FrameDecoder::new(max_frame);
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = vec![0u8; 64 * 1024];
    let frame_err = |e: FrameError| match e {
        FrameError::Oversized { len, max } => NetError::Oversized { peer, len, max },
        FrameError::Short { got, expected } => NetError::ShortFrame {
            peer,
            got,
            expected,
        },
        FrameError::Io(e) => NetError::io(peer, e, "receiving", timeout),
    };
    // Bytes buf[pos..filled] came from the socket and are not yet fed to rustls.
    let (mut pos, mut filled) = (0usize, 0usize);
    loop {
        let mut closed = false;
        {
            let mut c = lock(conn);
            // Feed what the socket gave us; plaintext is drained after every record batch so
            // rustls' received-plaintext limit is never hit.
            loop {
                if pos < filled {
                    let mut rd = &buf[pos..filled];
                    if let Err(e) = c.read_tls(&mut rd) {
                        return NetError::io(peer, e, "receiving", timeout);
                    }
                    pos = filled - rd.len();
                    if let Err(e) = c.process_new_packets() {
                        if let Ok(v) = take_tls(&mut c) {
                            let _ = out_tx.send(Out::Data(v));
                        }
                        return NetError::Tls { peer, source: e };
                    }
                }
                loop {
                    match c.reader().read(&mut plain) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => {
                            if let Err(e) = dec.push(&plain[..n]) {
                                return frame_err(e);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return NetError::io(peer, e, "receiving", timeout),
                    }
                }
                if pos == filled || closed {
                    break;
                }
            }
            if c.wants_write() {
                if let Ok(v) = take_tls(&mut c) {
                    let _ = out_tx.send(Out::Data(v));
                }
            }
        }
        while let Some(f) = dec.next_frame() {
            if in_tx.send(Ok(f)).is_err() {
                return NetError::Disconnected { peer };
            }
        }
        if closed {
            return match dec.finish() {
                Ok(()) => NetError::Disconnected { peer },
                Err(e) => frame_err(e),
            };
        }
        let n = match sock.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return NetError::io(peer, e, "receiving", timeout),
        };
        if n == 0 {
            return match dec.finish() {
                Ok(()) => NetError::Disconnected { peer },
                Err(e) => frame_err(e),
            };
        }
        (pos, filled) = (0, n);
    }
}
