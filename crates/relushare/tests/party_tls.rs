//! `relushare keys` + `relushare party` as real processes on loopback: a full three-party
//! inference over TLS equals the in-process result, and every failure mode (missing, refused,
//! disconnecting, stalling or malformed peers) ends each process with a clear error, a non-zero
//! status and within a bounded time.

use relushare_model::{presets, Arch, Model};
use relushare_mpc::net::{NetConfig, PartyKeys, RawPeer};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relushare");

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn keys(dir: &Path, sid: &str) -> PathBuf {
    let k = dir.join(format!("keys-{sid}"));
    let st = Command::new(BIN)
        .args(["keys", "--out", k.to_str().unwrap(), "--session-id", sid])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    k
}

fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

struct Party {
    child: Child,
    started: Instant,
}

struct Done {
    ok: bool,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn spawn(role: usize, keys: &Path, extra: &[&str]) -> Party {
    let mut c = Command::new(BIN);
    c.args([
        "party",
        "--role",
        &role.to_string(),
        "--keys",
        keys.to_str().unwrap(),
    ]);
    c.args(extra);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    Party {
        child: c.spawn().unwrap(),
        started: Instant::now(),
    }
}

impl Party {
    /// Waits at most `limit` seconds (then kills the process and fails the test).
    fn wait(mut self, limit: f64) -> Done {
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let out = self.child.wait_with_output().unwrap();
                return Done {
                    ok: st.success(),
                    stdout: String::from_utf8_lossy(&out.stdout).into(),
                    stderr: String::from_utf8_lossy(&out.stderr).into(),
                    secs: self.started.elapsed().as_secs_f64(),
                };
            }
            if self.started.elapsed().as_secs_f64() > limit {
                let _ = self.child.kill();
                let out = self.child.wait_with_output().unwrap();
                panic!(
                    "party did not finish within {limit} s; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn svhn_model(dir: &Path) -> (Model, PathBuf) {
    let spec = presets::build(Arch::Svhn, "uniform4").unwrap();
    let mut m = Model::random(spec, None, 11).unwrap();
    // Freshly initialised networks give nearly equal logits; spread them so that classes are
    // well defined (far above the truncation error).
    for name in ["fc1.weight", "fc1.bias"] {
        for v in &mut m.params.get_mut(name).unwrap().data {
            *v *= 40.0;
        }
    }
    let p = dir.join("model.safetensors");
    m.save(&p).unwrap();
    (m, p)
}

#[test]
fn three_processes_over_tls_match_the_in_process_result() {
    let d = tmp();
    let k = keys(d.path(), "full-run");
    let (model, mpath) = svhn_model(d.path());
    let len = model.spec.input.len();
    let images = relushare_mpc::net::session::random_images(3, 8, len);
    let img_path = d.path().join("images.json");
    std::fs::write(&img_path, serde_json::to_vec(&images).unwrap()).unwrap();
    let out = d.path().join("result.json");
    let (a0, a1) = (free_port(), free_port());
    let peers2 = format!("0={a0},1={a1}");
    let p0 = spawn(
        0,
        &k,
        &[
            "--listen",
            &a0,
            "--image",
            img_path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
            "--timeout",
            "60",
        ],
    );
    let p1 = spawn(
        1,
        &k,
        &[
            "--listen",
            &a1,
            "--peers",
            &format!("0={a0}"),
            "--model",
            mpath.to_str().unwrap(),
            "--timeout",
            "60",
        ],
    );
    let p2 = spawn(2, &k, &["--peers", &peers2, "--timeout", "60"]);
    let (r0, r1, r2) = (p0.wait(120.0), p1.wait(120.0), p2.wait(120.0));
    assert!(r0.ok, "P0: {}", r0.stderr);
    assert!(r1.ok, "P1: {}", r1.stderr);
    assert!(r2.ok, "P2: {}", r2.stderr);
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let printed: serde_json::Value = serde_json::from_str(&r0.stdout).unwrap();
    assert_eq!(rep, printed);
    assert_eq!(rep["client"], true);
    assert_eq!(rep["owner_role"], 1);
    let classes: Vec<usize> = serde_json::from_value(rep["classes"].clone()).unwrap();
    let logits: Vec<Vec<f32>> = serde_json::from_value(rep["logits"].clone()).unwrap();
    assert_eq!(classes.len(), 8);
    // In-process: the same suite and comparison sizes over the in-memory transport.
    let fm = relushare_mpc::plain::FixedModel::from_model(&model, 13).unwrap();
    let cfg = relushare_mpc::fast::config_for_model(&fm, &model).unwrap();
    let factory = relushare_mpc::fast::factory(cfg, relushare_mpc::fast::CmpMode::Tree);
    let enc: Vec<Vec<u64>> = images.iter().map(|i| fm.encode_input(i).unwrap()).collect();
    let res =
        relushare_mpc::runner::run_session(&fm, &[enc], &factory, &Default::default()).unwrap();
    // Secure runs differ from each other and from plaintext fixed point by the (random)
    // truncation error only (a few units of 2^-13 per layer, amplified by the spread last
    // layer): logits must agree closely, and classes wherever the top two logits are further
    // apart than that error.
    let margin = |v: &[f32]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        s[0] - s[1]
    };
    let mut compared = 0;
    for (i, out) in res.batches[0].outputs.iter().enumerate() {
        let local = fm.fp.decode_vec(out);
        for (a, b) in local.iter().zip(&logits[i]) {
            // 0.2, not less: the two runs draw independent truncation errors (0 or +1 unit per
            // truncated element), and a unit at a shared decision that sits at zero flips a
            // whole 4x4 group; with fc1 scaled by 40 such a flip moves logits by up to ~0.06
            // (seen under load), while a protocol error moves them by whole units
            assert!(
                (a - b).abs() < 0.2,
                "logits differ: {local:?} vs {:?}",
                logits[i]
            );
        }
        if margin(&local) > 0.1 {
            assert_eq!(
                classes[i],
                relushare_mpc::plain::argmax_fixed(out),
                "image {i}"
            );
        }
        // And the plaintext fixed-point evaluation.
        let plain =
            relushare_mpc::plain::forward_fixed(&model, &images[i], 13, &mut |_| false).unwrap();
        let pc = plain
            .iter()
            .enumerate()
            .fold(0, |b, (j, v)| if *v > plain[b] { j } else { b });
        if margin(&plain) > 0.1 {
            assert_eq!(classes[i], pc, "image {i} vs plaintext");
            compared += 1;
        }
    }
    // The images and weights are fixed, so this does not depend on chance.
    assert!(
        compared > 0,
        "no image with a clear class: pick other seeds"
    );
    // The other parties learned no result.
    for r in [&r1, &r2] {
        assert!(!r.stdout.contains("class"), "{}", r.stdout);
    }
}

#[test]
fn missing_peer_fails_within_the_timeout() {
    let d = tmp();
    let k = keys(d.path(), "lonely");
    let a0 = free_port();
    let r = spawn(
        0,
        &k,
        &["--listen", &a0, "--random-image", "1", "--timeout", "2"],
    )
    .wait(15.0);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("P1") && r.stderr.contains("never connected"),
        "{}",
        r.stderr
    );
    assert!(r.secs < 8.0, "{}", r.secs);
    // A dialler whose peer never listens gives up too.
    let r = spawn(
        2,
        &k,
        &[
            "--peers",
            &format!("0={a0},1={}", free_port()),
            "--timeout",
            "2",
        ],
    )
    .wait(15.0);
    assert!(!r.ok);
    assert!(r.stderr.contains("cannot connect"), "{}", r.stderr);
}

/// Starts real P0 (client) and P1 (model owner) and runs `fake` as P2 against them.
fn with_fake_p2(sid: &str, timeout: &str, fake: impl FnOnce(RawPeer, RawPeer)) -> (Done, Done) {
    let d = tmp();
    let k = keys(d.path(), sid);
    let (a0, a1) = (free_port(), free_port());
    let p0 = spawn(
        0,
        &k,
        &["--listen", &a0, "--random-image", "4", "--timeout", timeout],
    );
    let p1 = spawn(
        1,
        &k,
        &[
            "--listen",
            &a1,
            "--peers",
            &format!("0={a0}"),
            "--arch",
            "svhn",
            "--random-weights",
            "--timeout",
            timeout,
        ],
    );
    let mut cfg = NetConfig::new(PartyKeys::load(&k, 2).unwrap(), BTreeMap::new());
    cfg.timeout = Duration::from_secs(20);
    let to0 = RawPeer::dial(&cfg, 0, &a0).unwrap();
    let to1 = RawPeer::dial(&cfg, 1, &a1).unwrap();
    fake(to0, to1);
    (p0.wait(30.0), p1.wait(30.0))
}

/// The announce message of a party (session.rs's first message, at its `SESSION_VERSION`).
fn announce() -> Vec<u8> {
    let mut m = vec![1u8];
    m.extend_from_slice(
        br#"{"version":4,"protocol":"fast","frac_bits":13,"model":false,"input":false,"images":0}"#,
    );
    m
}

fn assert_failed(r: &Done, needles: &[&str], max_secs: f64) {
    assert!(!r.ok, "should fail: {}", r.stdout);
    for n in needles {
        assert!(r.stderr.contains(n), "missing {n:?} in: {}", r.stderr);
    }
    assert!(r.secs < max_secs, "took {} s: {}", r.secs, r.stderr);
}

#[test]
fn peer_disconnecting_mid_protocol_is_reported() {
    let (r0, r1) = with_fake_p2("drop", "5", |mut p0, mut p1| {
        for p in [&mut p0, &mut p1] {
            p.send_frame(&announce()).unwrap();
        }
        // Read the announces and the model structure, then vanish.
        for p in [&mut p0, &mut p1] {
            let _ = p.recv_frame(1 << 30);
        }
        let _ = p1.recv_frame(1 << 30);
        p0.drop_connection();
        p1.drop_connection();
    });
    // Both fail; the one that notices first names P2 (the other may see its partner leave).
    assert_failed(&r0, &["disconnected"], 20.0);
    assert_failed(&r1, &["disconnected"], 20.0);
    assert!(
        r0.stderr.contains("party 2 disconnected") || r1.stderr.contains("party 2 disconnected"),
        "{}\n{}",
        r0.stderr,
        r1.stderr
    );
}

#[test]
fn stalled_peer_times_out() {
    let (r0, r1) = with_fake_p2("stall", "2", |mut p0, mut p1| {
        for p in [&mut p0, &mut p1] {
            p.send_frame(&announce()).unwrap();
        }
        // Say nothing more, keep the connections open past the timeout.
        std::thread::sleep(Duration::from_secs(7));
        drop((p0, p1));
    });
    assert_failed(&r0, &[], 15.0);
    assert_failed(&r1, &[], 15.0);
    let stalled = "timed out waiting for a message from party 2";
    assert!(
        r0.stderr.contains(stalled) || r1.stderr.contains(stalled),
        "{}\n{}",
        r0.stderr,
        r1.stderr
    );
}

/// A peer of another session version (e.g. one whose `fast` comparisons deal the earlier
/// tree) is refused by name before any protocol message.
#[test]
fn a_peer_of_another_session_version_is_refused() {
    let (r0, r1) = with_fake_p2("oldversion", "3", |mut p0, mut p1| {
        let old = String::from_utf8(announce()[1..].to_vec())
            .unwrap()
            .replace(r#""version":4"#, r#""version":3"#);
        let mut m = vec![1u8];
        m.extend_from_slice(old.as_bytes());
        for p in [&mut p0, &mut p1] {
            p.send_frame(&m).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    for r in [&r0, &r1] {
        assert_failed(r, &["party 2 speaks session version 3, this is 4"], 15.0);
    }
}

#[test]
fn short_frame_oversized_length_and_wrong_type_are_refused() {
    let (r0, _r1) = with_fake_p2("short", "3", |mut p0, p1| {
        let mut m = 100u64.to_le_bytes().to_vec();
        m.extend_from_slice(&[1u8; 10]);
        p0.write_raw(&m).unwrap();
        p0.drop_connection();
        drop(p1);
    });
    assert_failed(&r0, &["short frame", "P2"], 15.0);

    let (r0, _r1) = with_fake_p2("huge", "3", |mut p0, p1| {
        p0.write_raw(&(1u64 << 40).to_le_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop((p0, p1));
    });
    assert_failed(&r0, &["above the limit", "P2"], 15.0);

    let (r0, r1) = with_fake_p2("wrongtype", "3", |mut p0, mut p1| {
        let mut m = vec![5u8]; // an output message where an announce is expected
        m.extend_from_slice(&[0u8; 80]);
        p0.send_frame(&m).unwrap();
        p1.send_frame(&[]).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    assert_failed(
        &r0,
        &["output message where a announce message was expected", "P2"],
        15.0,
    );
    assert_failed(&r1, &["empty message", "P2"], 15.0);

    // A protocol message of the wrong shape (a 3-byte "seed") after a correct setup.
    let (r0, r1) = with_fake_p2("badshape", "3", |mut p0, mut p1| {
        for p in [&mut p0, &mut p1] {
            p.send_frame(&announce()).unwrap();
        }
        for p in [&mut p0, &mut p1] {
            let _ = p.recv_frame(1 << 30);
        }
        let _ = p1.recv_frame(1 << 30); // the model structure
        for p in [&mut p0, &mut p1] {
            p.send_frame(&[1, 2, 3]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    assert_failed(
        &r0,
        &["malformed message from party 2", "seed of 3 bytes"],
        15.0,
    );
    assert_failed(&r1, &["malformed message from party 2"], 15.0);
}

#[test]
fn other_ca_wrong_role_and_replayed_session_are_refused_before_any_share() {
    let d = tmp();
    let k = keys(d.path(), "genuine");
    let other = keys(d.path(), "genuine2");

    // P1 with a certificate of another session's CA.
    let a0 = free_port();
    let p0 = spawn(
        0,
        &k,
        &["--listen", &a0, "--random-image", "1", "--timeout", "3"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let p1 = spawn(
        1,
        &other,
        &[
            "--listen",
            &free_port(),
            "--peers",
            &format!("0={a0}"),
            "--arch",
            "svhn",
            "--random-weights",
            "--timeout",
            "3",
        ],
    );
    let (r0, r1) = (p0.wait(20.0), p1.wait(20.0));
    assert_failed(&r1, &["TLS error", "P0"], 15.0);
    assert_failed(&r0, &["refused"], 15.0);
    for r in [&r0, &r1] {
        assert!(
            !r.stderr.contains("connected and authenticated"),
            "{}",
            r.stderr
        );
    }

    // A replayed session id: both ends refuse.
    let a0 = free_port();
    let p0 = spawn(
        0,
        &k,
        &["--listen", &a0, "--random-image", "1", "--timeout", "3"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let p1 = spawn(
        1,
        &k,
        &[
            "--listen",
            &free_port(),
            "--peers",
            &format!("0={a0}"),
            "--session-id",
            "yesterday",
            "--arch",
            "svhn",
            "--random-weights",
            "--timeout",
            "3",
        ],
    );
    let (r0, r1) = (p0.wait(20.0), p1.wait(20.0));
    assert_failed(&r1, &["refused", "yesterday"], 15.0);
    assert_failed(&r0, &["replayed"], 15.0);

    // Wrong role: P1 dials "P0" but finds a party-2 certificate there.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a0 = l.local_addr().unwrap().to_string();
    let p1 = spawn(
        1,
        &k,
        &[
            "--listen",
            &free_port(),
            "--peers",
            &format!("0={a0}"),
            "--arch",
            "svhn",
            "--random-weights",
            "--timeout",
            "3",
        ],
    );
    let mut cfg = NetConfig::new(PartyKeys::load(&k, 2).unwrap(), BTreeMap::new());
    cfg.timeout = Duration::from_secs(5);
    let impostor = std::thread::spawn(move || RawPeer::accept(&cfg, &l, &[1]).map(|_| ()));
    let r1 = p1.wait(20.0);
    assert_failed(&r1, &["TLS error", "P0"], 15.0);
    assert!(impostor.join().unwrap().is_err());

    // A key file readable by others is refused locally.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            k.join("party-2.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let r = spawn(
            2,
            &k,
            &["--peers", "0=127.0.0.1:1,1=127.0.0.1:1", "--timeout", "2"],
        )
        .wait(10.0);
        assert_failed(&r, &["group or others"], 5.0);
    }
}

#[test]
fn keys_are_private_atomic_and_not_silently_replaced() {
    let d = tmp();
    let k = keys(d.path(), "keys-test");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for r in 0..3 {
            let m = std::fs::metadata(k.join(format!("party-{r}.key")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600, "party-{r}.key");
        }
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    assert!(!k.join("ca.key").exists(), "the CA key must not be kept");
    let names: Vec<String> = std::fs::read_dir(&k)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    let again = Command::new(BIN)
        .args(["keys", "--out", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let forced = Command::new(BIN)
        .args(["keys", "--out", k.to_str().unwrap(), "--force", "--json"])
        .output()
        .unwrap();
    assert!(forced.status.success());
    let j: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    let sid = j["session_id"].as_str().unwrap();
    assert_eq!(sid.len(), 32, "random 128-bit session id");
    assert_eq!(
        std::fs::read_to_string(k.join("session-id"))
            .unwrap()
            .trim(),
        sid
    );
    let bad = Command::new(BIN)
        .args([
            "keys",
            "--out",
            d.path().join("x").to_str().unwrap(),
            "--session-id",
            "a b",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("session id"));
}

/// The client party classifies image files (`--image a.ppm --image b.pgm`): converted and
/// resized to the model's input, classes named by the model's own class names (which only the
/// owner's file holds: they reach the client with the public structure), equal to the
/// plaintext classes of the same pixels.
#[test]
fn the_client_party_classifies_image_files() {
    use relushare_data::image::{load_image, Fit};
    let d = tmp();
    let k = keys(d.path(), "image-files");
    let (mut model, mpath) = svhn_model(d.path());
    let names: Vec<String> = (0..10).map(|i| format!("house-number-{i}")).collect();
    model.spec.class_names = names.clone();
    model.save(&mpath).unwrap();
    let a = d.path().join("a.ppm");
    let mut b = b"P6\n48 40\n255\n".to_vec();
    b.extend((0..48 * 40 * 3).map(|i| ((i * 29 + i / 48) % 253) as u8));
    std::fs::write(&a, b).unwrap();
    let g = d.path().join("b.pgm");
    let mut b = b"P5\n32 32\n255\n".to_vec();
    b.extend((0..32 * 32).map(|i| ((i * 11) % 256) as u8));
    std::fs::write(&g, b).unwrap();
    let (a0, a1) = (free_port(), free_port());
    let p0 = spawn(
        0,
        &k,
        &[
            "--listen",
            &a0,
            "--image",
            a.to_str().unwrap(),
            "--image",
            g.to_str().unwrap(),
            "--json",
            "--timeout",
            "60",
        ],
    );
    let p1 = spawn(
        1,
        &k,
        &[
            "--listen",
            &a1,
            "--peers",
            &format!("0={a0}"),
            "--model",
            mpath.to_str().unwrap(),
            "--timeout",
            "60",
        ],
    );
    let p2 = spawn(
        2,
        &k,
        &["--peers", &format!("0={a0},1={a1}"), "--timeout", "60"],
    );
    let (r0, r1, r2) = (p0.wait(120.0), p1.wait(120.0), p2.wait(120.0));
    assert!(
        r0.ok && r1.ok && r2.ok,
        "{} {} {}",
        r0.stderr,
        r1.stderr,
        r2.stderr
    );
    let rep: serde_json::Value = serde_json::from_str(&r0.stdout).unwrap();
    let rows = rep["classified"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let px: Vec<Vec<u8>> = [&a, &g]
        .iter()
        .map(|p| load_image(p, (3, 32, 32), Fit::Stretch).unwrap())
        .collect();
    for (r, img) in rows.iter().zip(&px) {
        let mut x = vec![0f32; img.len()];
        model.spec.normalization.apply(img, &mut x);
        let plain = relushare_mpc::plain::forward_fixed(&model, &x, 13, &mut |_| false).unwrap();
        let logits: Vec<f32> = serde_json::from_value(r["logits"].clone()).unwrap();
        for (p, s) in plain.iter().zip(&logits) {
            assert!(
                (p - s).abs() < 0.05,
                "logits differ: {plain:?} vs {logits:?}"
            );
        }
        let idx = r["index"].as_u64().unwrap() as usize;
        let top = (0..logits.len()).fold(0, |b, j| if logits[j] > logits[b] { j } else { b });
        assert_eq!(idx, top);
        assert_eq!(r["name"].as_str().unwrap(), names[idx]);
    }
}
