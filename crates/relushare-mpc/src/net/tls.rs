//! TLS 1.3 configuration, mutual authentication against the session CA, role checks, and the
//! session hello that runs right after every handshake, before the transport carries anything.
//!
//! Hello exchange (both sides, inside TLS): each side sends
//! `HELLO_MAGIC | version u8 | role u8 | session-id length u8 | session id`, reads the peer's
//! hello and checks magic, version, that the claimed role equals the role its certificate was
//! issued for and the one expected on this connection, and that the session id equals ours. Each
//! side then sends a verdict (`RSHR-OK`, or `RSHR-NO` and a reason) and reads the peer's, so a
//! refusal is reported by both ends before any share can be sent.

use super::error::{pname, UNIDENTIFIED};
use super::frame::{read_frame, write_frame};
use super::pki::{cert_role, role_name, PartyKeys, MAX_SESSION_ID};
use super::NetError;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, Connection, RootCertStore, ServerConfig};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO_MAGIC: &[u8] = b"RSHR-HELLO";
const HELLO_VERSION: u8 = 1;
const VERDICT_OK: &[u8] = b"RSHR-OK";
const VERDICT_NO: &[u8] = b"RSHR-NO";
const HELLO_MAX: u64 = 512;

/// The crypto provider (ring) shared by all configurations.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, rustls::Error> {
    let mut r = RootCertStore::empty();
    r.add(ca.clone())?;
    Ok(r)
}

/// Verifies that `cert` chains to `ca` (any TLS usage), used when loading keys.
pub fn verify_chain(
    ca: &CertificateDer<'static>,
    cert: &CertificateDer<'static>,
) -> Result<(), String> {
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(|e| e.to_string())?
        .to_owned();
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
    let algs = provider().signature_verification_algorithms;
    ee.verify_for_usage(
        algs.all,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// TLS 1.3-only client configuration presenting this party's certificate.
pub fn client_config(keys: &PartyKeys) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&keys.ca)?)
        .with_client_auth_cert(vec![keys.cert.clone()], keys.key.clone_key())?;
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// TLS 1.3-only server configuration requiring a client certificate from the session CA.
pub fn server_config(keys: &PartyKeys) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&keys.ca)?), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![keys.cert.clone()], keys.key.clone_key())?;
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Blocking plaintext I/O over a TLS connection (used only during setup).
pub struct SyncIo<'a> {
    pub conn: &'a mut Connection,
    pub sock: &'a mut TcpStream,
}

impl Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            while self.conn.wants_write() {
                self.conn.write_tls(self.sock)?;
            }
            if self.conn.read_tls(self.sock)? == 0 {
                return Ok(0);
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Deliver the alert rustls queued, then report the error.
                let _ = self.conn.write_tls(self.sock);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.conn.writer().write(buf)?;
        self.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(self.sock)?;
        }
        Ok(())
    }
}

/// Maps an I/O error from a TLS stream, unwrapping rustls errors.
pub(crate) fn map_tls_io(
    peer: usize,
    e: io::Error,
    what: &'static str,
    timeout: Duration,
) -> NetError {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        let inner = e
            .into_inner()
            .expect("checked")
            .downcast::<rustls::Error>()
            .expect("checked");
        return NetError::Tls {
            peer,
            source: *inner,
        };
    }
    NetError::io(peer, e, what, timeout)
}

fn encode_hello(role: usize, session_id: &str) -> Vec<u8> {
    let mut h = HELLO_MAGIC.to_vec();
    h.push(HELLO_VERSION);
    h.push(role as u8);
    h.push(session_id.len() as u8);
    h.extend_from_slice(session_id.as_bytes());
    h
}

