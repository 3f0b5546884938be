//! Loopback tests of the TLS mesh: happy path, authentication refusals and peer faults.

use super::*;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::thread;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("relushare-net-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn session(tag: &str, sid: &str) -> TempDir {
    let d = TempDir::new(tag);
    pki::generate(&d.0, Some(sid), false).unwrap();
    d
}

fn cfg(dir: &TempDir, role: usize, peers: &[(usize, SocketAddr)], timeout_ms: u64) -> NetConfig {
    let keys = PartyKeys::load(&dir.0, role).unwrap();
    let mut c = NetConfig::new(
        keys,
        peers.iter().map(|(r, a)| (*r, a.to_string())).collect(),
    );
    c.timeout = Duration::from_millis(timeout_ms);
    c
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// Starts parties 0 and 1 (and 2 if `with2`) of a session; returns their join handles.
fn mesh(dir: &TempDir, timeout_ms: u64) -> Vec<thread::JoinHandle<Result<TlsTransport, NetError>>> {
    let (l0, a0) = listener();
    let (l1, a1) = listener();
    let c0 = cfg(dir, 0, &[], timeout_ms);
    let c1 = cfg(dir, 1, &[(0, a0)], timeout_ms);
    let c2 = cfg(dir, 2, &[(0, a0), (1, a1)], timeout_ms);
    vec![
        thread::spawn(move || TlsTransport::connect(&c0, Some(l0))),
        thread::spawn(move || TlsTransport::connect(&c1, Some(l1))),
        thread::spawn(move || TlsTransport::connect(&c2, None)),
    ]
}

#[test]
fn three_parties_exchange_messages_without_blocking() {
    let dir = session("mesh", "s1");
    let handles = mesh(&dir, 5000);
    let mut ts: Vec<TlsTransport> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7) as u8).collect();
    // Everyone sends a large message to everyone before anyone reads: sends must not block.
    let mut workers = Vec::new();
    for mut t in ts.drain(..) {
        let big = big.clone();
        workers.push(thread::spawn(move || {
            let me = t.role();
            for to in (0..3).filter(|&j| j != me) {
                t.send_msg(to, &big).unwrap();
                t.send_msg(to, &[me as u8, to as u8]).unwrap();
                t.send_msg(to, &[]).unwrap();
            }
            for from in (0..3).filter(|&j| j != me) {
                assert_eq!(t.recv_msg(from).unwrap(), big);
                assert_eq!(t.recv_msg(from).unwrap(), vec![from as u8, me as u8]);
                assert_eq!(t.recv_msg(from).unwrap(), Vec::<u8>::new());
            }
            assert!(matches!(t.send_msg(me, b"x"), Err(NetError::NoPeer { .. })));
            t.close().unwrap();
        }));
    }
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn transport_trait_maps_errors() {
    use crate::transport::Transport;
    let dir = session("trait", "s1");
    let handles = mesh(&dir, 3000);
    let mut ts: Vec<TlsTransport> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    let t2 = ts.pop().unwrap();
    let mut t1 = ts.pop().unwrap();
    let mut t0 = ts.pop().unwrap();
    Transport::send(&mut t0, 1, b"hello").unwrap();
    assert_eq!(Transport::recv(&mut t1, 0).unwrap(), b"hello");
    assert!(matches!(
        Transport::send(&mut t0, 0, b""),
        Err(crate::error::MpcError::BadParty(0))
    ));
    // P2 goes away: P0 sees a disconnect naming party 2, not a hang.
    t2.abort();
    let start = Instant::now();
    let e = Transport::recv(&mut t0, 2).unwrap_err();
    assert!(matches!(e, crate::error::MpcError::Disconnected(2)), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    // A later call reports the link as down.
    let e = t0.recv_msg(2).unwrap_err();
    assert!(e.to_string().contains("P2"), "{e}");
}

#[test]
fn missing_peer_fails_within_the_timeout() {
    let dir = session("missing", "s1");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 800);
    let c1 = cfg(&dir, 1, &[(0, a0)], 800);
    let (l1, _) = listener();
    let start = Instant::now();
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let h1 = thread::spawn(move || TlsTransport::connect(&c1, Some(l1)));
    let e0 = h0.join().unwrap().unwrap_err().to_string();
    let e1 = h1.join().unwrap().unwrap_err().to_string();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(e0.contains("P2") && e0.contains("never connected"), "{e0}");
    assert!(e1.contains("P2"), "{e1}");
    // Nobody listening at all: the dialler gives up at its deadline.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c1 = cfg(&dir, 1, &[(0, dead)], 600);
    let (l1, _) = listener();
    let start = Instant::now();
    let e = TlsTransport::connect(&c1, Some(l1))
        .unwrap_err()
        .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(e.contains("P0") && e.contains("cannot connect"), "{e}");
}

