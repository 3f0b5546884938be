//! `relushare keys --clients`, `relushare serve` and `relushare classify` as real processes on
//! loopback: a small concurrent load whose secure classes equal the plaintext classes, and each
//! fault of the serving issue ending only its own session while the servers keep serving.

use relushare_data::image::{load_image, Fit};
use relushare_model::{presets, Arch, Model};
use relushare_mpc::net::serve::{self, ClientConn, Request};
use relushare_mpc::net::PartyKeys;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relushare");

fn free_addr() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn run_ok(args: &[&str]) -> Output {
    let o = Command::new(BIN).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A model whose classes are far apart (see `serve_bench::spread_logits`).
fn model(arch: Arch, path: &Path) -> Model {
    let spec = presets::build(arch, "original").unwrap();
    let mut m = Model::random(spec, None, 5).unwrap();
    let ds = arch_ds(arch);
    let n = relushare_data::normalization(ds, m.spec.input.c);
    m.spec.normalization = relushare_model::Normalization {
        mean: n.mean,
        std: n.std,
    };
    let last = match arch {
        Arch::Fmnist => "fc2",
        _ => "fc1",
    };
    for p in [format!("{last}.weight"), format!("{last}.bias")] {
        for v in &mut m.params.get_mut(&p).unwrap().data {
            *v *= 40.0;
        }
    }
    m.save(path).unwrap();
    m
}

fn arch_ds(a: Arch) -> relushare_data::DatasetName {
    a.name().parse().unwrap()
}

/// A binary PPM (P6) image with pseudo-random pixels.
fn ppm(path: &Path, w: usize, h: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut b = format!("P6\n{w} {h}\n255\n").into_bytes();
    for _ in 0..w * h * 3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push((x >> 24) as u8);
    }
    std::fs::write(path, b).unwrap();
}

struct Server {
    child: Child,
    log: PathBuf,
    addr: String,
}

impl Server {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// Waits until the log contains `what` (at most `secs`).
    fn wait_log(&self, what: &str, secs: f64) -> String {
        let t = Instant::now();
        loop {
            let l = self.log();
            if l.contains(what) {
                return l;
            }
            assert!(
                t.elapsed().as_secs_f64() < secs,
                "no {what:?} in the log within {secs} s:\n{l}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Deployment {
    dir: tempfile::TempDir,
    keys: PathBuf,
    model: Model,
    model_path: PathBuf,
    owner: Server,
    helper: Server,
    images: Vec<PathBuf>,
}

fn start(dir: &Path, role: &str, addr: &str, extra: &[&str], tag: &str) -> Server {
    let log = dir.join(format!("{tag}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--role", role, "--listen", addr])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let s = Server {
        child,
        log,
        addr: addr.to_string(),
    };
    s.wait_log("serving on", 60.0);
    s
}

impl Deployment {
    fn new(arch: Arch, timeout: &str, extra_owner: &[&str]) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        run_ok(&["keys", "--out", keys.to_str().unwrap(), "--clients", "3"]);
        let model_path = dir.path().join("m.safetensors");
        let model = model(arch, &model_path);
        let k = keys.to_str().unwrap().to_string();
        let common = ["--keys", &k, "--timeout", timeout];
        let helper = start(dir.path(), "helper", &free_addr(), &common, "helper");
        let mut o: Vec<&str> = common.to_vec();
        let mp = model_path.to_str().unwrap().to_string();
        o.extend(["--helper", &helper.addr, "--model", &mp]);
        o.extend(extra_owner);
        let owner = start(dir.path(), "owner", &free_addr(), &o, "owner");
        let images = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("img{i}.ppm"));
                ppm(&p, 40, 36, i + 1);
                p
            })
            .collect();
        Deployment {
            dir,
            keys,
            model,
            model_path,
            owner,
            helper,
            images,
        }
    }

    fn plaintext(&self, protocol: &str, images: &[PathBuf]) -> Vec<usize> {
        let d = self.model.spec.input;
        let px: Vec<Vec<u8>> = images
            .iter()
            .map(|p| load_image(p, (d.c, d.h, d.w), Fit::Stretch).unwrap())
            .collect();
        serve::plaintext_classes(&self.model, &px, protocol, 13).unwrap()
    }

    fn classify(&self, client: &str, images: &[PathBuf], extra: &[&str]) -> Child {
        let mut c = Command::new(BIN);
        c.args([
            "classify",
            "--keys",
            self.keys.to_str().unwrap(),
            "--client",
            client,
            "--owner",
            &self.owner.addr,
            "--helper",
            &self.helper.addr,
            "--json",
            "--timeout",
            "20",
        ]);
        for i in images {
            c.arg("--image").arg(i);
        }
        c.args(extra);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    }

    /// A genuine client classifies the images and gets the plaintext classes; returns its JSON
    /// report.
    fn check_serving(&self, client: &str) -> serde_json::Value {
        let imgs = &self.images[..2];
        let out = wait(self.classify(client, imgs, &[]), 120.0);
        let v = json_of("classify", &out);
        let got: Vec<usize> = v["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["index"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, self.plaintext("fast", imgs));
        v
    }

    fn fault_client(&self, name: &str) -> (ClientConn, ClientConn) {
        let keys = PartyKeys::load_stem(&self.keys, 0, name).unwrap();
        let req: Request = serve::new_request(name, "fast", 13, 1).unwrap();
        let t = Duration::from_secs(20);
        // The helper first: the owner answers only once the helper has paired the session.
        let mut h = ClientConn::open(&keys, 2, &self.helper.addr, &req, t).unwrap();
        let mut o = ClientConn::open(&keys, 1, &self.owner.addr, &req, t).unwrap();
        o.verdict(t).unwrap();
        h.verdict(t).unwrap();
        (o, h)
    }

    fn assert_alive(&mut self) {
        assert!(self.owner.alive(), "owner died:\n{}", self.owner.log());
        assert!(self.helper.alive(), "helper died:\n{}", self.helper.log());
    }
}

