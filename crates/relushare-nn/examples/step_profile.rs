//! Where a training step's time goes: times forward, backward and the optimizer step of one
//! batch (median over repeated steps), then each convolution of the network alone (forward,
//! input gradient, weight gradient) on the plain device, with Burn's built-in operations and
//! with [`relushare_nn::conv`]'s kernels.
//!
//! `cargo run --release -p relushare-nn --example step_profile -- [ARCH] [PRESET] [BATCH] [STEPS] [steps]`
//! (a last argument `steps` skips the per-convolution timings; `RELUSHARE_BURN_OPS=1` makes
//! the network use Burn's built-in convolution and pooling instead of `relushare_nn`'s)

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::module::{conv2d, conv2d_weight_backward, conv_transpose2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use relushare_model::{presets, Arch, Layer, Model};
use relushare_nn::conv;
use relushare_nn::net::{cross_entropy, forward, module_from_model, ForwardMode, Plan};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU seconds (user + system, all threads) this process has used so far (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() > 12 {
        (f[11] + f[12]) / 100.0
    } else {
        f64::NAN
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn sync<const D: usize>(t: &Tensor<D>) {
    // flex runs eagerly; reading one element makes sure the value exists.
    let n = t.dims().iter().product::<usize>();
    let _ = t.clone().reshape([n]).narrow(0, 0, 1).into_data();
}

fn host(t: &Tensor<4>) -> Vec<f32> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch: Arch = args
        .first()
        .map(|s| s.as_str())
        .unwrap_or("cifar10")
        .parse()?;
    let preset = args.get(1).map(|s| s.as_str()).unwrap_or("original");
    let b: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let steps: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    if std::env::var("RELUSHARE_BURN_OPS").is_ok_and(|v| v == "1") {
        // Compare with Burn's built-in convolution and pooling.
        conv::set_fast_kernels(false);
        println!("(Burn's built-in convolution and pooling)");
    }
    let spec = presets::build(arch, preset)?;
    let model = Model::random(spec.clone(), None, 1)?;
    let device = Device::flex().autodiff();
    let plan = Plan::build(&spec, &model.group_maps, &device)?;
    let mut module = module_from_model(&model, &device)?;
    let mut optim = AdamConfig::new().init();
    let d = spec.input;
    let labels: Vec<u8> = (0..b).map(|i| (i % spec.num_classes) as u8).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (mut tf, mut tb, mut to) = (vec![], vec![], vec![]);
    let mut cpu0 = 0.0;
    for step in 0..steps + 2 {
        if step == 2 {
            cpu0 = cpu_seconds();
        }
        let x = Tensor::<4>::random([b, d.c, d.h, d.w], Distribution::Normal(0.0, 1.0), &device);
        sync(&x);
        let t0 = Instant::now();
        let mut mode = ForwardMode {
            train: true,
            noise: true,
            temperature: 1.0,
            rng: &mut rng,
        };
        let logits = forward(&module, &plan, x, &mut mode);
        let loss = cross_entropy(logits, &labels, &device);
        let _l: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = loss.backward();
        let grads = GradientsParams::from_grads(grads, &module);
        let t2 = Instant::now();
        module = optim.step(1e-3, module, grads);
        sync(&module.convs[0].bias.val().unsqueeze_dim::<2>(0));
        let t3 = Instant::now();
        if step >= 2 {
            tf.push((t1 - t0).as_secs_f64());
            tb.push((t2 - t1).as_secs_f64());
            to.push((t3 - t2).as_secs_f64());
        }
    }
    let cpu = (cpu_seconds() - cpu0) / steps as f64;
    let steps_t: Vec<f64> = (0..tf.len()).map(|i| tf[i] + tb[i] + to[i]).collect();
    let best = min(&steps_t);
    let (f, bw, o) = (median(tf), median(tb), median(to));
    println!(
        "{arch} {preset} batch {b}: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms, step {:.1} ms = {:.0} images/s",
        f * 1e3,
        bw * 1e3,
        o * 1e3,
        (f + bw + o) * 1e3,
        b as f64 / (f + bw + o)
    );
    println!(
        "  fastest step {:.1} ms = {:.0} images/s (the machine is shared: the fastest step is the least disturbed)",
        best * 1e3,
        b as f64 / best
    );
    println!(
        "  CPU time per step {:.1} ms (all threads; {:.0} images per CPU-second)",
        cpu * 1e3,
        b as f64 / cpu
    );
    if args.get(4).map(|s| s.as_str()) == Some("steps") {
        return Ok(());
    }

    // Each convolution alone on the plain device.
    let dev = Device::flex();
    let dims = spec.dims()?;
    let reps = 5;
    let (mut sf, mut sx, mut sw) = (0.0, 0.0, 0.0);
    let mut ours = [0.0f64; 3];
    for (layer, din) in spec.layers.iter().zip(&dims) {
        let Layer::Conv {
            name,
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
        } = layer
        else {
            continue;
        };
        let opt = ConvOptions::new([*stride; 2], [*padding; 2], [1, 1], 1);
        let x = Tensor::<4>::random([b, *in_ch, din.h, din.w], Distribution::Default, &dev);
        let w = Tensor::<4>::random(
            [*out_ch, *in_ch, *kernel, *kernel],
            Distribution::Default,
            &dev,
        );
        let bias = Tensor::<1>::zeros([*out_ch], &dev);
        let y = conv2d(x.clone(), w.clone(), Some(bias.clone()), opt.clone());
        let [_, _, ho, wo] = y.dims();
        let g = Tensor::<4>::random(y.dims(), Distribution::Default, &dev);
        let time = |f: &dyn Fn()| {
            f();
            median(
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let t_f = time(&|| {
            sync(&conv2d(
                x.clone(),
                w.clone(),
                Some(bias.clone()),
                opt.clone(),
            ))
        });
        let pad_out = |inp: usize, out: usize| {
            // As Burn's default conv2d_x_backward computes it.
            let used = (out - 1) * stride + kernel;
            (inp + 2 * padding).saturating_sub(used)
        };
        let topt = ConvTransposeOptions::new(
            [*stride; 2],
            [*padding; 2],
            [pad_out(din.h, ho), pad_out(din.w, wo)],
            [1, 1],
            1,
        );
        let t_x = time(&|| sync(&conv_transpose2d(g.clone(), w.clone(), None, topt.clone())));
        let t_w = time(&|| {
            sync(&conv2d_weight_backward(
                x.clone(),
                w.clone(),
                g.clone(),
                opt.clone(),
            ))
        });
        let macs = (b * out_ch * ho * wo * in_ch * kernel * kernel) as f64;
        // The same three products with relushare_nn::conv's kernels.
        let geo = conv::Geometry::new(&x.dims(), &w.dims(), *stride, *padding).unwrap();
        let (xv, wv, gv) = (host(&x), host(&w), host(&g));
        let bv = vec![0f32; *out_ch];
        let o_f = time(&|| drop(conv::forward(&geo, &xv, &wv, &bv)));
        let o_x = time(&|| drop(conv::input_grad(&geo, &wv, &gv)));
        let o_w = time(&|| drop(conv::weight_bias_grad(&geo, &xv, &gv)));
        ours[0] += o_f;
        ours[1] += o_x;
        ours[2] += o_w;
        println!(
            "  {name:<6} {in_ch:>3}->{out_ch:<3} k{kernel} {}x{}: forward {:6.1} ms ({:5.1} GFLOP/s), x-grad {:6.1} ms ({:5.1}), w-grad {:6.1} ms ({:5.1})",
            din.h,
            din.w,
            t_f * 1e3,
            2.0 * macs / t_f / 1e9,
            t_x * 1e3,
            2.0 * macs / t_x / 1e9,
            t_w * 1e3,
            2.0 * macs / t_w / 1e9
        );
        println!(
            "  {:<6} relushare_nn::conv:  forward {:6.1} ms ({:5.1} GFLOP/s), x-grad {:6.1} ms ({:5.1}), w-grad {:6.1} ms ({:5.1})",
            "",
            o_f * 1e3,
            2.0 * macs / o_f / 1e9,
            o_x * 1e3,
            2.0 * macs / o_x / 1e9,
            o_w * 1e3,
            2.0 * macs / o_w / 1e9
        );
        sf += t_f;
        sx += t_x;
        sw += t_w;
    }
    println!(
        "  convolutions: forward {:.1} ms, x-grad {:.1} ms, w-grad {:.1} ms, total {:.1} ms",
        sf * 1e3,
        sx * 1e3,
        sw * 1e3,
        (sf + sx + sw) * 1e3
    );
    println!(
        "  relushare_nn::conv: forward {:.1} ms, x-grad {:.1} ms, w-grad {:.1} ms, total {:.1} ms",
        ours[0] * 1e3,
        ours[1] * 1e3,
        ours[2] * 1e3,
        ours.iter().sum::<f64>() * 1e3
    );
    Ok(())
}