/// P0 listens for P1 and P2; `intruder` dials it instead of the genuine P1.
fn refused(intruder: NetConfig, expect_listener: &str, expect_intruder: &str) {
    let dir = session("auth", "good");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 1500);
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let e = RawPeer::dial(&intruder, 0, &a0.to_string())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains(expect_intruder), "intruder error: {e}");
    let e0 = h0.join().unwrap().unwrap_err().to_string();
    assert!(
        e0.contains("refused") && e0.contains(expect_listener),
        "listener error: {e0}"
    );
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let other = session("other", "good");
    let c = cfg(&other, 1, &[], 1500);
    // Our side rejects P0's certificate (unknown issuer) and P0 never accepts us.
    refused(c, "P1", "TLS error");
}

#[test]
fn replayed_session_id_is_refused_by_both_ends() {
    let dir = session("replay", "good");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 1500);
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let mut c1 = cfg(&dir, 1, &[], 1500);
    c1.session_id = "an-old-session".into();
    let e = RawPeer::dial(&c1, 0, &a0.to_string())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused") && e.contains("an-old-session"), "{e}");
    let e0 = h0.join().unwrap().unwrap_err().to_string();
    assert!(e0.contains("replayed"), "{e0}");
}

#[test]
fn wrong_role_is_refused() {
    // P1 listens for P2 only; a genuine P0 certificate dialling it is refused.
    let dir = session("role", "good");
    let (l1, a1) = listener();
    let (_l0, a0) = listener();
    let c1 = cfg(&dir, 1, &[(0, a0)], 1500);
    let h1 = thread::spawn(move || TlsTransport::connect(&c1, Some(l1)));
    let c0 = cfg(&dir, 0, &[], 1500);
    // P0 expects to reach P1 and P1's certificate says P1, but P1 does not expect P0 here.
    let e = RawPeer::dial(&c0, 1, &a1.to_string())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused") && e.contains("not expected"), "{e}");
    let e1 = h1.join().unwrap().unwrap_err().to_string();
    assert!(e1.contains("relushare-party-0 is not expected"), "{e1}");
    // Dialling P1's address while expecting P2 fails the server-name check.
    let (l1, a1) = listener();
    let c1 = cfg(&dir, 1, &[(0, a0)], 1500);
    let h1 = thread::spawn(move || TlsTransport::connect(&c1, Some(l1)));
    let c0 = cfg(&dir, 0, &[], 1500);
    let e = RawPeer::dial(&c0, 2, &a1.to_string())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS error") && e.contains("P2"), "{e}");
    let _ = h1.join();
}

