//! `relushare count` end to end: the binary's JSON equals the library's count, and the
//! issue's acceptance numbers hold.

use std::process::Command;

fn count_json(arch: &str, preset: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_relushare"))
        .args(["count", "--arch", arch, "--preset", preset, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn json_matches_library_for_every_preset() {
    for arch in relushare_model::Arch::ALL {
        for p in relushare_model::presets::NAMES {
            let Ok(spec) = relushare_model::presets::build(arch, p) else {
                continue;
            };
            let lib = relushare_model::count(&spec).unwrap();
            let j = count_json(arch.name(), p);
            assert_eq!(j["total_relus"], lib.total_relus, "{arch} {p}");
            let layers = j["layers"].as_array().unwrap();
            assert_eq!(layers.len(), lib.layers.len());
            for (a, b) in layers.iter().zip(&lib.layers) {
                assert_eq!(a["name"], b.name.as_str());
                assert_eq!(a["relus"], b.relus);
            }
        }
    }
}

#[test]
fn acceptance_numbers() {
    assert_eq!(count_json("cifar10", "original")["total_relus"], 173056);
    assert_eq!(count_json("cifar10", "uniform32")["total_relus"], 42112);
    assert_eq!(count_json("cifar10", "uniform3")["total_relus"], 57472);
    assert_eq!(count_json("svhn", "original")["total_relus"], 29216);
    assert_eq!(count_json("svhn", "uniform32")["total_relus"], 2336);
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for args in [
        &["count", "--arch", "resnet"][..],
        &["count", "--arch", "cifar10", "--preset", "nope"],
        &["count", "--arch", "svhn", "--preset", "layer2-only"],
        &["count", "--model", "/nonexistent/model.safetensors"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_relushare"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.len() > 10, "{args:?}: {err}");
    }
}
