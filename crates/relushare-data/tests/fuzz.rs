//! Property tests over random and mutated bytes for every dataset decoder: never a panic, and
//! a corpus of interesting hand-made cases kept as regression tests.

mod common;

use std::path::Path;

use common::*;
use proptest::prelude::*;
use relushare_data::{cifar, idx, mat, svhn_from_vars, FormatProblem};

fn valid_mat(compressed: bool, big: bool) -> Vec<u8> {
    let m = Mat { big };
    let (x, y) = svhn_vars(m, &[3.0, 10.0]);
    if compressed {
        m.file(&[m.compressed(&x), m.compressed(&y)])
    } else {
        m.file(&[m.matrix(&x), m.matrix(&y)])
    }
}

fn decode_mat(bytes: &[u8]) {
    let p = Path::new("fuzz.mat");
    if let Ok(vars) = mat::read_mat_bytes(bytes, &["X", "y"], p) {
        let _ = svhn_from_vars(&vars, p, None);
        let _ = svhn_from_vars(&vars, p, Some(1));
    }
}

fn valid_idx(gz: bool) -> Vec<u8> {
    let raw = idx_bytes(&[3, 28, 28], &pattern(3 * 784, 1));
    if gz {
        gzip(&raw)
    } else {
        raw
    }
}

