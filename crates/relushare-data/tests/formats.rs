//! Round trips and every error path of the on-disk formats, with files built byte by byte.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use relushare_data::{
    cifar, idx, load, mat, normalization, normalize_image, DataError, DatasetName, FormatProblem,
    Split,
};

fn problem(r: Result<relushare_data::Loaded, DataError>) -> FormatProblem {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e
            .problem()
            .unwrap_or_else(|| panic!("expected a format error, got: {e}")),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

// ---- CIFAR-10 ------------------------------------------------------------------------------

fn cifar_records(n: usize, salt: usize) -> Vec<(u8, Vec<u8>)> {
    (0..n)
        .map(|i| (((i + salt) % 10) as u8, pattern(3072, i + salt * 1000)))
        .collect()
}

#[test]
fn cifar_round_trip_full_and_partial() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cifar-10-batches-bin");
    let mut all = Vec::new();
    for b in 1..=5 {
        let recs = cifar_records(3, b);
        write(
            &base.join(format!("data_batch_{b}.bin")),
            &cifar_bytes(&recs),
        );
        all.extend(recs);
    }
    let test = cifar_records(4, 77);
    write(&base.join("test_batch.bin"), &cifar_bytes(&test));

    let l = load(
        DatasetName::Cifar10,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.set.len(), 15);
    assert_eq!(l.set.dims(), (3, 32, 32));
    for (i, (lab, img)) in all.iter().enumerate() {
        assert_eq!(l.set.label(i), *lab);
        assert_eq!(l.set.image(i), &img[..]);
    }
    let t = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(t.set.len(), 4);
    assert_eq!(t.set.image(3), &test[3].1[..]);

    // Limit spanning batch files.
    let l = load(
        DatasetName::Cifar10,
        Split::Train,
        Some(dir.path()),
        Some(7),
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(l.set.len(), 7);
    assert_eq!(l.set.image(6), &all[6].1[..]);
    assert_eq!(
        l.set.labels,
        all[..7].iter().map(|r| r.0).collect::<Vec<_>>()
    );
    // Limit above the available count: all of them, with a warning.
    let l = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        Some(100),
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(l.set.len(), 4);
    assert!(l.warnings.iter().any(|w| w.contains("100")));

    // Partial training set: accepted with a warning naming the missing batches.
    for b in 2..=5 {
        fs::remove_file(base.join(format!("data_batch_{b}.bin"))).unwrap();
    }
    let l = load(
        DatasetName::Cifar10,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(l.set.len(), 3);
    assert_eq!(l.warnings.len(), 1);
    assert!(
        l.warnings[0].contains("data_batch_5.bin"),
        "{}",
        l.warnings[0]
    );
}

#[test]
fn cifar_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("cifar-10-batches-bin");
    let test = base.join("test_batch.bin");
    // Missing files.
    let e = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("relushare data fetch"), "{e}");
    let e = load(
        DatasetName::Cifar10,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");
    // No data dir.
    let e = load(DatasetName::Cifar10, Split::Test, None, None, (0, 0, 0)).unwrap_err();
    assert!(matches!(e, DataError::NoDataDir { .. }), "{e}");

    let good = cifar_bytes(&cifar_records(3, 0));
    // Short last record.
    write(&test, &good[..good.len() - 5]);
    let r = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        None,
        (0, 0, 0),
    );
    let msg = r.as_ref().unwrap_err().to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("short record"),
        "{msg}"
    );
    assert_eq!(problem(r), FormatProblem::ShortRecord);
    // Label out of range.
    let mut bad = good.clone();
    bad[3073] = 10;
    write(&test, &bad);
    let r = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        None,
        (0, 0, 0),
    );
    assert!(r.as_ref().unwrap_err().to_string().contains("record 1"));
    assert_eq!(problem(r), FormatProblem::LabelOutOfRange);
    // Empty file.
    write(&test, &[]);
    let r = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(dir.path()),
        None,
        (0, 0, 0),
    );
    assert_eq!(problem(r), FormatProblem::CountMismatch);
    // Every truncation of a two-record file is either an error or a whole-record prefix.
    let two = cifar_bytes(&cifar_records(2, 5));
    for cut in 0..two.len() {
        let r = cifar::parse_records(&two[..cut], Path::new("x.bin"));
        if cut > 0 && cut % 3073 == 0 {
            assert_eq!(r.unwrap().1.len(), cut / 3073);
        } else {
            assert!(r.is_err(), "cut {cut}");
        }
    }
}

