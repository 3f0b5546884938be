//! Hostile bytes: model files and cluster maps never panic or over-allocate; they fail with
//! a clear error. Mutations of genuine files and random bytes.

use proptest::prelude::*;
use relushare_model::{presets, Arch, ClusterMaps, Model};

fn genuine() -> Vec<u8> {
    Model::random(presets::build(Arch::Svhn, "fc-noise").unwrap(), None, 1)
        .unwrap()
        .to_bytes()
        .unwrap()
}

/// Replace the JSON header of a safetensors file through `edit`.
fn with_header(bytes: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let new = edit(header);
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Model::from_bytes(&bytes).is_err());
        prop_assert!(ClusterMaps::from_bytes(&bytes).is_err());
    }

    #[test]
    fn mutated_model_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = genuine();
        // Mutations concentrated on the header, where the structure lives.
        let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        for (i, v) in edits {
            let at = i.index(header.min(b.len()));
            b[at] = v;
        }
        if truncate {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        // Either a valid model (a harmless edit) or an error; never a panic.
        if let Ok(m) = Model::from_bytes(&b) {
            prop_assert!(m.validate().is_ok());
        }
    }
}

#[test]
fn hostile_spec_dimensions_are_refused_before_allocating() {
    let m = Model::random(presets::build(Arch::Svhn, "uniform32").unwrap(), None, 1).unwrap();
    let bytes = m.to_bytes().unwrap();
    for (from, to) in [
        (r#"\"h\":32,\"w\":32"#, r#"\"h\":99999999,\"w\":99999999"#),
        (
            r#"\"h\":32,\"w\":32"#,
            r#"\"h\":18446744073709551615,\"w\":2"#,
        ),
        (r#"\"padding\":0"#, r#"\"padding\":9223372036854775807"#),
        (r#"\"format_version\":2"#, r#"\"format_version\":99"#),
    ] {
        let evil = with_header(&bytes, |h| {
            assert!(h.contains(from), "{from} not in header");
            h.replacen(from, to, 1)
        });
        let e = Model::from_bytes(&evil).unwrap_err().to_string();
        assert!(
            e.contains("limit") || e.contains("version") || e.contains("expects"),
            "{from}: {e}"
        );
    }
}
