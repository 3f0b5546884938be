//! The synthetic set: deterministic, split-dependent, balanced, and learnable but not trivial.

use relushare_data::{
    load, normalization, normalize_image, synthetic, DatasetName, ImageSet, Split,
};

/// Nearest-class-mean accuracy: train means on `train`, classify `test`.
fn nearest_mean_accuracy(train: &ImageSet, test: &ImageSet) -> f64 {
    let d = train.image_len();
    let mut means = vec![vec![0f64; d]; 10];
    let counts = train.class_counts();
    for i in 0..train.len() {
        let m = &mut means[train.label(i) as usize];
        for (a, &v) in m.iter_mut().zip(train.image(i)) {
            *a += v as f64;
        }
    }
    for (m, &c) in means.iter_mut().zip(&counts) {
        m.iter_mut().for_each(|a| *a /= c.max(1) as f64);
    }
    let mut correct = 0;
    for i in 0..test.len() {
        let img = test.image(i);
        let best = (0..10)
            .map(|k| {
                let dist: f64 = means[k]
                    .iter()
                    .zip(img)
                    .map(|(m, &v)| (m - v as f64).powi(2))
                    .sum();
                (dist, k)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap()
            .1;
        correct += (best == test.label(i) as usize) as usize;
    }
    correct as f64 / test.len() as f64
}

#[test]
fn deterministic_and_split_dependent() {
    let a = synthetic((3, 32, 32), 50, 7, Split::Train);
    let b = synthetic((3, 32, 32), 50, 7, Split::Train);
    assert_eq!(a, b);
    let prefix = synthetic((3, 32, 32), 20, 7, Split::Train);
    assert_eq!(prefix.images, a.images[..20 * 3072]);
    let t = synthetic((3, 32, 32), 50, 7, Split::Test);
    assert_ne!(a.images, t.images);
    let other = synthetic((3, 32, 32), 50, 8, Split::Train);
    assert_ne!(a.images, other.images);
    for i in 0..50 {
        for j in 0..50 {
            assert_ne!(a.image(i), t.image(j), "train {i} equals test {j}");
        }
    }
    // Through `load`, with a limit and the default sizes.
    let l = load(
        DatasetName::Synthetic,
        Split::Train,
        None,
        Some(30),
        (1, 28, 28),
    )
    .unwrap();
    assert_eq!((l.set.len(), l.set.dims()), (30, (1, 28, 28)));
    assert!(l.warnings.is_empty());
    let l = load(DatasetName::Synthetic, Split::Test, None, None, (1, 28, 28)).unwrap();
    assert_eq!(l.set.len(), relushare_data::SYNTHETIC_TEST_SIZE);
    assert!(load(
        DatasetName::Synthetic,
        Split::Test,
        None,
        Some(1),
        (0, 28, 28)
    )
    .is_err());
}

#[test]
fn balanced_and_varied() {
    let s = synthetic((3, 32, 32), 2000, 1, Split::Train);
    for &c in &s.class_counts() {
        assert!((150..=250).contains(&c), "{:?}", s.class_counts());
    }
    // Pixels use the range: not constant, not saturated.
    let mean = s.images.iter().map(|&v| v as f64).sum::<f64>() / s.images.len() as f64;
    assert!((40.0..200.0).contains(&mean), "mean {mean}");
    let sat =
        s.images.iter().filter(|&&v| v == 0 || v == 255).count() as f64 / s.images.len() as f64;
    assert!(sat < 0.2, "saturated fraction {sat}");
}

#[test]
fn learnable_above_chance_but_not_trivially() {
    for dims in [(3, 32, 32), (1, 28, 28)] {
        let train = synthetic(dims, 2000, 11, Split::Train);
        let test = synthetic(dims, 1000, 11, Split::Test);
        let acc = nearest_mean_accuracy(&train, &test);
        println!("nearest-class-mean accuracy on synthetic {dims:?}: {acc:.3}");
        assert!(
            acc > 0.25,
            "{dims:?}: {acc} is not clearly above chance (0.1)"
        );
        assert!(acc < 0.9, "{dims:?}: {acc} means the task is trivial");
    }
}

#[test]
fn synthetic_normalization_is_computed() {
    for c in [1, 3] {
        let norm = normalization(DatasetName::Synthetic, c);
        assert_eq!((norm.mean.len(), norm.std.len()), (c, c));
        let set = synthetic((c, 32, 32), 300, 99, Split::Test);
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
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.1,
            "c={c}: mean {mean} var {var}"
        );
    }
    // Published constants for the real sets, averaged when the channel count differs.
    assert_eq!(
        normalization(DatasetName::Cifar10, 3).mean,
        vec![0.4914, 0.4822, 0.4465]
    );
    assert_eq!(normalization(DatasetName::Fmnist, 1).std, vec![0.3530]);
    let n = normalization(DatasetName::Fmnist, 3);
    assert_eq!(n.mean, vec![0.2860; 3]);
}

#[test]
fn normalize_image_matches_formula() {
    let norm = relushare_data::Normalization {
        mean: vec![0.5, 0.25],
        std: vec![0.5, 0.25],
    };
    let img = [0u8, 255, 51, 102];
    let mut out = [0f32; 4];
    normalize_image(&img, &norm, &mut out);
    let expect = [-1.0, 1.0, (0.2 - 0.25) / 0.25, (0.4 - 0.25) / 0.25];
    for (o, e) in out.iter().zip(expect) {
        assert!((o - e).abs() < 1e-5, "{out:?}");
    }
}

#[test]
fn generation_speed() {
    let t = std::time::Instant::now();
    let s = synthetic((3, 32, 32), 2000, 3, Split::Train);
    let dt = t.elapsed();
    println!("2000 synthetic 3x32x32 images in {dt:?}");
    assert_eq!(s.len(), 2000);
    let t = std::time::Instant::now();
    let _ = normalization(DatasetName::Synthetic, 3);
    println!("synthetic normalization in {:?}", t.elapsed());
}
