//! Wall-clock benchmark of whole secure sessions (all three parties in this process), without
//! the CLI: `cargo run --release -p relushare-mpc --example session_bench -- [ARCH] [PRESET]
//! [REPEATS] [PROTOCOLS]` (defaults: cifar10 original 9 securenn,fast). Each protocol runs one
//! session of REPEATS one-image batches (as `relushare bench` does); prints per protocol the
//! median, min and max of offline + online seconds per image, and the medians of each phase
//! (and of each layer's online seconds with `SESSION_BENCH_LAYERS=1`).

use relushare_model::{presets, Arch, Model};
use relushare_mpc::plain::FixedModel;
use relushare_mpc::protocol::{factory_for, Protocol};
use relushare_mpc::runner::{run_session, RunOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `session_bench kernel`: multiply-adds per second of the CIFAR-10 conv2 convolution
/// (64x32x32 input, 64 3x3 filters) on the rayon pool, best of 5 rounds of 20.
fn kernel_bench() -> Result<(), Box<dyn std::error::Error>> {
    use relushare_mpc::kernels::{conv2d, ConvGeom};
    let g = ConvGeom {
        n: 1,
        c: 64,
        h: 32,
        w: 32,
        o: 64,
        k: 3,
        stride: 1,
        pad: 1,
    };
    let mut p = relushare_mpc::prg::Prg::from_seed([1; 16]);
    let (x, w) = (p.gen_u64s(g.in_len()), p.gen_u64s(g.w_len()));
    let macs = (g.out_len() * g.col_rows()) as f64;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..20 {
            std::hint::black_box(conv2d(&x, &w, &g));
        }
        best = best.min(t.elapsed().as_secs_f64() / 20.0);
    }
    println!(
        "conv 64x32x32 * 64x3x3: {:.3} ms, {:.2} G multiply-adds/s",
        best * 1e3,
        macs / best / 1e9
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(|s| s.as_str()) == Some("kernel") {
        return kernel_bench();
    }
    let arch: Arch = args
        .first()
        .map(|s| s.as_str())
        .unwrap_or("cifar10")
        .parse()?;
    let preset = args.get(1).map(|s| s.as_str()).unwrap_or("original");
    let repeats: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(9);
    let protocols = args
        .get(3)
        .map(|s| s.as_str())
        .unwrap_or("securenn,fast")
        .to_string();
    let model = Model::random(presets::build(arch, preset)?, None, 1)?;
    let fm = FixedModel::from_model(&model, 13)?;
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let batches: Vec<Vec<Vec<u64>>> = (0..repeats)
        .map(|_| {
            let img: Vec<f32> = (0..fm.input_len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            Ok(vec![fm.encode_input(&img)?])
        })
        .collect::<Result<_, relushare_mpc::MpcError>>()?;
    for name in protocols.split(',') {
        let protocol: Protocol = name.parse()?;
        let factory = factory_for(protocol, &fm, &model)?;
        let res = run_session(&fm, &batches, factory.as_ref(), &RunOptions::default())?;
        let tot: Vec<f64> = res
            .batches
            .iter()
            .map(|b| b.offline_seconds + b.online_seconds)
            .collect();
        let off = median(res.batches.iter().map(|b| b.offline_seconds).collect());
        let on = median(res.batches.iter().map(|b| b.online_seconds).collect());
        let min = tot.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = tot.iter().cloned().fold(0.0, f64::max);
        println!(
            "{arch} {preset} {name:>8}: median {:.4} s (min {:.4}, max {:.4}); offline {:.4} s, online {:.4} s; setup {:.4} s",
            median(tot),
            min,
            max,
            off,
            on,
            res.setup_seconds
        );
        if std::env::var_os("SESSION_BENCH_LAYERS").is_some() {
            for (i, l) in res.batches[0].report.layers.iter().enumerate() {
                let secs = median(
                    res.batches
                        .iter()
                        .filter_map(|b| b.report.layers.get(i).map(|x| x.seconds))
                        .collect(),
                );
                println!("    {:>10} {:.5} s online", l.label, secs);
            }
        }
    }
    Ok(())
}