/// The JSON a successful command printed (the test fails with its stderr otherwise).
fn json_of(what: &str, out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn wait(mut c: Child, secs: f64) -> Output {
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed().as_secs_f64() > secs {
            let _ = c.kill();
            let o = c.wait_with_output().unwrap();
            panic!(
                "classify did not finish within {secs} s: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// The announce message of a client with one image (session.rs's first message, at its
/// `SESSION_VERSION`).
fn announce() -> Vec<u8> {
    let mut m = vec![1u8];
    m.extend_from_slice(
        br#"{"version":4,"protocol":"fast","frac_bits":13,"model":false,"input":true,"images":1,"fixed_masks":true}"#,
    );
    m
}

#[test]
fn three_clients_concurrently_get_the_plaintext_classes_with_names() {
    let mut d = Deployment::new(Arch::Fmnist, "20", &["--max-sessions", "2"]);
    let kids: Vec<Child> = (1..=3)
        .map(|i| d.classify(&format!("client-{i}"), &d.images, &[]))
        .collect();
    let want = d.plaintext("fast", &d.images);
    let mut mask_ids = Vec::new();
    for (i, k) in kids.into_iter().enumerate() {
        let out = wait(k, 180.0);
        let v = json_of(&format!("client {i}"), &out);
        // The pair's weight masks are reused: no client takes part in an opening (it sends
        // nothing in the model setup), and every client gets the same state.
        assert_eq!(v["model_setup_bytes"].as_u64(), Some(0), "{v}");
        assert!(v["weight_masks"].is_string(), "{v}");
        mask_ids.push(v["weight_masks"].clone());
        let rows = v["images"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        for (r, &w) in rows.iter().zip(&want) {
            assert_eq!(r["index"].as_u64().unwrap() as usize, w);
            assert_eq!(
                r["name"].as_str().unwrap(),
                relushare_data::image::class_name("fmnist", w)
            );
            assert_eq!(r["logits"].as_array().unwrap().len(), 10);
        }
    }
    let log = d.owner.wait_log("client client-3: ok", 10.0);
    for i in 1..=3 {
        assert!(
            log.contains(&format!("client client-{i}: ok, 3 image(s)")),
            "{log}"
        );
    }
    d.helper.wait_log("client client-1: ok", 10.0);
    // One state and one computation of the masked weights for the three sessions.
    assert!(mask_ids.iter().all(|m| *m == mask_ids[0]), "{mask_ids:?}");
    let made = |l: &str| l.matches("weight-mask state ").count();
    assert_eq!(
        log.matches("created for helper instance").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("masked weights for fast with 13 fractional bits computed")
            .count(),
        1,
        "{log}"
    );
    assert!(made(&log) >= 2);
    let again = d.check_serving("client-1");
    assert_eq!(again["weight_masks"], mask_ids[0]);
    assert_eq!(
        d.owner
            .log()
            .matches("masked weights for fast with 13 fractional bits computed")
            .count(),
        1
    );
    // The text output names the classes too; the securenn suite is served as well.
    let out = wait(
        d.classify("client-1", &d.images[..1], &["--protocol", "securenn"]),
        120.0,
    );
    let v = json_of("classify", &out);
    assert_eq!(
        v["images"][0]["index"].as_u64().unwrap() as usize,
        d.plaintext("securenn", &d.images[..1])[0]
    );
    assert!(
        v["weight_masks"].is_null(),
        "securenn masks no weights: {v}"
    );
    // mimo is served on the same pair's masks (its own masked weights, computed once for
    // two sessions; the client opens nothing). With --cache-dir the second session is not
    // sent the masked weights again.
    let cache = d.keys.join("client-2-cache");
    let mut received = Vec::new();
    for k in 0..2 {
        let out = wait(
            d.classify(
                "client-2",
                &d.images[..2],
                &["--protocol", "mimo", "--cache-dir", cache.to_str().unwrap()],
            ),
            120.0,
        );
        let v = json_of("classify", &out);
        let want = d.plaintext("mimo", &d.images[..2]);
        for (r, &w) in v["images"].as_array().unwrap().iter().zip(&want) {
            assert_eq!(r["index"].as_u64().unwrap() as usize, w, "{v}");
        }
        assert_eq!(v["model_setup_bytes"].as_u64(), Some(0), "{v}");
        assert_eq!(v["weight_masks"], mask_ids[0], "{v}");
        let note = v["weight_cache"].as_str().unwrap_or_default();
        let expect = ["received and stored", "taken from"][k];
        assert!(note.contains(expect), "{v}");
        received.push(v["setup_received_bytes"].as_u64().unwrap());
    }
    assert!(received[1] < received[0], "{received:?}");
    assert_eq!(
        d.owner
            .log()
            .matches("masked weights for mimo with 13 fractional bits computed")
            .count(),
        1
    );
    let o = Command::new(BIN)
        .args([
            "classify",
            "--keys",
            d.keys.to_str().unwrap(),
            "--client",
            "client-2",
            "--owner",
            &d.owner.addr,
            "--helper",
            &d.helper.addr,
            "--image",
            d.images[0].to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let name = relushare_data::image::class_name("fmnist", want[0]);
    assert!(o.status.success() && text.contains(&name), "{text}");
    // Servers log identities and outcomes, never shares or pixels: every line is short.
    for l in d.owner.log().lines().chain(d.helper.log().lines()) {
        assert!(l.len() < 400, "long log line: {l}");
    }
    d.assert_alive();
}

#[test]
fn a_client_that_disconnects_mid_session_ends_only_its_session() {
    let mut d = Deployment::new(Arch::Fmnist, "20", &[]);
    let (mut o, mut h) = d.fault_client("client-2");
    o.send_frame(&announce()).unwrap();
    h.send_frame(&announce()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    o.drop_connection();
    h.drop_connection();
    let log = d.owner.wait_log("client client-2: failed", 30.0);
    assert!(log.contains("party 0 disconnected"), "{log}");
    // The helper's part (dealing) may have finished before the client left: either outcome
    // is logged, and the helper keeps serving.
    let t = Instant::now();
    while !d.helper.log().contains("client client-2: failed")
        && !d.helper.log().contains("client client-2: ok")
    {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", d.helper.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.check_serving("client-1");
    d.assert_alive();
}

#[test]
fn a_stalling_client_times_out_while_others_are_served() {
    let mut d = Deployment::new(Arch::Fmnist, "5", &[]);
    let (o, h) = d.fault_client("client-2");
    // Served while the stalled session is open.
    d.check_serving("client-1");
    let log = d.owner.wait_log("client client-2: failed", 30.0);
    assert!(
        log.contains("timed out waiting for a message from party 0"),
        "{log}"
    );
    drop((o, h));
    d.check_serving("client-3");
    d.assert_alive();
}

#[test]
fn malformed_and_oversized_frames_end_only_their_session() {
    let mut d = Deployment::new(Arch::Fmnist, "10", &[]);
    let (mut o, _h) = d.fault_client("client-2");
    let mut bad = vec![1u8];
    bad.extend_from_slice(b"{not json");
    o.send_frame(&bad).unwrap();
    let log = d.owner.wait_log("client client-2: failed", 30.0);
    assert!(log.contains("bad announce"), "{log}");
    let (mut o, _h) = d.fault_client("client-3");
    o.write_raw(&u64::MAX.to_le_bytes()).unwrap();
    let log = d.owner.wait_log("client client-3: failed", 30.0);
    assert!(log.contains("above the limit"), "{log}");
    d.check_serving("client-1");
    d.assert_alive();
}

#[test]
fn foreign_and_revoked_certificates_are_refused_before_any_share() {
    let mut d = Deployment::new(Arch::Fmnist, "10", &[]);
    // Another deployment's CA.
    let other = d.dir.path().join("other-keys");
    run_ok(&["keys", "--out", other.to_str().unwrap(), "--clients", "1"]);
    let o = Command::new(BIN)
        .args([
            "classify",
            "--keys",
            other.to_str().unwrap(),
            "--client",
            "client-1",
            "--owner",
            &d.owner.addr,
            "--helper",
            &d.helper.addr,
            "--image",
            d.images[0].to_str().unwrap(),
            "--timeout",
            "10",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("TLS") || err.contains("certificate") || err.contains("refused"),
        "{err}"
    );
    // The client dials the helper first; the helper refuses the handshake.
    d.helper.wait_log("refused the connection", 10.0);
    // Revoked: refused with the reason; the deny list is re-read without a restart.
    std::fs::write(d.keys.join("revoked"), "client-2\n").unwrap();
    let out = wait(d.classify("client-2", &d.images[..1], &[]), 60.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("client-2 is revoked"),
        "{err}"
    );
    assert!(!d.owner.log().contains("client client-2: ok"));
    assert!(
        !d.owner.log().contains("client client-2 ("),
        "a revoked session started"
    );
    d.check_serving("client-1");
    std::fs::write(d.keys.join("revoked"), "# nobody\n").unwrap();
    d.check_serving("client-2");
    d.assert_alive();
}

#[test]
fn a_hundred_idle_connections_do_not_block_service() {
    let mut d = Deployment::new(Arch::Fmnist, "5", &[]);
    let idle: Vec<TcpStream> = (0..100)
        .map(|i| {
            let a = if i % 2 == 0 {
                &d.owner.addr
            } else {
                &d.helper.addr
            };
            TcpStream::connect(a).unwrap()
        })
        .collect();
    d.check_serving("client-1");
    // The idle connections are dropped after the handshake timeout.
    let mut s = idle.into_iter().next().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = [0u8; 256];
    let t = Instant::now();
    // At most a TLS alert, then the end of the stream.
    let mut got = 0;
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("the idle connection was not closed: {e}"),
        }
    }
    assert!(got < 256, "an idle connection got {got} bytes");
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "idle connection held too long"
    );
    d.owner.wait_log("refused the connection", 10.0);
    d.assert_alive();
}

#[test]
fn a_helper_restart_fails_in_flight_sessions_cleanly_and_new_ones_succeed() {
    let mut d = Deployment::new(Arch::Cifar10, "10", &[]);
    // The pair's weight-mask state before the restart.
    let before = d.check_serving("client-3")["weight_masks"].clone();
    assert!(before.is_string(), "{before}");
    let imgs: Vec<PathBuf> = (0..6).map(|i| d.images[i % 3].clone()).collect();
    let k = d.classify("client-1", &imgs, &["--protocol", "securenn"]);
    d.helper.wait_log("client client-1: started", 60.0);
    let _ = d.helper.child.kill();
    let _ = d.helper.child.wait();
    let out = wait(k, 60.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the in-flight session must fail");
    // The client's link to the helper breaks, or the owner's does and the owner closes.
    assert!(
        err.contains("disconnected")
            && (err.contains("P1") || err.contains("P2") || err.contains("party")),
        "{err}"
    );
    d.owner.wait_log("client client-1: failed", 30.0);
    assert!(d.owner.alive(), "owner died:\n{}", d.owner.log());
    // While the helper is down new sessions fail with a clear error.
    let out = wait(d.classify("client-2", &d.images[..1], &[]), 60.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("peer P2"), "{err}");
    // Back on the same address: served again.
    let k = d.keys.to_str().unwrap().to_string();
    let addr = d.helper.addr.clone();
    let restarted = start(
        d.dir.path(),
        "helper",
        &addr,
        &["--keys", &k, "--timeout", "10"],
        "helper2",
    );
    d.helper = restarted;
    // A new helper instance gets a new weight-mask state (fresh keys, masked weights computed
    // again), which the following sessions reuse.
    let after = d.check_serving("client-2")["weight_masks"].clone();
    assert!(after.is_string() && after != before, "{before} {after}");
    let log = d.owner.log();
    assert!(log.contains("the helper restarted"), "{log}");
    assert_eq!(
        log.matches("created for helper instance").count(),
        2,
        "{log}"
    );
    assert_eq!(d.check_serving("client-1")["weight_masks"], after);
    let _ = &d.model_path;
    d.assert_alive();
}

#[test]
fn a_full_server_answers_busy_at_once_and_bad_arguments_fail_clearly() {
    let mut d = Deployment::new(Arch::Fmnist, "20", &["--max-sessions", "1", "--queue", "0"]);
    let (_o, _h) = d.fault_client("client-2");
    let t = Instant::now();
    let out = wait(d.classify("client-1", &d.images[..1], &[]), 60.0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("server busy"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "busy took {:?}",
        t.elapsed()
    );
    d.owner.wait_log("server busy", 10.0);
    // The refused client's half at the helper is dropped at once, not after the pairing
    // timeout (20 s + 2 x 30 s here).
    let log = d
        .helper
        .wait_log("client client-1: the client left before", 10.0);
    assert!(log.contains("dropped at once"), "{log}");
    d.assert_alive();
    // Bad arguments: clear errors, no server started.
    let k = d.keys.to_str().unwrap().to_string();
    for (args, want) in [
        (
            vec![
                "serve",
                "--role",
                "owner",
                "--keys",
                &k,
                "--listen",
                "127.0.0.1:0",
            ],
            "needs a model",
        ),
        (
            vec![
                "serve",
                "--role",
                "boss",
                "--keys",
                &k,
                "--listen",
                "127.0.0.1:0",
            ],
            "owner or helper",
        ),
        (
            vec![
                "classify",
                "--keys",
                &k,
                "--client",
                "client-9",
                "--owner",
                "127.0.0.1:1",
                "--helper",
                "127.0.0.1:1",
                "--random-image",
                "1",
            ],
            "client-9.crt",
        ),
    ] {
        let o = Command::new(BIN).args(&args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(want), "{args:?}: {e}");
    }
    // Keys of a deployment: owner-only private keys.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for n in ["owner", "helper", "client-1", "client-3"] {
            let m = std::fs::metadata(d.keys.join(format!("{n}.key"))).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{n}");
        }
    }
}

/// A client that the owner admitted but that leaves while the helper pairs the session (it
/// never dialed the helper) frees its slot at once, here and at the helper: with one slot and no
/// queue, the next client is served instead of being told "busy" until the pairing timeout
/// (20 s + 2 x 30 s here).
#[test]
fn a_client_that_leaves_before_pairing_frees_its_slot_at_once() {
    let mut d = Deployment::new(Arch::Fmnist, "20", &["--max-sessions", "1", "--queue", "0"]);
    let keys = PartyKeys::load_stem(&d.keys, 0, "client-2").unwrap();
    let req: Request = serve::new_request("client-2", "fast", 13, 1).unwrap();
    let o = ClientConn::open(&keys, 1, &d.owner.addr, &req, Duration::from_secs(20)).unwrap();
    // The owner admits the session and waits at the helper for the client's half.
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    o.drop_connection();
    d.owner.wait_log(
        "the client left before the helper paired the session; slot freed",
        10.0,
    );
    d.helper
        .wait_log("the model owner left before the client joined", 10.0);
    d.check_serving("client-1");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    d.assert_alive();
}

/// `serve --network` (the owner's link to the helper) and `classify --network` (the client's
/// links) put every link of the session through a shaping relay: the classes stay the
/// plaintext ones, and the online phase takes at least one one-way delay per round.
#[test]
fn classify_over_an_emulated_network_is_delayed_and_correct() {
    let rtt_ms = 30.0;
    let rtt = format!("{rtt_ms}");
    let d = Deployment::new(Arch::Fmnist, "20", &["--rtt-ms", &rtt]);
    let imgs = &d.images[..1];
    let out = wait(
        d.classify("client-1", imgs, &["--rtt-ms", &rtt, "--mbit", "400"]),
        180.0,
    );
    let v = json_of("classify", &out);
    assert_eq!(
        v["images"][0]["index"].as_u64().unwrap() as usize,
        d.plaintext("fast", imgs)[0]
    );
    assert_eq!(v["network"]["rtt_ms"].as_f64().unwrap(), rtt_ms);
    let rounds = v["online_rounds"].as_u64().unwrap() as f64;
    let online = v["online_seconds"].as_f64().unwrap();
    assert!(rounds >= 10.0, "{v}");
    assert!(
        online >= rounds * rtt_ms / 2000.0,
        "online {online} s for {rounds} rounds at {rtt_ms} ms RTT"
    );
    // the helper has no link of its own to shape
    let o = Command::new(BIN)
        .args([
            "serve",
            "--role",
            "helper",
            "--keys",
            d.keys.to_str().unwrap(),
            "--listen",
            &free_addr(),
            "--network",
            "wan",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("owner's link"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
