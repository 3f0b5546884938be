//! `relushare infer --network`: the three parties as separate processes over TLS through the
//! emulated network give the in-process costs exactly, the plaintext class, the JSON fields of
//! the network, and phase times that include the emulated delays. Small model and small RTT so
//! that CI stays fast.

use std::process::Command;

fn infer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relushare"))
        .arg("infer")
        .args(args)
        .output()
        .unwrap()
}

fn infer_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = infer(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const MODEL: &[&str] = &[
    "--arch",
    "svhn",
    "--preset",
    "original",
    "--random-weights",
    "--protocol",
    "fast",
];

#[test]
fn networked_run_matches_the_in_process_costs_and_pays_the_delays() {
    let local = infer_json(MODEL);
    let rtt_ms = 4.0;
    let mut args = MODEL.to_vec();
    args.extend(["--rtt-ms", "4", "--mbit", "200"]);
    let net = infer_json(&args);
    assert_eq!(net["network"]["rtt_ms"].as_f64(), Some(rtt_ms));
    assert_eq!(net["network"]["mbit"].as_f64(), Some(200.0));
    assert_eq!(net["network"]["processes"], true);
    assert_eq!(local["network"]["processes"], false);
    assert_eq!(local["network"]["name"], "none");
    // Same suite, same model: exactly the same bytes and rounds per image.
    for k in ["online_bytes", "offline_bytes", "rounds", "offline_rounds"] {
        assert_eq!(net[k], local[k], "{k}");
    }
    assert_eq!(net["agree_with_plaintext"].as_f64(), Some(1.0));
    let on = net["online_seconds"].as_f64().unwrap();
    let off = net["offline_seconds"].as_f64().unwrap();
    let total = net["seconds"].as_f64().unwrap();
    assert!((on + off - total).abs() < 1e-9, "{on} + {off} != {total}");
    // Every online round waits for at least one one-way delay, and the dealer's material
    // crosses a link before the online phase can start.
    let rounds = net["rounds"].as_u64().unwrap() as f64;
    assert!(
        on >= rounds * rtt_ms / 2000.0,
        "{rounds} online rounds in {on} s over a {rtt_ms} ms RTT"
    );
    let off_bytes = net["offline_bytes"].as_f64().unwrap();
    assert!(off >= rtt_ms / 2000.0, "offline phase of {off} s");
    assert!(off_bytes > 0.0);
}

/// Parties that cannot finish (here: a connection window shorter than the TLS handshake over a
/// 200 ms RTT) end the run with an error naming a party, quickly, and leave no process behind.
#[test]
fn failing_parties_give_a_clear_error_not_a_hang() {
    let mut args = MODEL.to_vec();
    args.extend(["--rtt-ms", "200", "--timeout", "0.2"]);
    let t0 = std::time::Instant::now();
    let out = infer(&args);
    let secs = t0.elapsed().as_secs_f64();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("party"), "{err}");
    assert!(secs < 30.0, "{secs} s");
}

#[test]
fn bad_network_options_are_refused_before_anything_runs() {
    let mut args = MODEL.to_vec();
    args.extend(["--network", "moon"]);
    let out = infer(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown network"), "{err}");
    let mut args = MODEL.to_vec();
    args.extend(["--network", "wan", "--mbit", "0"]);
    let out = infer(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bandwidth"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