// ---- Fashion-MNIST IDX -----------------------------------------------------------------------

fn fmnist_files(n: usize, salt: usize) -> (Vec<u8>, Vec<u8>) {
    let images = pattern(n * 784, salt);
    let labels: Vec<u8> = (0..n).map(|i| ((i * 3 + salt) % 10) as u8).collect();
    (
        idx_bytes(&[n as u32, 28, 28], &images),
        idx_bytes(&[n as u32], &labels),
    )
}

#[test]
fn fmnist_round_trip_gzip_and_plain() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("fashion-mnist");
    let (ti, tl) = fmnist_files(6, 1);
    let (si, sl) = fmnist_files(4, 2);
    write(&base.join("train-images-idx3-ubyte.gz"), &gzip(&ti));
    write(&base.join("train-labels-idx1-ubyte.gz"), &gzip(&tl));
    // Test split un-gzipped.
    write(&base.join("t10k-images-idx3-ubyte"), &si);
    write(&base.join("t10k-labels-idx1-ubyte"), &sl);

    let l = load(
        DatasetName::Fmnist,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(l.set.dims(), (1, 28, 28));
    assert_eq!(l.set.len(), 6);
    assert_eq!(l.set.images, ti[16..]);
    assert_eq!(l.set.labels, tl[8..]);
    let t = load(
        DatasetName::Fmnist,
        Split::Test,
        Some(dir.path()),
        Some(3),
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!(t.set.len(), 3);
    assert_eq!(t.set.images, si[16..16 + 3 * 784]);
    assert_eq!(t.set.labels, sl[8..11]);
}

#[test]
fn fmnist_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("fashion-mnist");
    let ip = base.join("train-images-idx3-ubyte.gz");
    let lp = base.join("train-labels-idx1-ubyte.gz");
    let run = || {
        load(
            DatasetName::Fmnist,
            Split::Train,
            Some(dir.path()),
            None,
            (0, 0, 0),
        )
    };
    let e = run().unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e}");

    let (ti, tl) = fmnist_files(5, 3);
    write(&ip, &gzip(&ti));
    write(&lp, &gzip(&tl));
    run().unwrap();

    // Bad magic: a label file where the images should be.
    write(&ip, &gzip(&tl));
    let r = run();
    assert!(
        r.as_ref().unwrap_err().to_string().contains("train-images"),
        "{:?}",
        r.as_ref().err()
    );
    assert_eq!(problem(r), FormatProblem::BadMagic);
    // Wrong dims.
    write(
        &ip,
        &gzip(&idx_bytes(&[5, 27, 28], &pattern(5 * 27 * 28, 0))),
    );
    assert_eq!(problem(run()), FormatProblem::WrongDims);
    // Count mismatch between images and labels.
    write(&ip, &gzip(&ti));
    write(&lp, &gzip(&idx_bytes(&[4], &[1, 2, 3, 4])));
    let r = run();
    assert!(r.as_ref().unwrap_err().to_string().contains("train-labels"));
    assert_eq!(problem(r), FormatProblem::CountMismatch);
    // Label out of range.
    write(&lp, &gzip(&idx_bytes(&[5], &[1, 2, 3, 10, 4])));
    assert_eq!(problem(run()), FormatProblem::LabelOutOfRange);
    // Truncated payload inside the gzip stream.
    write(&lp, &gzip(&tl));
    write(&ip, &gzip(&ti[..ti.len() - 100]));
    assert_eq!(problem(run()), FormatProblem::ShortRecord);
    // Truncated gzip stream itself.
    let gz = gzip(&ti);
    write(&ip, &gz[..gz.len() / 2]);
    let p = problem(run());
    assert!(
        matches!(p, FormatProblem::ShortRecord | FormatProblem::Corrupt),
        "{p:?}"
    );
    // Corrupt gzip stream.
    let mut gz2 = gz.clone();
    for b in gz2[20..60].iter_mut() {
        *b ^= 0x5a;
    }
    write(&ip, &gz2);
    assert!(run().is_err());
    // Trailing data.
    let mut extra = ti.clone();
    extra.extend_from_slice(&[1, 2, 3]);
    write(&ip, &gzip(&extra));
    assert_eq!(problem(run()), FormatProblem::CountMismatch);
    // A header announcing absurd sizes is refused before allocating.
    write(&ip, &gzip(&idx_bytes(&[u32::MAX, 28, 28], &[])));
    assert_eq!(problem(run()), FormatProblem::TooLarge);

    // Un-gzipped: truncation and trailing data are detected from the file size.
    fs::remove_file(&ip).unwrap();
    let plain = base.join("train-images-idx3-ubyte");
    write(&plain, &ti[..ti.len() - 1]);
    let r = run();
    assert!(r
        .as_ref()
        .unwrap_err()
        .to_string()
        .contains("train-images-idx3-ubyte"));
    assert_eq!(problem(r), FormatProblem::ShortRecord);
    write(&plain, &extra);
    assert_eq!(problem(run()), FormatProblem::CountMismatch);
    // Every prefix of a valid file fails cleanly.
    for cut in 0..ti.len() {
        assert!(idx::read_idx_bytes(&ti[..cut], 3, Path::new("p")).is_err());
    }
    let g = gzip(&ti);
    for cut in 0..g.len() {
        assert!(
            idx::read_idx_bytes(&g[..cut], 3, Path::new("p")).is_err(),
            "cut {cut}"
        );
    }
}

