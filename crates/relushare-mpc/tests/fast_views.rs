//! Privacy check of the `fast` and `fss` suites: every message a party receives (openings,
//! comparison-tree openings, dealer material) has the same byte distribution for two different
//! secrets (two-sample chi-square per received message and byte offset mod 8).

use relushare_mpc::cost::{Comm, Phase};
use relushare_mpc::fast::{CmpMode, FastConfig, FastSuite};
use relushare_mpc::suite::{DeciderKind, GroupPlan, Plan, PlanOp, Suite};
use relushare_mpc::transport::MemTransport;
use std::sync::{Arc, Mutex};

mod common;
use common::{max_z, shares_of, Log, Recording, Z_LIMIT};

/// Views of the three parties: prepare + offline + `op` online (seed messages dropped).
fn views(
    mode: CmpMode,
    plan: Plan,
    op: impl Fn(&mut FastSuite, usize) + Sync,
) -> Vec<Vec<Vec<u8>>> {
    let ts = MemTransport::trio();
    let logs: Vec<Log> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    std::thread::scope(|s| {
        for (p, t) in ts.into_iter().enumerate() {
            let log = logs[p].clone();
            let op = &op;
            let plan = plan.clone();
            s.spawn(move || {
                let rec = Recording {
                    inner: t,
                    log: log.clone(),
                };
                let mut cfg = FastConfig::defaults(13);
                cfg.bits.insert("act".into(), 25);
                let mut sn = FastSuite::new(Comm::new(Box::new(rec)), 13, cfg, mode);
                sn.comm().set_phase(Phase::Offline);
                sn.prepare(&plan, &[]).unwrap();
                log.lock().unwrap().clear(); // drop the seed messages
                sn.offline(&plan, &[]).unwrap();
                sn.comm().set_phase(Phase::Online);
                op(&mut sn, p);
            });
        }
    });
    logs.iter().map(|l| l.lock().unwrap().clone()).collect()
}

#[test]
fn relu_views_do_not_depend_on_the_secret() {
    let n = 65536;
    for mode in [CmpMode::Tree, CmpMode::Fss] {
        let plan = Plan {
            n: 1,
            input_len: n,
            output_len: n,
            ops: vec![PlanOp::Relu {
                name: "act".into(),
                len: n,
            }],
        };
        let run = |secret: i64| {
            let sh = shares_of(&vec![secret as u64; n]);
            views(mode, plan.clone(), move |s, p| {
                s.relu(&sh[p], n).unwrap();
            })
        };
        // 0 vs -1 ulp (opposite decisions at the edge), then +5.0 vs -3.0.
        for (a, b) in [(0i64, -1i64), (5 << 13, -3 << 13)] {
            let (va, vb) = (run(a), run(b));
            let (z, at, tested) = max_z(&va, &vb);
            assert!(
                tested >= 3,
                "{mode:?}: only {tested} messages large enough to test"
            );
            assert!(
                z < Z_LIMIT,
                "{mode:?} secrets {a} vs {b}: view differs at {at} (z = {z:.1})"
            );
        }
    }
}

#[test]
fn shared_relu_views_do_not_depend_on_the_secret() {
    // 16 channels of 64x64, one group per 8x8 patch, learned decider with v = 1.
    let (c, h, w) = (16usize, 64usize, 64usize);
    let len = c * h * w;
    let group_of: Vec<u32> = (0..len)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            (ch * 64 + (y / 8) * 8 + x / 8) as u32
        })
        .collect();
    let leaders: Vec<u32> = (0..c * 64)
        .map(|g| {
            let (ch, py, px) = (g / 64, (g % 64) / 8, g % 8);
            (ch * h * w + (py * 8 + 4) * w + px * 8 + 4) as u32
        })
        .collect();
    let vsh = shares_of(&vec![1u64 << 13; len]);
    let run = |secret: i64| {
        let sh = shares_of(&vec![secret as u64; len]);
        let vsh = vsh.clone();
        let group_of = group_of.clone();
        let leaders = leaders.clone();
        let mk = move |p: usize| GroupPlan {
            len,
            group_of: group_of.clone(),
            num_groups: c * 64,
            leaders: leaders.clone(),
            decider: DeciderKind::Learned,
            v: vsh[p].clone(),
            bias: Vec::new(),
            noise: 0.0,
            fused: None,
        };
        let plan = Plan {
            n: 1,
            input_len: len,
            output_len: len,
            ops: vec![],
        };
        let ts = MemTransport::trio();
        let logs: Vec<Log> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        std::thread::scope(|s| {
            for (p, t) in ts.into_iter().enumerate() {
                let log = logs[p].clone();
                let gp = mk(p);
                let x = sh[p].clone();
                let mut plan = plan.clone();
                plan.ops = vec![PlanOp::SharedRelu {
                    name: "act".into(),
                    plan: Box::new(gp.clone()),
                }];
                s.spawn(move || {
                    let rec = Recording {
                        inner: t,
                        log: log.clone(),
                    };
                    let mut cfg = FastConfig::defaults(13);
                    cfg.bits.insert("act".into(), 41);
                    let mut sn = FastSuite::new(Comm::new(Box::new(rec)), 13, cfg, CmpMode::Tree);
                    sn.comm().set_phase(Phase::Offline);
                    sn.prepare(&plan, &[]).unwrap();
                    log.lock().unwrap().clear();
                    sn.offline(&plan, &[]).unwrap();
                    sn.comm().set_phase(Phase::Online);
                    sn.shared_relu(&x, 1, &gp).unwrap();
                });
            }
        });
        logs.iter()
            .map(|l| l.lock().unwrap().clone())
            .collect::<Vec<_>>()
    };
    let (va, vb) = (run(2 << 13), run(-2 << 13));
    let (z, at, tested) = max_z(&va, &vb);
    assert!(tested >= 2, "only {tested} messages large enough to test");
    assert!(z < Z_LIMIT, "view differs at {at} (z = {z:.1})");
}

