//! Criterion benchmarks of the hot kernels of secure inference: Z_2^64 matrix product and
//! convolution (beside an f32 product of the same shape), comparisons per element (`fast` tree
//! and `fss` DCF), dealer material generation, PRG throughput, and serialisation.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use relushare_mpc::cost::Comm;
use relushare_mpc::fast::deal::Deal;
use relushare_mpc::fast::{bits, cmp, CmpMode};
use relushare_mpc::fss::dcf;
use relushare_mpc::kernels::{self, ConvGeom};
use relushare_mpc::prg::Prg;
use relushare_mpc::ring;
use relushare_mpc::transport::MemTransport;
use std::hint::black_box;

/// The CIFAR-10 conv2 shape as a matrix product: [64 x 576] * [576 x 1024].
const M: usize = 64;
const K: usize = 576;
const N: usize = 1024;

/// f32 product with the same loop structure (row-parallel, k-blocked, contiguous inner loop).
fn matmul_f32(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut c = vec![0f32; m * n];
    c.par_chunks_mut(n).enumerate().for_each(|(i, crow)| {
        for p in 0..k {
            let av = a[i * k + p];
            let brow = &b[p * n..(p + 1) * n];
            for (cv, bv) in crow.iter_mut().zip(brow) {
                *cv += av * bv;
            }
        }
    });
    c
}

fn bench_linear(c: &mut Criterion) {
    let mut prg = Prg::from_seed([1; 16]);
    let a = prg.gen_u64s(M * K);
    let b = prg.gen_u64s(K * N);
    let af: Vec<f32> = a.iter().map(|&x| (x % 1000) as f32 / 1000.0).collect();
    let bf: Vec<f32> = b.iter().map(|&x| (x % 1000) as f32 / 1000.0).collect();
    let mut g = c.benchmark_group("matmul_64x576x1024");
    g.throughput(Throughput::Elements((M * K * N) as u64));
    g.bench_function("u64", |bn| {
        bn.iter(|| black_box(kernels::matmul(&a, &b, M, K, N)))
    });
    g.bench_function("f32", |bn| {
        bn.iter(|| black_box(matmul_f32(&af, &bf, M, K, N)))
    });
    g.finish();

    let geom = ConvGeom {
        n: 1,
        c: 64,
        h: 32,
        w: 32,
        o: 64,
        k: 3,
        stride: 1,
        pad: 1,
    };
    let x = prg.gen_u64s(geom.in_len());
    let w = prg.gen_u64s(geom.w_len());
    let mut g = c.benchmark_group("conv_cifar_conv2");
    g.throughput(Throughput::Elements(
        (geom.out_len() * geom.col_rows()) as u64,
    ));
    g.bench_function("u64", |bn| {
        bn.iter(|| black_box(kernels::conv2d(&x, &w, &geom)))
    });
    g.finish();
}

/// Run the online comparison of `n` elements on two threads (P0, P1) with material dealt in
/// advance; returns the XOR of the decision shares to keep the work observable.
fn run_cmp(mats: &mut Option<(cmp::CmpAny, cmp::CmpAny)>, c: &[u64]) -> u64 {
    let (m0, m1) = mats.take().expect("material");
    let [t0, t1, _t2] = MemTransport::trio();
    let c1 = c.to_vec();
    let h = std::thread::spawn(move || {
        let mut comm = Comm::new(Box::new(t1));
        let r = cmp::drelu_any(&mut comm, &m1, &c1).expect("p1");
        (r, m1)
    });
    let mut comm = Comm::new(Box::new(t0));
    let r0 = cmp::drelu_any(&mut comm, &m0, c).expect("p0");
    let (r1, m1) = h.join().expect("thread");
    *mats = Some((m0, m1));
    r0.iter().zip(&r1).fold(0, |acc, (a, b)| acc ^ a ^ b)
}