// ---- SVHN / MATLAB v5 ------------------------------------------------------------------------

fn check_svhn(set: &relushare_data::ImageSet, labels: &[u8]) {
    assert_eq!(set.dims(), (3, 32, 32));
    assert_eq!(set.labels, labels);
    for k in 0..set.len() {
        let img = set.image(k);
        for ch in 0..3 {
            for r in 0..32 {
                for c in 0..32 {
                    assert_eq!(
                        img[ch * 1024 + r * 32 + c],
                        svhn_px(r, c, ch, k),
                        "k{k} ch{ch} r{r} c{c}"
                    );
                }
            }
        }
    }
}

#[test]
fn svhn_round_trip_all_encodings() {
    for big in [false, true] {
        for compressed in [false, true] {
            let m = Mat { big };
            let (x, y) = svhn_vars(m, &[10.0, 1.0, 5.0, 9.0]);
            let other = Var {
                name: "unused_variable",
                class: MX_DOUBLE,
                dims: vec![1, 2],
                storage: MI_DOUBLE,
                data: m.f64s(&[1.5, 2.5]),
                complex: false,
            };
            let text = Var {
                name: "note",
                class: MX_CHAR,
                dims: vec![1, 2],
                storage: MI_UINT8,
                data: b"hi".to_vec(),
                complex: false,
            };
            let enc = |v: &Var| {
                if compressed {
                    m.compressed(v)
                } else {
                    m.matrix(v)
                }
            };
            let file = m.file(&[enc(&other), enc(&text), enc(&x), enc(&y)]);
            let dir = tempfile::tempdir().unwrap();
            write(&dir.path().join("svhn/test_32x32.mat"), &file);
            let l = load(
                DatasetName::Svhn,
                Split::Test,
                Some(dir.path()),
                None,
                (0, 0, 0),
            )
            .unwrap_or_else(|e| panic!("big={big} compressed={compressed}: {e}"));
            check_svhn(&l.set, &[0, 1, 5, 9]);
            let l = load(
                DatasetName::Svhn,
                Split::Test,
                Some(dir.path()),
                Some(2),
                (0, 0, 0),
            )
            .unwrap();
            check_svhn(&l.set, &[0, 1]);
            // Labels stored as uint8 (MATLAB's compact storage of a double array) work too.
            let y8 = Var {
                storage: MI_UINT8,
                data: vec![10, 1, 5, 9],
                ..y
            };
            let file = m.file(&[enc(&x), enc(&y8)]);
            let vars = mat::read_mat_bytes(&file, &["X", "y"], Path::new("t.mat")).unwrap();
            let set = relushare_data::svhn_from_vars(&vars, Path::new("t.mat"), None).unwrap();
            check_svhn(&set, &[0, 1, 5, 9]);
        }
    }
}