/// P0 and P2 genuine; P1 is a raw peer that misbehaves after authenticating. Returns P0's error.
fn fault(act: impl FnOnce(&mut RawPeer) + Send + 'static, timeout_ms: u64) -> (String, Duration) {
    let dir = session("fault", "good");
    let (l0, a0) = listener();
    let (l1, a1) = listener();
    // Generous connection deadline (the machine may be loaded); the I/O timeout is under test.
    let slow = |mut c: NetConfig| {
        c.connect_timeout = Some(Duration::from_secs(20));
        c
    };
    let c0 = slow(cfg(&dir, 0, &[], timeout_ms));
    let c1 = slow(cfg(&dir, 1, &[(0, a0)], timeout_ms));
    let c2 = slow(cfg(&dir, 2, &[(0, a0), (1, a1)], timeout_ms));
    let h0 = thread::spawn(move || {
        let mut t = TlsTransport::connect(&c0, Some(l0))?;
        let start = Instant::now();
        // The fault may already be known when sending.
        let r = t
            .send_msg(1, b"share")
            .and_then(|_| t.recv_msg(1).map(|_| ()));
        Ok::<_, NetError>((r, start.elapsed()))
    });
    let h1 = thread::spawn(move || {
        let mut p0 = RawPeer::dial(&c1, 0, &a0.to_string()).unwrap();
        let _p2 = RawPeer::accept(&c1, &l1, &[2]).unwrap();
        act(&mut p0);
        // Keep the connection open (a stall) until P0 has given up.
        thread::sleep(Duration::from_millis(timeout_ms + 1500));
        drop(p0);
    });
    let h2 = thread::spawn(move || TlsTransport::connect(&c2, None).map(|t| t.abort()));
    let (r, elapsed) = h0.join().unwrap().unwrap();
    let _ = h2.join();
    h1.join().unwrap();
    (r.unwrap_err().to_string(), elapsed)
}

#[test]
fn faults_give_clear_errors_naming_the_peer() {
    let (e, t) = fault(|p| p.write_raw(&100u64.to_le_bytes()[..5]).unwrap(), 1000);
    assert!(
        e.contains("P1") && e.contains("timed out"),
        "half a header then silence: {e}"
    );
    assert!(t < Duration::from_millis(2500), "{t:?}");

    let (e, _) = fault(|p| p.write_raw(&(1u64 << 50).to_le_bytes()).unwrap(), 1000);
    assert!(
        e.contains("P1") && e.contains("above the limit"),
        "oversized: {e}"
    );

    let (e, t) = fault(|_| {}, 800);
    assert!(e.contains("P1") && e.contains("stalled"), "stall: {e}");
    assert!(
        t >= Duration::from_millis(700) && t < Duration::from_millis(2000),
        "{t:?}"
    );
}

#[test]
fn short_frame_and_disconnect_are_reported() {
    let dir = session("short", "good");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 2000);
    let c1 = cfg(&dir, 1, &[], 2000);
    let c2 = cfg(&dir, 2, &[], 2000);
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let mut p1 = RawPeer::dial(&c1, 0, &a0.to_string()).unwrap();
    let mut p2 = RawPeer::dial(&c2, 0, &a0.to_string()).unwrap();
    let mut t0 = h0.join().unwrap().unwrap();
    p1.send_frame(b"ok").unwrap();
    let mut short = frame::header(10).to_vec();
    short.extend_from_slice(b"abc");
    p1.write_raw(&short).unwrap();
    p1.drop_connection();
    assert_eq!(t0.recv_msg(1).unwrap(), b"ok");
    let e = t0.recv_msg(1).unwrap_err();
    assert!(
        matches!(
            e,
            NetError::ShortFrame {
                peer: 1,
                got: 11,
                expected: 18
            }
        ),
        "{e}"
    );
    // P2 sends one frame, then disconnects cleanly between frames.
    p2.send_frame(b"last").unwrap();
    let _ = p2.recv_frame(16);
    p2.drop_connection();
    assert_eq!(t0.recv_msg(2).unwrap(), b"last");
    let e = t0.recv_msg(2).unwrap_err();
    assert!(matches!(e, NetError::Disconnected { peer: 2 }), "{e}");
}