fn deal_cmp_trio(n: usize, k: u32, mode: CmpMode) -> (cmp::CmpAny, cmp::CmpAny, Vec<u64>) {
    let (s0, s1) = ([3u8; 16], [4u8; 16]);
    let mut d = Deal::dealer(Prg::from_seed(s0), Prg::from_seed(s1));
    let mut p0 = Deal::p0(Prg::from_seed(s0));
    let mut p1 = Deal::p1(Prg::from_seed(s1));
    let r = d.rand_u64(n).secret.expect("dealer");
    let _ = p0.rand_u64(n);
    let _ = p1.rand_u64(n);
    cmp::deal_cmp_any(&mut d, n, k, Some(&r), mode).expect("deal");
    p1.feed(d.take_corrections());
    p0.feed0(d.take_public0());
    let m0 = cmp::deal_cmp_any(&mut p0, n, k, None, mode).expect("p0");
    let m1 = cmp::deal_cmp_any(&mut p1, n, k, None, mode).expect("p1");
    (m0, m1, r)
}

fn bench_compare(c: &mut Criterion) {
    let n = 16384;
    let mut g = c.benchmark_group("compare_16384");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20);
    for (mode, k) in [
        (CmpMode::Tree, 21u32),
        (CmpMode::Tree, 33),
        (CmpMode::Fss, 21),
        (CmpMode::Fss, 33),
    ] {
        let (m0, m1, r) = deal_cmp_trio(n, k, mode);
        let mut prg = Prg::from_seed([8; 16]);
        let y: Vec<u64> = prg.gen_u64s(n).iter().map(|v| v >> (65 - k)).collect();
        let cc = ring::add(&y, &r);
        let mut mats = Some((m0, m1));
        g.bench_with_input(BenchmarkId::new(format!("{mode:?}"), k), &k, |bn, _| {
            bn.iter(|| black_box(run_cmp(&mut mats, &cc)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("deal_relu_16384");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20);
    for (mode, k) in [(CmpMode::Tree, 21u32), (CmpMode::Fss, 21)] {
        g.bench_with_input(BenchmarkId::new(format!("{mode:?}"), k), &k, |bn, &k| {
            bn.iter(|| {
                let mut d = Deal::dealer(Prg::from_seed([1; 16]), Prg::from_seed([2; 16]));
                cmp::deal_relu(&mut d, n, k, mode).expect("deal");
                black_box(d.take_corrections().len())
            })
        });
    }
    g.finish();
}

fn bench_prg(c: &mut Criterion) {
    let mut g = c.benchmark_group("prg");
    let n = 1 << 20;
    g.throughput(Throughput::Bytes(8 * n as u64));
    let mut p = Prg::from_seed([5; 16]);
    let mut buf = vec![0u64; n];
    g.bench_function("aes_ctr_8MiB", |bn| {
        bn.iter(|| p.fill_u64(black_box(&mut buf)))
    });
    let tp = dcf::TreePrg::new();
    let seeds: Vec<u128> = (0..65536u128).map(|i| i * 0x9e37_79b9_7f4a_7c15).collect();
    let mut out = Vec::new();
    g.throughput(Throughput::Bytes(2 * 16 * seeds.len() as u64));
    g.bench_function("dcf_tree_expand_65536", |bn| {
        bn.iter(|| tp.expand(black_box(&seeds), &mut out))
    });
    g.finish();
}

fn bench_serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialize");
    let n = 65536;
    let mut p = Prg::from_seed([6; 16]);
    let v = p.gen_u64s(n);
    g.throughput(Throughput::Bytes(8 * n as u64));
    g.bench_function("u64s_to_bytes_65536", |bn| {
        bn.iter(|| black_box(ring::u64s_to_bytes(&v)))
    });
    let b = ring::u64s_to_bytes(&v);
    g.bench_function("bytes_to_u64s_65536", |bn| {
        bn.iter(|| black_box(ring::bytes_to_u64s(&b, 0).expect("ok")))
    });
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("pack_kbit21_65536", |bn| {
        bn.iter(|| black_box(bits::pack_kbit(&v, 21)))
    });
    let planes: Vec<Vec<u64>> = (0..8).map(|_| p.gen_u64s(bits::words(n))).collect();
    let refs: Vec<&[u64]> = planes.iter().map(|x| x.as_slice()).collect();
    g.bench_function("pack_planes_8x65536", |bn| {
        bn.iter(|| black_box(bits::pack_planes(&refs, n)))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_linear,
    bench_compare,
    bench_prg,
    bench_serialize
);
criterion_main!(benches);