fn svhn_err(file: &[u8]) -> DataError {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("svhn/train_32x32.mat"), file);
    match load(
        DatasetName::Svhn,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    ) {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(e.to_string().contains("train_32x32.mat"), "{e}");
            e
        }
    }
}

#[test]
fn svhn_errors() {
    let m = Mat { big: false };
    let (x, y) = svhn_vars(m, &[1.0, 2.0, 3.0]);
    let good = m.file(&[m.compressed(&x), m.matrix(&y)]);

    let dir = tempfile::tempdir().unwrap();
    let e = load(
        DatasetName::Svhn,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }));

    // Bad magic / endian / version.
    let mut f = good.clone();
    f[..6].copy_from_slice(b"NOTMAT");
    assert_eq!(svhn_err(&f).problem(), Some(FormatProblem::BadMagic));
    let mut f = good.clone();
    f[126..128].copy_from_slice(b"XX");
    assert_eq!(svhn_err(&f).problem(), Some(FormatProblem::BadMagic));
    let mut f = good.clone();
    f[124..126].copy_from_slice(&0x0200u16.to_le_bytes());
    let e = svhn_err(&f);
    assert_eq!(e.problem(), Some(FormatProblem::Unsupported));
    assert!(e.to_string().contains("7.3"), "{e}");
    assert_eq!(
        svhn_err(&good[..50]).problem(),
        Some(FormatProblem::BadMagic)
    );

    // Wrong dims of X.
    let xw = Var {
        dims: vec![32, 32, 1, 9],
        ..svhn_vars(m, &[1.0; 3]).0
    };
    let e = svhn_err(&m.file(&[m.matrix(&xw), m.matrix(&y)]));
    assert_eq!(e.problem(), Some(FormatProblem::WrongDims), "{e}");
    // Dims disagree with the data length.
    let xd = Var {
        dims: vec![32, 32, 3, 4],
        ..svhn_vars(m, &[1.0; 3]).0
    };
    assert_eq!(
        svhn_err(&m.file(&[m.matrix(&xd), m.matrix(&y)])).problem(),
        Some(FormatProblem::CountMismatch)
    );
    // y has a different count.
    let (_, y4) = svhn_vars(m, &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        svhn_err(&m.file(&[m.matrix(&x), m.matrix(&y4)])).problem(),
        Some(FormatProblem::CountMismatch)
    );
    // Labels out of range (0 and 11) and fractional.
    for bad in [0.0, 11.0, 2.5, -1.0] {
        let (_, yb) = svhn_vars(m, &[1.0, bad, 3.0]);
        let e = svhn_err(&m.file(&[m.matrix(&x), m.matrix(&yb)]));
        assert_eq!(
            e.problem(),
            Some(FormatProblem::LabelOutOfRange),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("y(2)"), "{e}");
    }
    // Missing variable.
    let e = svhn_err(&m.file(&[m.matrix(&x)]));
    assert_eq!(e.problem(), Some(FormatProblem::CountMismatch));
    assert!(e.to_string().contains("`y`"), "{e}");
    // Complex data.
    let (_, yc) = svhn_vars(m, &[1.0, 2.0, 3.0]);
    let yc = Var {
        complex: true,
        ..yc
    };
    assert_eq!(
        svhn_err(&m.file(&[m.matrix(&x), m.matrix(&yc)])).problem(),
        Some(FormatProblem::Unsupported)
    );
    // Corrupt zlib stream.
    let mut f = good.clone();
    for b in f[140..180].iter_mut() {
        *b ^= 0xa5;
    }
    let e = svhn_err(&f);
    assert!(
        matches!(
            e.problem(),
            Some(FormatProblem::Corrupt | FormatProblem::ShortRecord)
        ),
        "{e}"
    );
    // An element longer than the file.
    let mut f = good.clone();
    f[132..136].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(svhn_err(&f).problem(), Some(FormatProblem::ShortRecord));
    // Every truncation fails cleanly (and names the file).
    for cut in (0..good.len()).step_by(7) {
        let r = mat::read_mat_bytes(&good[..cut], &["X", "y"], Path::new("cut.mat"));
        assert!(r.is_err(), "cut {cut}");
    }
}