#[test]
fn stalled_reader_makes_writes_fail_not_hang() {
    // The peer never reads; our sends keep queueing (non-blocking) until the writer thread
    // times out, after which send and recv report the stalled peer.
    let dir = session("wstall", "good");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 700);
    let c1 = cfg(&dir, 1, &[], 700);
    let c2 = cfg(&dir, 2, &[], 700);
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let p1 = RawPeer::dial(&c1, 0, &a0.to_string()).unwrap();
    let _p2 = RawPeer::dial(&c2, 0, &a0.to_string()).unwrap();
    let mut t0 = h0.join().unwrap().unwrap();
    let chunk = vec![0u8; 256 << 10];
    let start = Instant::now();
    let mut err = None;
    // At most ~100 MB queued: enough to fill the socket buffers of loopback many times over.
    for _ in 0..400 {
        if let Err(e) = t0.send_msg(1, &chunk) {
            err = Some(e);
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let e = err
        .map(|e| e.to_string())
        .unwrap_or_else(|| t0.recv_msg(1).unwrap_err().to_string());
    assert!(
        e.contains("P1") && (e.contains("timed out") || e.contains("stalled")),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(6));
    drop(p1);
}

#[test]
fn plaintext_client_is_refused_and_the_listener_keeps_waiting() {
    use std::io::Write;
    let dir = session("plain", "good");
    let (l0, a0) = listener();
    let c0 = cfg(&dir, 0, &[], 1500);
    let h0 = thread::spawn(move || TlsTransport::connect(&c0, Some(l0)));
    let mut s = TcpStream::connect(a0).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let e = h0.join().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("refused 1 connection") && e.contains("TLS error"),
        "{e}"
    );
}

/// Index of the largest logit and its margin over the runner-up.
fn top(v: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    (
        idx[0],
        v[idx[0]] - v.get(idx[1]).copied().unwrap_or(f32::MIN),
    )
}

/// The networked session (P0 client, P1 owner, P2 helper over loopback TLS) against the
/// plaintext fixed-point network, for every layer kind.
#[test]
fn networked_session_matches_plaintext_for_every_layer_kind() {
    use crate::net::session::{self, ImageSource, SessionOptions};
    use relushare_model::{presets, Arch, Model};
    let cases: [(Arch, &str, Option<&str>, &str); 5] = [
        (Arch::Svhn, "original", None, "fast"),
        (Arch::Fmnist, "shafran", None, "fast"),
        (Arch::Svhn, "original", Some("act1=channel:fc"), "fss"),
        (
            Arch::Fmnist,
            "original",
            Some("act1=patch3,act2=channel:onehot"),
            "fast",
        ),
        (Arch::Svhn, "uniform3", None, "securenn"),
    ];
    let mut compared = 0;
    for (ci, (arch, preset, free, protocol)) in cases.into_iter().enumerate() {
        let mut spec = presets::build(arch, preset).unwrap();
        if let Some(f) = free {
            presets::apply_freeform(&mut spec, f).unwrap();
        }
        let mut model = Model::random(spec, None, 100 + ci as u64).unwrap();
        // Spread the logits of the fresh network so classes are well defined.
        let last = model
            .spec
            .layers
            .iter()
            .rev()
            .find_map(|l| match l {
                relushare_model::Layer::Linear { name, .. } => Some(name.clone()),
                _ => None,
            })
            .unwrap();
        for p in ["weight", "bias"] {
            for v in &mut model.params.get_mut(&format!("{last}.{p}")).unwrap().data {
                *v *= 40.0;
            }
        }
        let images = session::random_images(ci as u64, 2, model.spec.input.len());
        let dir = session("sess", "s");
        let handles = mesh(&dir, 20_000);
        let opts = SessionOptions {
            protocol: protocol.into(),
            frac_bits: 13,
        };
        let mut workers = Vec::new();
        for (role, h) in handles.into_iter().enumerate() {
            let (opts, model, images) = (opts.clone(), model.clone(), images.clone());
            workers.push(thread::spawn(move || {
                let t = h.join().unwrap().unwrap();
                let m = (role == 1).then_some(&model);
                let i = (role == 0).then(|| ImageSource::Given(images));
                session::run(t, m, i.as_ref(), &opts)
            }));
        }
        let reports: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().unwrap().unwrap())
            .collect();
        assert!(reports[1].logits.is_none() && reports[2].logits.is_none());
        // Output shares to the client (P0): P1 sends its share of the logits.
        let out = 8 * images.len() as u64 * model.spec.num_classes as u64;
        let cb: Vec<u64> = reports.iter().map(|r| r.client_bytes).collect();
        assert_eq!(cb, [0, out, 0], "case {ci}");
        let logits = reports[0].logits.clone().unwrap();
        for (i, img) in images.iter().enumerate() {
            let plain = crate::plain::forward_fixed(&model, img, 13, &mut |_| false).unwrap();
            for (a, b) in plain.iter().zip(&logits[i]) {
                assert!(
                    (a - b).abs() < 0.05,
                    "case {ci} image {i}: {plain:?} vs {:?}",
                    logits[i]
                );
            }
            let (pc, margin) = top(&plain);
            if margin > 0.1 {
                assert_eq!(
                    reports[0].classes.as_ref().unwrap()[i],
                    pc,
                    "case {ci} image {i}"
                );
                compared += 1;
            }
        }
    }
    // Weights and images are fixed: most classes are well separated.
    assert!(compared >= 5, "only {compared} of 10 classes were compared");
}

