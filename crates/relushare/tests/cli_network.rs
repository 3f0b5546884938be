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

/// The round-optimal `mimo` suite over the networked parties: the in-process costs exactly
/// (SVHN: 5 online rounds, one per layer but the last, plus the input), the plaintext class.
#[test]
fn mimo_networked_run_matches_the_in_process_costs() {
    let model: Vec<&str> = MODEL
        .iter()
        .map(|a| if *a == "fast" { "mimo" } else { a })
        .collect();
    let local = infer_json(&model);
    let mut args = model.clone();
    args.extend(["--rtt-ms", "4", "--mbit", "1000"]);
    let net = infer_json(&args);
    for k in ["online_bytes", "offline_bytes", "rounds", "offline_rounds"] {
        assert_eq!(net[k], local[k], "{k}");
    }
    assert_eq!(net["rounds"].as_u64(), Some(5));
    assert_eq!(net["protocol"], "mimo");
    assert_eq!(net["agree_with_plaintext"].as_f64(), Some(1.0));
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

/// `infer --stream` over an emulated network: every image agrees with the plaintext, the
/// costs per image are the in-process ones, full batches cost alike, the dealer's material was
/// pipelined, and the stream pays the emulated delays; `--protocol auto` says what it chose and
/// why, and runs that suite.
#[test]
fn networked_stream_and_protocol_auto() {
    let local = infer_json(MODEL);
    let mut args = MODEL.to_vec();
    args.extend([
        "--rtt-ms", "4", "--mbit", "200", "--stream", "5", "--batch", "2", "--depth", "1",
    ]);
    let s = infer_json(&args);
    assert_eq!(s["images"], 5);
    assert_eq!(s["batch"], 2);
    assert_eq!(s["pipelined"], true);
    assert_eq!(s["batches_cost_alike"], true);
    assert_eq!(s["agree_with_plaintext"].as_f64(), Some(1.0));
    assert_eq!(s["batches"].as_array().unwrap().len(), 3);
    for k in ["online_bytes", "offline_bytes"] {
        let (a, b) = (s[k].as_f64().unwrap(), local[k].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6 * b.max(1.0), "{k}: {a} vs {b}");
    }
    assert_eq!(s["rounds"], local["rounds"]);
    // Three batches one after another online: each round of each waits a one-way delay.
    let rounds = s["rounds"].as_f64().unwrap();
    let secs = s["seconds"].as_f64().unwrap();
    assert!(
        secs >= 3.0 * rounds * 0.002,
        "{secs} s for 3 x {rounds} rounds"
    );
    assert!(s["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(s["first_result_seconds"].as_f64().unwrap() <= secs);

    let mut auto: Vec<&str> = MODEL[..MODEL.len() - 1].to_vec();
    auto.extend(["auto", "--rtt-ms", "4", "--mbit", "200"]);
    let a = infer_json(&auto);
    let c = &a["protocol_choice"];
    let chosen = c["chosen"].as_str().unwrap();
    assert_eq!(a["protocol"], chosen);
    let cands = c["candidates"].as_array().unwrap();
    for p in ["fast", "fss", "securenn"] {
        assert!(
            cands.iter().any(|c| c["protocol"] == p),
            "{p} not a candidate"
        );
    }
    assert_eq!(cands[0]["protocol"], chosen);
    assert!(c["reason"].as_str().unwrap().starts_with(chosen));
    assert_eq!(a["agree_with_plaintext"].as_f64(), Some(1.0));
    let bad = infer(&[
        "--arch",
        "svhn",
        "--preset",
        "original",
        "--random-weights",
        "--protocol",
        "nope",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("auto"));
}