fn mutate(base: &[u8], muts: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for &(i, v) in muts {
        if !b.is_empty() {
            let n = b.len();
            b[i % n] = v;
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn cifar_random(bytes in proptest::collection::vec(any::<u8>(), 0..8000)) {
        let _ = cifar::parse_records(&bytes, Path::new("f.bin"));
    }

    #[test]
    fn cifar_mutated(muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                     cut in proptest::option::of(any::<usize>())) {
        let base = cifar_bytes(&[(1, pattern(3072, 0)), (9, pattern(3072, 1))]);
        let b = mutate(&base, &muts, cut);
        if let Ok((im, lb)) = cifar::parse_records(&b, Path::new("f.bin")) {
            prop_assert_eq!(im.len(), lb.len() * 3072);
            prop_assert!(lb.iter().all(|&l| l < 10));
        }
    }

    #[test]
    fn idx_random(bytes in proptest::collection::vec(any::<u8>(), 0..4000), ndim in 0u8..5) {
        let _ = idx::read_idx_bytes(&bytes, ndim, Path::new("f.idx"));
        // Also behind a valid gzip wrapper.
        let _ = idx::read_idx_bytes(&gzip(&bytes), ndim, Path::new("f.idx.gz"));
    }

    #[test]
    fn idx_mutated(gz in any::<bool>(),
                   muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                   cut in proptest::option::of(any::<usize>())) {
        let b = mutate(&valid_idx(gz), &muts, cut);
        if let Ok(x) = idx::read_idx_bytes(&b, 3, Path::new("f.idx")) {
            prop_assert_eq!(x.data.len(), x.dims.iter().product::<usize>());
        }
    }

    #[test]
    fn mat_random(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
        decode_mat(&bytes);
        // Random bytes behind a valid header, and inside a compressed element.
        let m = Mat { big: false };
        let mut f = m.header();
        f.extend_from_slice(&bytes);
        decode_mat(&f);
        let z = zlib(&bytes);
        let mut f = m.header();
        f.extend_from_slice(&m.u32(MI_COMPRESSED));
        f.extend_from_slice(&m.u32(z.len() as u32));
        f.extend_from_slice(&z);
        decode_mat(&f);
    }

    #[test]
    fn mat_mutated(compressed in any::<bool>(), big in any::<bool>(),
                   muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                   cut in proptest::option::of(any::<usize>())) {
        let b = mutate(&valid_mat(compressed, big), &muts, cut);
        decode_mat(&b);
    }

    /// Mutations aimed at the element headers (where lengths and dims live).
    #[test]
    fn mat_header_mutated(big in any::<bool>(),
                          muts in proptest::collection::vec((128usize..260, any::<u8>()), 1..6)) {
        let b = mutate(&valid_mat(false, big), &muts, None);
        decode_mat(&b);
    }
}

/// Hand-made hostile cases (the corpus): each must give the stated problem, not a panic and
/// not a huge allocation.
#[test]
fn corpus() {
    let p = Path::new("corpus");
    let m = Mat { big: false };
    let (x, y) = svhn_vars(m, &[1.0, 2.0]);

    // IDX header claiming 4 G images of 28x28, in 16 bytes.
    let e = idx::read_idx_bytes(&idx_bytes(&[u32::MAX, 28, 28], &[]), 3, p).unwrap_err();
    assert_eq!(e.problem(), Some(FormatProblem::TooLarge));
    // IDX header claiming 1 G images behind gzip: refused or short, never allocated up front.
    let e = idx::read_idx_bytes(&gzip(&idx_bytes(&[1 << 30, 2, 2], &[0; 100])), 3, p).unwrap_err();
    assert!(
        matches!(
            e.problem(),
            Some(FormatProblem::ShortRecord | FormatProblem::TooLarge)
        ),
        "{e}"
    );
    // IDX with a zero dimension is an empty, valid file.
    assert_eq!(
        idx::read_idx_bytes(&idx_bytes(&[0, 28, 28], &[]), 3, p)
            .unwrap()
            .data
            .len(),
        0
    );

    // MAT: X announcing 2^31 x 2^31 elements.
    let huge = Var {
        dims: vec![32, 32, 3, 0x7fff_ffff],
        ..svhn_vars(m, &[1.0, 2.0]).0
    };
    let e =
        mat::read_mat_bytes(&m.file(&[m.matrix(&huge), m.matrix(&y)]), &["X", "y"], p).unwrap_err();
    assert_eq!(e.problem(), Some(FormatProblem::CountMismatch), "{e}");
    // MAT: negative dimension.
    let neg = Var {
        dims: vec![32, 32, 3, u32::MAX],
        ..svhn_vars(m, &[1.0, 2.0]).0
    };
    let e =
        mat::read_mat_bytes(&m.file(&[m.matrix(&neg), m.matrix(&y)]), &["X", "y"], p).unwrap_err();
    assert_eq!(e.problem(), Some(FormatProblem::Corrupt), "{e}");
    // MAT: compressed element whose inner matrix claims more bytes than the stream holds.
    let mut inner = m.matrix(&x);
    inner[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let z = zlib(&inner);
    let mut f = m.header();
    f.extend_from_slice(&m.u32(MI_COMPRESSED));
    f.extend_from_slice(&m.u32(z.len() as u32));
    f.extend_from_slice(&z);
    let e = mat::read_mat_bytes(&f, &["X", "y"], p).unwrap_err();
    assert!(
        matches!(
            e.problem(),
            Some(FormatProblem::ShortRecord | FormatProblem::CountMismatch)
        ),
        "{e}"
    );
    // MAT: the data element of X claims 4 GiB (> limit) inside a small compressed stream.
    let mut inner = m.matrix(&x);
    let data_tag = 8 + 16 + 8 + 16 + 8; // matrix tag, flags, dims (4 dims), small name
    assert_eq!(&inner[data_tag..data_tag + 4], &MI_UINT8.to_le_bytes());
    inner[data_tag + 4..data_tag + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let z = zlib(&inner);
    let mut f = m.header();
    f.extend_from_slice(&m.u32(MI_COMPRESSED));
    f.extend_from_slice(&m.u32(z.len() as u32));
    f.extend_from_slice(&z);
    let e = mat::read_mat_bytes(&f, &["X", "y"], p).unwrap_err();
    assert!(
        matches!(
            e.problem(),
            Some(FormatProblem::ShortRecord | FormatProblem::TooLarge)
        ),
        "{e}"
    );
    // MAT: small element claiming 7 bytes.
    let mut f = m.file(&[m.matrix(&y)]);
    let name_at = 128 + 8 + 16 + 16;
    f[name_at..name_at + 4].copy_from_slice(&((7u32 << 16) | MI_INT8).to_le_bytes());
    let e = mat::read_mat_bytes(&f, &["y"], p).unwrap_err();
    assert_eq!(e.problem(), Some(FormatProblem::Corrupt), "{e}");
    // MAT: a zip bomb-ish stream of zeros (decompresses to 64 MiB of nothing useful).
    let zeros = vec![0u8; 64 << 20];
    let z = zlib(&zeros);
    let mut f = m.header();
    f.extend_from_slice(&m.u32(MI_COMPRESSED));
    f.extend_from_slice(&m.u32(z.len() as u32));
    f.extend_from_slice(&z);
    assert!(mat::read_mat_bytes(&f, &["X"], p).is_err());
}