/// A client with an input outside the range the fast suites' rings were proven for refuses it
/// with a clear error (no clamping) before sharing it, and the model owner's session ends.
#[test]
fn networked_client_refuses_out_of_range_input() {
    use crate::net::session::{self, ImageSource, SessionOptions};
    use relushare_model::{presets, Arch, Model};
    let model = Model::random(presets::build(Arch::Svhn, "original").unwrap(), None, 7).unwrap();
    let mut images = session::random_images(1, 1, model.spec.input.len());
    images[0][5] = 1000.0;
    let dir = session("range", "r");
    let handles = mesh(&dir, 20_000);
    let opts = SessionOptions {
        protocol: "fast".into(),
        frac_bits: 13,
    };
    let mut workers = Vec::new();
    for (role, h) in handles.into_iter().enumerate() {
        let (opts, model, images) = (opts.clone(), model.clone(), images.clone());
        workers.push(thread::spawn(move || {
            let t = h.join().unwrap().unwrap();
            let m = (role == 1).then_some(&model);
            let i = (role == 0).then_some(ImageSource::Given(images));
            session::run(t, m, i.as_ref(), &opts).map(|_| ())
        }));
    }
    let res: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let e = res[0].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("input element 5") && e.contains("refused"),
        "{e}"
    );
    // The model owner waits for its input share and fails; the dealer sends but never
    // receives in the fast suite, so it may finish its (input-independent) part.
    assert!(res[1].is_err());
}

/// Runs one networked session (P0 client, P1 owner, P2 helper) with the given weight-mask
/// parts (`None`: a one-off run that opens the masked weights).
fn reuse_session(
    model: &relushare_model::Model,
    images: &[Vec<f32>],
    protocol: &str,
    masks: [Option<crate::net::masks::MaskReuse>; 3],
) -> Vec<crate::net::session::PartyReport> {
    use crate::net::session::{self, ImageSource, SessionOptions};
    let dir = session("reuse", "r");
    let handles = mesh(&dir, 20_000);
    let opts = SessionOptions {
        protocol: protocol.into(),
        frac_bits: 13,
    };
    let mut workers = Vec::new();
    for ((role, h), m) in handles.into_iter().enumerate().zip(masks) {
        let (opts, model, images) = (opts.clone(), model.clone(), images.to_vec());
        workers.push(thread::spawn(move || {
            let t = h.join().unwrap().unwrap();
            let md = (role == 1).then_some(&model);
            let i = (role == 0).then(|| ImageSource::Given(images));
            session::run_with(t, md, i.as_ref(), &opts, m.as_ref())
        }));
    }
    workers
        .into_iter()
        .map(|w| w.join().unwrap().unwrap())
        .collect()
}