/// Views of a fused whole-channel block (convolution + gate [+ pooling], see `fast::gate`) for
/// two different images: Fold mode (CIFAR-10 `uniform32`'s first block) and Pool mode
/// (Fashion-MNIST `uniform32`'s first block).
#[test]
fn fused_gate_views_do_not_depend_on_the_secret() {
    use relushare_model::{presets, Arch, Model};
    use relushare_mpc::plain::FixedModel;
    use relushare_mpc::runner::{build_plan, exec_op, share_vec};
    use relushare_mpc::suite::{GroupShares, WeightShare};
    for (arch, layers) in [(Arch::Cifar10, 2usize), (Arch::Fmnist, 3)] {
        let m = Model::random(presets::build(arch, "uniform32").unwrap(), None, 3).unwrap();
        let mut fm = FixedModel::from_model(&m, 13).unwrap();
        relushare_mpc::fast::gate::fuse(&mut fm).unwrap();
        fm.layers.truncate(layers);
        fm.out_lens.truncate(layers);
        fm.output_len = fm.out_lens[layers - 1];
        let cfg = relushare_mpc::fast::config_for_model(&fm, &m).unwrap();
        // One sharing of the weights for both runs.
        let mut prg = relushare_mpc::prg::Prg::from_os().unwrap();
        let mut weights: Vec<Vec<WeightShare>> = vec![Vec::new(); 3];
        let mut gp: Vec<Vec<Option<GroupShares>>> = vec![Vec::new(); 3];
        for l in &fm.layers {
            let mut g = [None, None, None];
            match l {
                relushare_mpc::plain::FixedLayer::Conv { name, w, b, .. } => {
                    let (w0, w1) = share_vec(&mut prg, w);
                    let (b0, b1) = share_vec(&mut prg, b);
                    for (p, (w, b)) in [(w0, b0), (w1, b1), (vec![], vec![])]
                        .into_iter()
                        .enumerate()
                    {
                        weights[p].push(WeightShare {
                            name: name.clone(),
                            w,
                            bias: b,
                        });
                    }
                }
                relushare_mpc::plain::FixedLayer::Shared { s, .. } => {
                    let fg = s.fused.as_ref().unwrap();
                    let (u0, u1) = share_vec(&mut prg, &fg.u);
                    let (c0, c1) = share_vec(&mut prg, &fg.beta);
                    g = [
                        Some(GroupShares {
                            u: u0,
                            beta: c0,
                            ..Default::default()
                        }),
                        Some(GroupShares {
                            u: u1,
                            beta: c1,
                            ..Default::default()
                        }),
                        Some(GroupShares::default()),
                    ];
                }
                _ => {}
            }
            for (p, gi) in g.into_iter().enumerate() {
                gp[p].push(gi);
            }
        }
        let run = |secret: f32| {
            let img = fm.encode_input(&vec![secret; fm.input_len]).unwrap();
            let (x0, x1) = share_vec(&mut relushare_mpc::prg::Prg::from_os().unwrap(), &img);
            let xs = [x0, x1, Vec::new()];
            let ts = MemTransport::trio();
            let logs: Vec<Log> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
            std::thread::scope(|s| {
                for (p, t) in ts.into_iter().enumerate() {
                    let log = logs[p].clone();
                    let (plan, ws, x) = (build_plan(&fm, 1, &gp[p]), &weights[p], xs[p].clone());
                    let cfg = cfg.clone();
                    s.spawn(move || {
                        let rec = Recording {
                            inner: t,
                            log: log.clone(),
                        };
                        let mut sn =
                            FastSuite::new(Comm::new(Box::new(rec)), 13, cfg, CmpMode::Tree);
                        sn.comm().set_phase(Phase::Offline);
                        sn.prepare(&plan, ws).unwrap();
                        log.lock().unwrap().clear(); // seeds and the weight opening
                        sn.offline(&plan, ws).unwrap();
                        sn.comm().set_phase(Phase::Online);
                        let mut x = x;
                        for op in &plan.ops {
                            x = exec_op(&mut sn, op, &x, 1, ws).unwrap();
                        }
                    });
                }
            });
            logs.iter()
                .map(|l| l.lock().unwrap().clone())
                .collect::<Vec<_>>()
        };
        let (va, vb) = (run(1.5), run(-1.5));
        let (z, at, tested) = max_z(&va, &vb);
        assert!(
            tested >= 2,
            "{arch}: only {tested} messages large enough to test"
        );
        assert!(z < Z_LIMIT, "{arch}: view differs at {at} (z = {z:.1})");
    }
}