// ---- real samples ----------------------------------------------------------------------------

#[test]
fn real_sample() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real-sample");
    if !dir.is_dir() {
        println!(
            "note: {} is absent; skipping the real-sample test",
            dir.display()
        );
        return;
    }
    let tr = load(
        DatasetName::Cifar10,
        Split::Train,
        Some(&dir),
        None,
        (0, 0, 0),
    )
    .unwrap();
    let te = load(
        DatasetName::Cifar10,
        Split::Test,
        Some(&dir),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!((tr.set.len(), te.set.len()), (4000, 500));
    assert_eq!(tr.warnings.len(), 1, "partial training set must warn");
    for s in [&tr.set, &te.set] {
        assert!(s.labels.iter().all(|&l| l < 10));
        assert!(
            s.class_counts().iter().all(|&c| c > 0),
            "{:?}",
            s.class_counts()
        );
    }
    let ftr = load(
        DatasetName::Fmnist,
        Split::Train,
        Some(&dir),
        None,
        (0, 0, 0),
    )
    .unwrap();
    let fte = load(
        DatasetName::Fmnist,
        Split::Test,
        Some(&dir),
        None,
        (0, 0, 0),
    )
    .unwrap();
    assert_eq!((ftr.set.len(), fte.set.len()), (4000, 1000));
    assert!(ftr
        .set
        .labels
        .iter()
        .chain(&fte.set.labels)
        .all(|&l| l < 10));
    // The published normalisation constants roughly match the sample's statistics.
    for (set, name) in [
        (&tr.set, DatasetName::Cifar10),
        (&ftr.set, DatasetName::Fmnist),
    ] {
        let norm = normalization(name, set.channels);
        let mut out = vec![0f32; set.image_len()];
        let (mut sum, mut sq, mut n) = (0f64, 0f64, 0f64);
        for i in 0..set.len() {
            normalize_image(set.image(i), &norm, &mut out);
            for &v in &out {
                sum += v as f64;
                sq += (v * v) as f64;
                n += 1.0;
            }
        }
        let mean = sum / n;
        let var = sq / n - mean * mean;
        assert!(
            mean.abs() < 0.1 && (var - 1.0).abs() < 0.2,
            "{name}: mean {mean} var {var}"
        );
    }
}

/// An SVHN-sized training file (73,257 images, compressed X): run with
/// `cargo test --release -p relushare-data --test formats -- --ignored --nocapture`.
#[test]
#[ignore]
fn svhn_full_size() {
    let n = 73_257;
    let m = Mat { big: false };
    let mut x = vec![0u8; 3072 * n];
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((i * 7 + i / 3072) % 251) as u8;
    }
    let labels: Vec<f64> = (0..n).map(|i| (i % 10 + 1) as f64).collect();
    let xv = Var {
        name: "X",
        class: MX_UINT8,
        dims: vec![32, 32, 3, n as u32],
        storage: MI_UINT8,
        data: x,
        complex: false,
    };
    let yv = Var {
        name: "y",
        class: MX_DOUBLE,
        dims: vec![n as u32, 1],
        storage: MI_DOUBLE,
        data: m.f64s(&labels),
        complex: false,
    };
    let file = m.file(&[m.compressed(&xv), m.compressed(&yv)]);
    drop(xv);
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("svhn/train_32x32.mat"), &file);
    drop(file);
    let t = std::time::Instant::now();
    let l = load(
        DatasetName::Svhn,
        Split::Train,
        Some(dir.path()),
        None,
        (0, 0, 0),
    )
    .unwrap();
    println!(
        "loaded {} SVHN-sized images in {:?}",
        l.set.len(),
        t.elapsed()
    );
    assert_eq!(l.set.len(), n);
    assert_eq!(l.set.label(9), 0);
}