/// Sessions that reuse the owner–helper pair's weight masks (serving) match the plaintext
/// fixed point, open nothing (client and owner send no byte in the model setup), all use the
/// same state, and save about 16 bytes per masked weight of the one-off run's setup; the keys
/// travel to the helper only in the first session. Prints the measured setup bytes.
#[test]
fn networked_sessions_reuse_the_pairs_weight_masks() {
    use crate::net::masks::{HelperMasks, MaskReuse, OwnerMasks};
    use crate::net::session;
    use relushare_model::{presets, Arch, Model};
    use std::sync::Arc;
    let cases: [(Arch, &str, Option<&str>, &str); 5] = [
        (Arch::Fmnist, "original", None, "fast"),
        (Arch::Fmnist, "uniform32", None, "fss"),
        (Arch::Fmnist, "uniform32", None, "mimo"),
        (
            Arch::Fmnist,
            "original",
            Some("act1=patch3,act2=channel:onehot"),
            "fast",
        ),
        (Arch::Cifar10, "original", None, "fast"),
    ];
    for (ci, (arch, preset, free, protocol)) in cases.into_iter().enumerate() {
        let mut spec = presets::build(arch, preset).unwrap();
        if let Some(f) = free {
            presets::apply_freeform(&mut spec, f).unwrap();
        }
        let model = Model::random(spec, None, 300 + ci as u64).unwrap();
        let images = session::random_images(50 + ci as u64, 1, model.spec.input.len());
        let plain: Vec<Vec<f32>> = images
            .iter()
            .map(|img| crate::plain::forward_fixed(&model, img, 13, &mut |_| false).unwrap())
            .collect();
        let fresh = reuse_session(&model, &images, protocol, [None, None, None]);
        let helper = Arc::new(HelperMasks::new().unwrap());
        let state = Arc::new(OwnerMasks::new(helper.instance(), None).unwrap());
        let mut runs = Vec::new();
        for register in [true, false, false] {
            runs.push(reuse_session(
                &model,
                &images,
                protocol,
                [
                    Some(MaskReuse::Client { cache: None }),
                    Some(MaskReuse::Owner {
                        state: state.clone(),
                        register,
                        client_holds: String::new(),
                    }),
                    Some(MaskReuse::Helper(helper.clone())),
                ],
            ));
        }
        assert_eq!(state.openings_computed(), 1, "F is computed once");
        assert!(helper.knows(state.id()));
        let masked = fresh[0].model_setup_bytes / 8;
        assert!(masked > 0);
        let what = format!("{arch} {preset} {free:?} {protocol}");
        let total = |r: &[session::PartyReport]| -> u64 {
            r.iter().map(|p| p.setup_bytes + p.model_setup_bytes).sum()
        };
        for (k, r) in runs.iter().enumerate() {
            for p in r {
                assert_eq!(p.weight_masks.as_deref(), Some(state.id()), "{what}");
            }
            assert_eq!(
                r[0].model_setup_bytes, 0,
                "{what}: the client opened something"
            );
            assert_eq!(
                r[1].model_setup_bytes, 0,
                "{what}: the owner opened something"
            );
            assert_eq!(
                r[2].model_setup_bytes, 32,
                "{what}: the helper's session seeds"
            );
            assert_eq!(fresh[1].model_setup_bytes, 8 * masked);
            // the client now receives F (8 bytes per masked weight) instead of its weight shares
            // and its half of the opening, and sends nothing for the weights
            let saved = total(&fresh) as i64 - total(r) as i64;
            assert!(
                saved >= 15 * masked as i64,
                "{what} session {k}: saved {saved} bytes for {masked} masked weights"
            );
            eprintln!(
                "{what} session {k}: setup bytes (all parties) one-off {} reuse {} saved {saved} ({masked} masked weights; owner {} -> {}, client {} -> {})",
                total(&fresh),
                total(r),
                fresh[1].setup_bytes + fresh[1].model_setup_bytes,
                r[1].setup_bytes + r[1].model_setup_bytes,
                fresh[0].setup_bytes + fresh[0].model_setup_bytes,
                r[0].setup_bytes + r[0].model_setup_bytes,
            );
            let logits = r[0].logits.as_ref().unwrap();
            for (a, b) in plain[0].iter().zip(&logits[0]) {
                assert!(
                    (a - b).abs() < 0.05,
                    "{what} session {k}: {:?} vs {:?}",
                    plain[0],
                    logits[0]
                );
            }
        }
        // The keys went to the helper in the first session only (32 bytes more).
        assert_eq!(
            runs[0][1].setup_bytes,
            runs[1][1].setup_bytes + 32,
            "{what}"
        );
        // A client with a cache: the first session stores F, the next is not sent it (the
        // owner sends 8 bytes per masked weight fewer) and still matches the plaintext.
        let path = std::env::temp_dir().join(format!(
            "relushare-reuse-cache-{}-{ci}.bin",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let mut owner_sent = Vec::new();
        for _ in 0..2 {
            let cache = crate::net::masks::WeightCache::open(&path);
            let claim = cache.claim();
            let r = reuse_session(
                &model,
                &images,
                protocol,
                [
                    Some(MaskReuse::Client {
                        cache: Some(Arc::new(cache)),
                    }),
                    Some(MaskReuse::Owner {
                        state: state.clone(),
                        register: false,
                        client_holds: claim,
                    }),
                    Some(MaskReuse::Helper(helper.clone())),
                ],
            );
            let logits = r[0].logits.as_ref().unwrap();
            for (a, b) in plain[0].iter().zip(&logits[0]) {
                assert!(
                    (a - b).abs() < 0.05,
                    "{what} cached: {:?} vs {:?}",
                    plain[0],
                    logits[0]
                );
            }
            owner_sent.push(r[1].setup_bytes);
        }
        assert_eq!(owner_sent[0], runs[1][1].setup_bytes, "{what}");
        assert_eq!(owner_sent[0] - owner_sent[1], 8 * masked, "{what}");
        let _ = std::fs::remove_file(&path);
    }
}

/// A helper that does not hold the owner's state (e.g. it restarted and the owner did not
/// notice) ends the session with a clear error; parties that disagree on reusing masks too.
#[test]
fn unknown_mask_state_and_mismatched_reuse_fail_clearly() {
    use crate::net::masks::{HelperMasks, MaskReuse, OwnerMasks};
    use crate::net::session::{self, ImageSource, SessionOptions};
    use relushare_model::{presets, Arch, Model};
    use std::sync::Arc;
    let model = Model::random(presets::build(Arch::Fmnist, "original").unwrap(), None, 9).unwrap();
    let images = session::random_images(3, 1, model.spec.input.len());
    let helper = Arc::new(HelperMasks::new().unwrap());
    let state = Arc::new(OwnerMasks::new(helper.instance(), None).unwrap());
    for (masks, want) in [
        (
            [
                Some(MaskReuse::Client { cache: None }),
                Some(MaskReuse::Owner {
                    state: state.clone(),
                    register: false,
                    client_holds: String::new(),
                }),
                Some(MaskReuse::Helper(helper.clone())),
            ],
            "not held by this helper",
        ),
        (
            [Some(MaskReuse::Client { cache: None }), None, None],
            "weight masks",
        ),
    ] {
        let dir = session("reuse-bad", "b");
        let handles = mesh(&dir, 20_000);
        let opts = SessionOptions {
            protocol: "fast".into(),
            frac_bits: 13,
        };
        let mut workers = Vec::new();
        for ((role, h), m) in handles.into_iter().enumerate().zip(masks) {
            let (opts, model, images) = (opts.clone(), model.clone(), images.clone());
            workers.push(thread::spawn(move || {
                let t = h.join().unwrap().unwrap();
                let md = (role == 1).then_some(&model);
                let i = (role == 0).then(|| ImageSource::Given(images));
                session::run_with(t, md, i.as_ref(), &opts, m.as_ref()).map(|_| ())
            }));
        }
        let errs: Vec<String> = workers
            .into_iter()
            .filter_map(|w| w.join().unwrap().err().map(|e| e.to_string()))
            .collect();
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
}

/// A pipelined stream over the TLS mesh (its lanes): 5 images in batches of 2, the dealer's
/// material sent while the previous batch is online. Every batch costs each party what the same
/// batch costs in a one-batch session, the client gets every image's plaintext result, and
/// parties that disagree on the stream settings fail with a clear error.
#[test]
fn networked_stream_costs_equal_one_batch_sessions() {
    use crate::net::session::{self, ImageSource, SessionOptions, StreamSettings};
    use relushare_model::{presets, Arch, Model};
    let model = Model::random(presets::build(Arch::Fmnist, "original").unwrap(), None, 9).unwrap();
    let images: Vec<Vec<f32>> = session::random_images(4, 5, model.spec.input.len())
        .into_iter()
        .map(|v| v.into_iter().map(|x| x * 0.5).collect())
        .collect();
    let opts = SessionOptions {
        protocol: "fast".into(),
        frac_bits: 13,
    };
    let run = |imgs: Vec<Vec<f32>>, stream: [Option<StreamSettings>; 3]| {
        let dir = session("stream", "s");
        let handles = mesh(&dir, 20_000);
        let mut workers = Vec::new();
        for (role, h) in handles.into_iter().enumerate() {
            let (opts, model, imgs) = (opts.clone(), model.clone(), imgs.clone());
            workers.push(thread::spawn(move || {
                let t = h.join().unwrap().unwrap();
                let m = (role == 1).then_some(&model);
                let i = (role == 0).then(|| ImageSource::Given(imgs));
                match stream[role] {
                    Some(st) => session::run_stream(t, m, i.as_ref(), &opts, st),
                    None => session::run(t, m, i.as_ref(), &opts),
                }
            }));
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    };
    let st = StreamSettings { batch: 2, depth: 1 };
    let reports: Vec<_> = run(images.clone(), [Some(st); 3])
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let single: Vec<_> = run(images[..2].to_vec(), [None; 3])
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for (r, s) in reports.iter().zip(&single) {
        let sr = r.stream.as_ref().unwrap();
        assert!(sr.pipelined);
        assert_eq!(
            sr.batches.iter().map(|b| b.images).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let key = |v: &[crate::cost::LabelCost]| {
            v.iter()
                .filter(|l| l.label != "model-setup")
                .map(crate::cost::LabelCost::shape)
                .collect::<Vec<_>>()
        };
        for b in &sr.batches[..2] {
            assert_eq!(key(&b.layers), key(&s.layers), "party {}", r.role);
        }
        assert_eq!(r.model_setup_bytes, s.model_setup_bytes);
    }
    assert_eq!(
        reports[1].client_bytes,
        8 * 5 * model.spec.num_classes as u64
    );
    let logits = reports[0].logits.clone().unwrap();
    assert_eq!(logits.len(), 5);
    for (img, got) in images.iter().zip(&logits) {
        let plain = crate::plain::forward_fixed(&model, img, 13, &mut |_| false).unwrap();
        for (a, b) in plain.iter().zip(got) {
            assert!((a - b).abs() < 0.05, "{plain:?} vs {got:?}");
        }
    }
    // Settings that differ between the parties.
    let other = StreamSettings { batch: 3, depth: 1 };
    let errs: Vec<String> = run(images, [Some(st), Some(other), Some(st)])
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(
        errs.iter()
            .any(|e| e.contains("stream settings must agree")),
        "{errs:?}"
    );
}
