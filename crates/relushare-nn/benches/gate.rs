//! The fused sharing gate against one pass of plain ReLU over the same `[B, N]` batch
//! (Fashion-MNIST `act1`: 32 channels of 28x28, batch 64): whole-channel groups, 3x3 patches,
//! and whole-channel groups with 20% noise flips (the `uniform32`, `uniform3` and `noise` rows).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};

fn uniform(rng: &mut ChaCha8Rng, scale: f32) -> f32 {
    (rng.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
}
use rand_chacha::ChaCha8Rng;
use relushare_nn::gate::{backward_values, forward_values, grid_of, runs_of, GateArgs};

const B: usize = 64;
const C: usize = 32;
const H: usize = 28;

fn group_map(k: usize) -> (Vec<u32>, usize) {
    // k = 0: one group per channel; else k x k patches, the remainder merged into the last
    let per_side = if k == 0 { 1 } else { H / k };
    let mut g = Vec::with_capacity(C * H * H);
    for c in 0..C {
        for y in 0..H {
            for x in 0..H {
                let (py, px) = if k == 0 {
                    (0, 0)
                } else {
                    ((y / k).min(per_side - 1), (x / k).min(per_side - 1))
                };
                g.push((c * per_side * per_side + py * per_side + px) as u32);
            }
        }
    }
    (g, C * per_side * per_side)
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let n = C * H * H;
    let x: Vec<f32> = (0..B * n).map(|_| uniform(&mut rng, 1.0)).collect();
    let dy: Vec<f32> = (0..B * n).map(|_| uniform(&mut rng, 1.0)).collect();
    let v: Vec<f32> = (0..n).map(|_| uniform(&mut rng, 0.1)).collect();
    let flips: Vec<u8> = (0..B * n)
        .map(|_| (rng.next_u32() % 5 == 0) as u8)
        .collect();
    c.bench_function("relu pass (baseline)", |b| {
        b.iter(|| x.iter().map(|&t| t.max(0.0)).collect::<Vec<f32>>())
    });
    for (name, k, noisy) in [
        ("channel", 0, false),
        ("patch3", 3, false),
        ("channel+noise", 0, true),
    ] {
        let (group_of, groups) = group_map(k);
        let a = GateArgs {
            runs: Arc::new(runs_of(&group_of)),
            grid: grid_of(&group_of, C, H, H).map(Arc::new),
            group_of: Arc::new(group_of),
            groups,
            flips: noisy.then(|| Arc::new(flips.clone())),
            temperature: 1.0,
        };
        let cg = vec![0f32; groups];
        c.bench_function(&format!("gate forward {name}"), |b| {
            b.iter(|| forward_values(&x, &v, &cg, &a))
        });
        let (_, z) = forward_values(&x, &v, &cg, &a);
        c.bench_function(&format!("gate backward {name}"), |b| {
            b.iter(|| backward_values(&x, &v, &z, &dy, &a))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).without_plots();
    targets = bench
}
criterion_main!(benches);