/// Checks a peer hello; `Err` holds the reason for refusing.
fn check_hello(h: &[u8], cert_role: usize, session_id: &str) -> Result<(), String> {
    let rest = h.strip_prefix(HELLO_MAGIC).ok_or("not a relushare hello")?;
    let [version, role, len, sid @ ..] = rest else {
        return Err("truncated hello".into());
    };
    if *version != HELLO_VERSION {
        return Err(format!(
            "unsupported protocol version {version} (this is version {HELLO_VERSION})"
        ));
    }
    if *role as usize != cert_role {
        return Err(format!(
            "claims role {role} but its certificate is for role {cert_role}"
        ));
    }
    if *len as usize != sid.len() || sid.len() > MAX_SESSION_ID {
        return Err("malformed session id".into());
    }
    if sid != session_id.as_bytes() {
        return Err(format!(
            "session id {:?} does not match this session ({session_id:?}); replayed or from another session",
            String::from_utf8_lossy(sid)
        ));
    }
    Ok(())
}

/// Runs the TLS handshake on `sock` and the session hello. `expected` is the set of roles
/// acceptable on this connection (the dialled role for a client; the higher roles for a server).
/// Returns the authenticated peer role and the ready connection.
pub(crate) fn handshake(
    mut sock: TcpStream,
    mut conn: Connection,
    expected: &[usize],
    my_role: usize,
    session_id: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<(usize, Connection, TcpStream), NetError> {
    match handshake_inner(
        &mut sock, &mut conn, expected, my_role, session_id, deadline, timeout,
    ) {
        Ok(role) => Ok((role, conn, sock)),
        Err(e) => {
            linger_close(&mut sock, &mut conn);
            Err(e)
        }
    }
}

/// Closes a refused/failed connection so that the alert or verdict we sent reaches the peer:
/// closing a socket with unread input makes the kernel send a reset that can destroy data in
/// flight, so half-close first and drain the input briefly.
fn linger_close(sock: &mut TcpStream, conn: &mut Connection) {
    conn.send_close_notify();
    while conn.wants_write() {
        if conn.write_tls(sock).is_err() {
            break;
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let stop = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    while Instant::now() < stop {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn handshake_inner(
    sock: &mut TcpStream,
    conn: &mut Connection,
    expected: &[usize],
    my_role: usize,
    session_id: &str,
    deadline: Instant,
    timeout: Duration,
) -> Result<usize, NetError> {
    // Name the dialled peer in errors; for an incoming connection the role is not known yet.
    let guess = if expected.len() == 1 {
        expected[0]
    } else {
        UNIDENTIFIED
    };
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(50));
    let io_timeout = remaining.min(timeout);
    let setup = |e: io::Error| NetError::io(guess, e, "connection setup", io_timeout);
    sock.set_nodelay(true).map_err(setup)?;
    sock.set_read_timeout(Some(io_timeout)).map_err(setup)?;
    sock.set_write_timeout(Some(io_timeout)).map_err(setup)?;
    while conn.is_handshaking() {
        conn.complete_io(sock)
            .map_err(|e| map_tls_io(guess, e, "TLS handshake", io_timeout))?;
    }
    // The configurations offer TLS 1.3 only (and TLS 1.2 is not compiled in); check anyway.
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err(NetError::Refused {
            peer: pname(guess),
            reason: format!(
                "negotiated {:?}, only TLS 1.3 is allowed",
                conn.protocol_version()
            ),
        });
    }
    let peer_role = match &*conn {
        Connection::Client(_) => guess,
        Connection::Server(_) => {
            let certs = conn.peer_certificates().unwrap_or_default();
            let ee = certs
                .first()
                .ok_or_else(|| NetError::Refused {
                    peer: pname(UNIDENTIFIED),
                    reason: "no client certificate".into(),
                })
                .and_then(|c| {
                    webpki::EndEntityCert::try_from(c).map_err(|e| NetError::Refused {
                        peer: pname(UNIDENTIFIED),
                        reason: e.to_string(),
                    })
                })?;
            cert_role(&ee).map_err(|reason| NetError::Refused {
                peer: pname(UNIDENTIFIED),
                reason,
            })?
        }
    };
    let mut io = SyncIo { conn, sock };
    let tls = |e: io::Error| map_tls_io(peer_role, e, "session hello", io_timeout);
    write_frame(&mut io, &encode_hello(my_role, session_id)).map_err(tls)?;
    let hello = match read_frame(&mut io, HELLO_MAX) {
        Ok(Some(h)) => h,
        Ok(None) => return Err(NetError::Disconnected { peer: peer_role }),
        Err(super::frame::FrameError::Io(e)) => return Err(tls(e)),
        Err(e) => {
            return Err(NetError::Protocol {
                peer: peer_role,
                reason: format!("bad hello: {e}"),
            })
        }
    };
    let mut verdict = check_hello(&hello, peer_role, session_id);
    if verdict.is_ok() && !expected.contains(&peer_role) {
        verdict = Err(format!(
            "{} is not expected on this connection (expected {})",
            role_name(peer_role),
            expected
                .iter()
                .map(|r| role_name(*r))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let mut msg = match &verdict {
        Ok(()) => VERDICT_OK.to_vec(),
        Err(reason) => [VERDICT_NO, reason.as_bytes()].concat(),
    };
    msg.truncate(HELLO_MAX as usize);
    let sent = write_frame(&mut io, &msg);
    if let Err(reason) = verdict {
        let _ = sent;
        return Err(NetError::Refused {
            peer: pname(peer_role),
            reason,
        });
    }
    sent.map_err(tls)?;
    let theirs = match read_frame(&mut io, HELLO_MAX) {
        Ok(Some(v)) => v,
        Ok(None) => return Err(NetError::Disconnected { peer: peer_role }),
        Err(super::frame::FrameError::Io(e)) => return Err(tls(e)),
        Err(e) => {
            return Err(NetError::Protocol {
                peer: peer_role,
                reason: format!("bad verdict: {e}"),
            })
        }
    };
    if theirs != VERDICT_OK {
        let reason = match theirs.strip_prefix(VERDICT_NO) {
            Some(r) => format!("it refused us: {}", String::from_utf8_lossy(r)),
            None => "malformed verdict".to_string(),
        };
        return Err(NetError::Refused {
            peer: pname(peer_role),
            reason,
        });
    }
    Ok(peer_role)
}

/// Starts a client connection that authenticates the server as `peer`.
pub(crate) fn client_conn(cfg: &Arc<ClientConfig>, peer: usize) -> Result<Connection, NetError> {
    let name =
        ServerName::try_from(role_name(peer)).map_err(|e| NetError::Config(e.to_string()))?;
    rustls::ClientConnection::new(cfg.clone(), name)
        .map(Connection::Client)
        .map_err(|source| NetError::Tls { peer, source })
}

/// Starts a server connection.
pub(crate) fn server_conn(cfg: &Arc<ServerConfig>) -> Result<Connection, NetError> {
    rustls::ServerConnection::new(cfg.clone())
        .map(Connection::Server)
        .map_err(|source| NetError::Tls {
            peer: UNIDENTIFIED,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_checks() {
        let h = encode_hello(1, "abc");
        check_hello(&h, 1, "abc").unwrap();
        assert!(check_hello(&h, 2, "abc")
            .unwrap_err()
            .contains("certificate is for role 2"));
        assert!(check_hello(&h, 1, "abd").unwrap_err().contains("replayed"));
        assert!(check_hello(&h[..h.len() - 1], 1, "abc").is_err());
        assert!(check_hello(b"garbage", 1, "abc").is_err());
        assert!(check_hello(&h[..HELLO_MAGIC.len() + 1], 1, "abc").is_err());
        let mut v = h.clone();
        v[HELLO_MAGIC.len()] = 9;
        assert!(check_hello(&v, 1, "abc").unwrap_err().contains("version"));
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_hellos_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
                let _ = check_hello(&bytes, 1, "sess");
            }

            /// A mutated hello is accepted only if it still says role 1 and session "sess".
            #[test]
            fn mutated_hellos_are_refused(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
                let mut h = encode_hello(1, "sess");
                let i = pos.index(h.len());
                let changed = h[i] != val;
                h[i] = val;
                prop_assert_eq!(check_hello(&h, 1, "sess").is_ok(), !changed);
            }
        }
    }
}
