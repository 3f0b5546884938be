//! The runner: executes a [`FixedModel`] layer by layer on any [`Suite`], with the three parties
//! on threads over the in-memory transport, and produces per-layer cost reports.
//!
//! The client (image owner) and the model owner are simulated by the runner: it splits the
//! encoded image and weights into two additive shares with an OS-seeded PRG and hands them to P0
//! and P1 (P2 gets nothing); at the end P0 and P1 send their output shares to the client, which
//! adds them (their bytes are reported as [`CostReport::client_bytes`]). The three party
//! threads receive only the model's public structure ([`FixedModel::skeleton`]) besides their
//! shares, never the plaintext parameters, as in the networked path. Sequence per session: suite construction (label "setup"), [`Suite::prepare`]
//! (label "model-setup", offline), then for every batch: [`Suite::offline`] (phase offline) and
//! the layers online, each under its layer name. Setup costs are reported once per session; the
//! batch reports hold only offline + online costs of that batch.

use crate::cost::{Comm, CostReport, Phase};
use crate::error::{MpcError, Result};
use crate::fixed::FixedPoint;
use crate::kernels::ConvGeom;
use crate::plain::{FixedLayer, FixedModel};
use crate::prg::Prg;
use crate::suite::{
    FusedPlan, GroupPlan, GroupShares, LinearGeom, MaxPoolGeom, Plan, PlanOp, PoolGeom, Shared,
    Suite, WeightShare,
};
use crate::transport::{MemTransport, Transport};
use std::time::{Duration, Instant};

/// Builds one party's suite from its metered connection (may communicate, e.g. to agree on
/// seeds; that traffic is counted under "setup").
pub type SuiteFactory<'a> = dyn Fn(Comm, FixedPoint) -> Result<Box<dyn Suite>> + Sync + 'a;

/// Options of a run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Reveal every layer's output (to check secure == plaintext layer by layer; testing only).
    pub trace: bool,
    /// Receive timeout of the in-memory transport.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            trace: false,
            timeout: crate::transport::DEFAULT_TIMEOUT,
        }
    }
}

/// Result of one batch.
#[derive(Clone, Debug)]
pub struct BatchResult {
    /// Encoded output (logits, f bits) of each image of the batch.
    pub outputs: Vec<Vec<u64>>,
    /// Offline + online costs of this batch, per layer (seconds = online time, max over parties).
    pub report: CostReport,
    /// Wall-clock seconds of the offline phase (max over parties).
    pub offline_seconds: f64,
    /// Wall-clock seconds of the online phase (max over parties).
    pub online_seconds: f64,
    /// With [`RunOptions::trace`]: the revealed input followed by each layer's output (whole batch).
    pub trace: Option<Vec<Vec<u64>>>,
}

/// Result of a session (one model, several batches).
#[derive(Clone, Debug)]
pub struct SessionResult {
    /// One-time costs: seed agreement and model preparation.
    pub setup: CostReport,
    /// Seconds spent in setup (max over parties).
    pub setup_seconds: f64,
    /// Per batch.
    pub batches: Vec<BatchResult>,
}

/// Additive sharing of a vector: returns (share0, share1).
pub fn share_vec(prg: &mut Prg, v: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let s0 = prg.gen_u64s(v.len());
    let s1 = crate::ring::sub(v, &s0);
    (s0, s1)
}

/// What one party receives from the data owners.
struct PartyInput {
    weights: Vec<WeightShare>,
    /// Per layer index: the sharing layers' parameter shares.
    group_params: Vec<Option<GroupShares>>,
    /// Per batch: the input shares (empty for P2).
    inputs: Vec<Shared>,
}

fn party_inputs(fm: &FixedModel, batches: &[Vec<Vec<u64>>]) -> Result<[PartyInput; 3]> {
    let mut prg = Prg::from_os()?;
    let mut out: [PartyInput; 3] = std::array::from_fn(|_| PartyInput {
        weights: Vec::new(),
        group_params: Vec::new(),
        inputs: Vec::new(),
    });
    for l in &fm.layers {
        match l {
            FixedLayer::Conv { name, w, b, .. } | FixedLayer::Linear { name, w, b, .. } => {
                let (w0, w1) = share_vec(&mut prg, w);
                let (b0, b1) = share_vec(&mut prg, b);
                out[0].weights.push(WeightShare {
                    name: name.clone(),
                    w: w0,
                    bias: b0,
                });
                out[1].weights.push(WeightShare {
                    name: name.clone(),
                    w: w1,
                    bias: b1,
                });
                out[2].weights.push(WeightShare {
                    name: name.clone(),
                    w: Vec::new(),
                    bias: Vec::new(),
                });
            }
            _ => {}
        }
        if let FixedLayer::Shared { s, .. } = l {
            let (v0, v1) = share_vec(&mut prg, &s.v);
            let (b0, b1) = share_vec(&mut prg, &s.bias);
            let (empty, empty2) = (Vec::new(), Vec::new());
            let (u, beta) = match &s.fused {
                Some(fg) => (&fg.u, &fg.beta),
                None => (&empty, &empty2),
            };
            let (u0, u1) = share_vec(&mut prg, u);
            let (c0, c1) = share_vec(&mut prg, beta);
            out[0].group_params.push(Some(GroupShares {
                v: v0,
                bias: b0,
                u: u0,
                beta: c0,
            }));
            out[1].group_params.push(Some(GroupShares {
                v: v1,
                bias: b1,
                u: u1,
                beta: c1,
            }));
            out[2].group_params.push(Some(GroupShares::default()));
        } else {
            for p in out.iter_mut() {
                p.group_params.push(None);
            }
        }
    }
    for batch in batches {
        let mut flat = Vec::with_capacity(batch.len() * fm.input_len);
        for img in batch {
            crate::ring::check_len("encoded image", img, fm.input_len)?;
            flat.extend_from_slice(img);
        }
        let (x0, x1) = share_vec(&mut prg, &flat);
        out[0].inputs.push(x0);
        out[1].inputs.push(x1);
        out[2].inputs.push(Vec::new());
    }
    Ok(out)
}

/// The plan of `fm` for batch size `n`, with one party's shares of the sharing-layer parameters
/// (`gp[i]` for layer `i`). Used by the in-process runner and the networked session.
pub fn build_plan(fm: &FixedModel, n: usize, gp: &[Option<GroupShares>]) -> Plan {
    let mut ops = Vec::new();
    let mut widx = 0;
    for (i, l) in fm.layers.iter().enumerate() {
        let op = match l {
            FixedLayer::Conv { name, geom, .. } => {
                widx += 1;
                PlanOp::Conv {
                    name: name.clone(),
                    geom: ConvGeom { n, ..*geom },
                    weight: widx - 1,
                }
            }
            FixedLayer::Linear { name, geom, .. } => {
                widx += 1;
                PlanOp::Linear {
                    name: name.clone(),
                    geom: LinearGeom { n, ..*geom },
                    weight: widx - 1,
                }
            }
            FixedLayer::AvgPool { name, geom } => PlanOp::AvgPool {
                name: name.clone(),
                geom: PoolGeom { n, ..*geom },
            },
            FixedLayer::Relu { name, len } => PlanOp::Relu {
                name: name.clone(),
                len: *len,
            },
            FixedLayer::Partial {
                name,
                c,
                plane,
                relu_channels,
            } => PlanOp::Partial {
                name: name.clone(),
                c: *c,
                plane: *plane,
                relu_channels: *relu_channels,
            },
            FixedLayer::Shared { name, s } => {
                let GroupShares { v, bias, u, beta } = gp[i].clone().unwrap_or_default();
                let fused = s.fused.as_ref().map(|fg| FusedPlan {
                    mode: fg.mode,
                    u,
                    beta,
                    in_len: fg.in_len,
                    sparse: fg.sparse.clone(),
                });
                PlanOp::SharedRelu {
                    name: name.clone(),
                    plan: Box::new(GroupPlan {
                        len: s.len,
                        group_of: s.group_of.clone(),
                        num_groups: s.num_groups,
                        leaders: s.leaders.clone(),
                        decider: s.decider,
                        v,
                        bias,
                        noise: s.noise,
                        fused,
                    }),
                }
            }
            FixedLayer::Identity { name } => PlanOp::Identity { name: name.clone() },
            FixedLayer::Add { name, len } => PlanOp::Add {
                name: name.clone(),
                len: *len,
            },
            FixedLayer::MaxPool { name, geom } => PlanOp::MaxPool {
                name: name.clone(),
                geom: MaxPoolGeom { n, ..*geom },
            },
        };
        ops.push(op);
    }
    Plan {
        n,
        input_len: fm.input_len,
        output_len: fm.output_len,
        ops,
        srcs: fm.srcs.clone(),
    }
}

/// Run the online steps of `plan` on this party's input shares (P2: empty), routing tensors
/// along the plan's graph edges and dropping each once its last reader has run. Sets each
/// step's label; checks each output's length (`out_lens`: elements per image after each
/// step) and calls `each(step, output, seconds)` after every step. Returns the last output.
pub fn exec_plan(
    suite: &mut dyn Suite,
    plan: &Plan,
    input: Shared,
    weights: &[WeightShare],
    out_lens: &[usize],
    mut each: impl FnMut(usize, &Shared, f64),
) -> Result<Shared> {
    let me = suite.party();
    let n = plan.n;
    let srcs = plan.edges();
    if srcs.len() != plan.ops.len() || out_lens.len() != plan.ops.len() {
        return Err(MpcError::Model(format!(
            "plan of {} steps with {} edge lists and {} output sizes",
            plan.ops.len(),
            srcs.len(),
            out_lens.len()
        )));
    }
    // Last reader of every tensor (the output is kept).
    let mut last = vec![usize::MAX; plan.ops.len() + 1];
    for (i, s) in srcs.iter().enumerate() {
        for &t in s {
            if t > i {
                return Err(MpcError::Model(format!(
                    "step {i} reads tensor {t}, produced later"
                )));
            }
            last[t] = i;
        }
    }
    let mut vals: Vec<Option<Shared>> = vec![None; plan.ops.len() + 1];
    vals[0] = Some(input);
    for (i, op) in plan.ops.iter().enumerate() {
        let t = Instant::now();
        suite.comm().set_label(op.name());
        // An input read for the last time is moved out, any other is copied.
        let mut take = |k: usize| -> Result<Shared> {
            let v = if last[k] == i && srcs[i].iter().filter(|&&t| t == k).count() == 1 {
                vals[k].take()
            } else {
                vals[k].clone()
            };
            v.ok_or_else(|| MpcError::Model(format!("{}: tensor {k} already dropped", op.name())))
        };
        let y = match (op, srcs[i].as_slice()) {
            (PlanOp::Add { .. }, [a, b]) => {
                let (a, b) = (take(*a)?, take(*b)?);
                suite.add(&a, &b)?
            }
            (PlanOp::Add { name, .. }, _) => {
                return Err(MpcError::Model(format!("{name}: an add needs two inputs")))
            }
            (_, [a]) => {
                let x = take(*a)?;
                exec_op(suite, op, &x, n, weights)?
            }
            _ => {
                return Err(MpcError::Model(format!(
                    "{}: one input expected",
                    op.name()
                )))
            }
        };
        if me != 2 && y.len() != n * out_lens[i] {
            return Err(MpcError::Shape(format!(
                "{}: suite {} returned {} elements, expected {}",
                op.name(),
                suite.name(),
                y.len(),
                n * out_lens[i]
            )));
        }
        each(i, &y, t.elapsed().as_secs_f64());
        for &k in &srcs[i] {
            if last[k] == i {
                vals[k] = None;
            }
        }
        vals[i + 1] = Some(y);
    }
    vals.pop()
        .flatten()
        .ok_or_else(|| MpcError::Model("empty plan".into()))
}

/// Execute one plan step on one party.
pub fn exec_op(
    suite: &mut dyn Suite,
    op: &PlanOp,
    x: &Shared,
    n: usize,
    weights: &[WeightShare],
) -> Result<Shared> {
    match op {
        PlanOp::Conv { geom, weight, .. } => suite.conv2d(x, &weights[*weight], geom),
        PlanOp::Linear { geom, weight, .. } => suite.linear(x, &weights[*weight], geom),
        PlanOp::AvgPool { geom, .. } => suite.avg_pool(x, geom),
        PlanOp::Relu { len, .. } => suite.relu(x, n * len),
        PlanOp::Partial {
            c,
            plane,
            relu_channels,
            ..
        } => suite.partial_relu(x, n, *c, *plane, *relu_channels),
        PlanOp::SharedRelu { plan, .. } => suite.shared_relu(x, n, plan),
        PlanOp::Identity { .. } => Ok(x.clone()),
        PlanOp::MaxPool { geom, .. } => suite.max_pool(x, geom),
        PlanOp::Add { name, .. } => Err(MpcError::Model(format!(
            "{name}: an add reads two tensors (run plans with exec_plan)"
        ))),
    }
}

struct PartyOutput {
    setup: crate::cost::PartyCosts,
    setup_seconds: f64,
    batches: Vec<PartyBatch>,
}

struct PartyBatch {
    costs: crate::cost::PartyCosts,
    client_bytes: u64,
    layer_seconds: Vec<f64>,
    offline_seconds: f64,
    online_seconds: f64,
    output: Option<Vec<u64>>,
    trace: Vec<Shared>,
    /// Stream runs only: when this party dealt and evaluated the batch.
    times: crate::pipeline::BatchTimes,
}

/// One party's thread. `fm` is the model's [`FixedModel::skeleton`]: a party never sees the
/// plaintext parameters, only its shares in `input`.
fn run_party(
    t: Box<dyn Transport>,
    fm: &FixedModel,
    factory: &SuiteFactory<'_>,
    input: PartyInput,
    batch_sizes: &[usize],
    opts: &RunOptions,
) -> Result<PartyOutput> {
    if !fm.is_skeleton() {
        return Err(MpcError::Param(
            "internal: a party was handed the model's parameters".into(),
        ));
    }
    let t0 = Instant::now();
    let mut comm = Comm::new(t);
    comm.set_label("setup");
    let mut suite = factory(comm, fm.fp)?;
    let first_plan = build_plan(
        fm,
        batch_sizes.first().copied().unwrap_or(1),
        &input.group_params,
    );
    suite.comm().set_phase(Phase::Offline);
    suite.comm().set_label("model-setup");
    suite.prepare(&first_plan, &input.weights)?;
    let setup = suite.comm().take_costs();
    let setup_seconds = t0.elapsed().as_secs_f64();
    let mut batches = Vec::new();
    for (bi, &n) in batch_sizes.iter().enumerate() {
        // The plan holds the shares of fused gates' `U` (megabytes): borrow, do not copy.
        let other;
        let plan = if n == first_plan.n {
            &first_plan
        } else {
            other = build_plan(fm, n, &input.group_params);
            &other
        };
        let t1 = Instant::now();
        suite.comm().set_phase(Phase::Offline);
        suite.comm().set_label("offline");
        suite.offline(plan, &input.weights)?;
        let offline_seconds = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let mut trace = Vec::new();
        let (output, layer_seconds) = crate::pipeline::online_batch(
            suite.as_mut(),
            plan,
            input.inputs[bi].clone(),
            &input.weights,
            &fm.out_lens,
            opts.trace.then_some(&mut trace),
        )?;
        let online_seconds = t2.elapsed().as_secs_f64();
        let client_bytes = suite.comm().take_client_bytes();
        batches.push(PartyBatch {
            costs: suite.comm().take_costs(),
            client_bytes,
            layer_seconds,
            offline_seconds,
            online_seconds,
            output,
            trace,
            times: Default::default(),
        });
    }
    Ok(PartyOutput {
        setup,
        setup_seconds,
        batches,
    })
}

/// Run a session: three parties on threads, the in-memory transport, one suite per party from
/// `factory`, and the given batches of encoded images (`batches[b][i]` = image i of batch b).
pub fn run_session(
    fm: &FixedModel,
    batches: &[Vec<Vec<u64>>],
    factory: &SuiteFactory<'_>,
    opts: &RunOptions,
) -> Result<SessionResult> {
    if batches.iter().any(|b| b.is_empty()) {
        return Err(MpcError::Param("empty batch".into()));
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
    // The simulated model owner and client share the parameters and images; the three
    // parties get only the model's structure (least privilege, as in the networked path).
    let inputs = party_inputs(fm, batches)?;
    let skeleton = fm.skeleton();
    let transports = MemTransport::trio_with_timeout(opts.timeout);
    let results: Vec<Result<PartyOutput>> = std::thread::scope(|s| {
        let handles: Vec<_> = transports
            .into_iter()
            .zip(inputs)
            .map(|(t, inp)| {
                let sizes = &sizes;
                let skeleton = &skeleton;
                s.spawn(move || run_party(Box::new(t), skeleton, factory, inp, sizes, opts))
            })
            .collect();
        join_parties(handles)
    });
    let outs = root_cause(results)?;
    let names: Vec<String> = fm.layers.iter().map(|l| l.name().to_string()).collect();
    let setup = CostReport::from_parties(
        &outs.iter().map(|o| o.setup.clone()).collect::<Vec<_>>(),
        &[],
    );
    let setup_seconds = outs.iter().map(|o| o.setup_seconds).fold(0.0, f64::max);
    let mut res = Vec::new();
    for (bi, &n) in sizes.iter().enumerate() {
        let pb: Vec<&PartyBatch> = outs.iter().map(|o| &o.batches[bi]).collect();
        res.push(merge_batch(fm, &names, n, &pb, opts.trace)?);
    }
    Ok(SessionResult {
        setup,
        setup_seconds,
        batches: res,
    })
}

/// The three parties' results, or the root cause of their failure: a party's own error rather
/// than the others' "disconnected" or "cancelled".
fn root_cause<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    if results.iter().any(|r| r.is_err()) {
        let mut errs: Vec<(usize, MpcError)> = results
            .into_iter()
            .enumerate()
            .filter_map(|(p, r)| r.err().map(|e| (p, e)))
            .collect();
        let pos = errs
            .iter()
            .position(|(_, e)| !matches!(e, MpcError::Disconnected(_) | MpcError::Cancelled(_)))
            .unwrap_or(0);
        let (p, e) = errs.swap_remove(pos);
        return Err(match e {
            e @ MpcError::PartyFailed { .. } => e,
            e => MpcError::PartyFailed {
                party: p,
                reason: e.to_string(),
            },
        });
    }
    Ok(results.into_iter().map(|r| r.expect("checked")).collect())
}

/// One batch's result from the three parties' records of it.
fn merge_batch(
    fm: &FixedModel,
    names: &[String],
    n: usize,
    pb: &[&PartyBatch],
    trace: bool,
) -> Result<BatchResult> {
    let mut order = vec!["offline".to_string()];
    order.extend(names.iter().cloned());
    order.push("output".to_string());
    let costs: Vec<_> = pb.iter().map(|b| b.costs.clone()).collect();
    let mut report = CostReport::from_parties(&costs, &order);
    report.client_bytes = pb.iter().map(|b| b.client_bytes).sum();
    report
        .layers
        .retain(|l| l.label != "output" || l.online_bytes + l.offline_bytes > 0);
    report
        .layers
        .retain(|l| l.label != "offline" || l.online_bytes + l.offline_bytes > 0);
    for (li, name) in names.iter().enumerate() {
        let secs = pb
            .iter()
            .map(|b| b.layer_seconds.get(li).copied().unwrap_or(0.0))
            .fold(0.0, f64::max);
        if let Some(lc) = report.layers.iter_mut().find(|l| &l.label == name) {
            lc.seconds = secs;
        }
    }
    let (o0, o1) = (
        pb[0]
            .output
            .as_ref()
            .ok_or_else(|| MpcError::Shape("P0 gave no output".into()))?,
        pb[1]
            .output
            .as_ref()
            .ok_or_else(|| MpcError::Shape("P1 gave no output".into()))?,
    );
    let y = crate::ring::add(o0, o1);
    let outputs = y
        .chunks(fm.output_len.max(1))
        .take(n)
        .map(|c| c.to_vec())
        .collect();
    let trace = if trace {
        Some(
            pb[0]
                .trace
                .iter()
                .zip(&pb[1].trace)
                .map(|(a, b)| crate::ring::add(a, b))
                .collect(),
        )
    } else {
        None
    };
    Ok(BatchResult {
        outputs,
        report,
        offline_seconds: pb.iter().map(|b| b.offline_seconds).fold(0.0, f64::max),
        online_seconds: pb.iter().map(|b| b.online_seconds).fold(0.0, f64::max),
        trace,
    })
}

/// Result of a pipelined stream ([`run_stream`]).
#[derive(Clone, Debug)]
pub struct StreamResult {
    /// One-time costs: seed agreement and model preparation.
    pub setup: CostReport,
    /// Seconds spent in setup (max over parties).
    pub setup_seconds: f64,
    /// Per batch (offline seconds: the party's dealing or receiving span, which overlaps
    /// earlier batches' online phases).
    pub batches: Vec<BatchResult>,
    /// Per batch, per party: when it dealt and evaluated it (seconds since the stream started).
    pub times: Vec<[crate::pipeline::BatchTimes; 3]>,
    /// Throughput and latency.
    pub timing: crate::pipeline::StreamTiming,
}

/// One party's side of [`run_stream`].
#[allow(clippy::too_many_arguments)]
fn stream_party(
    lanes: Vec<MemTransport>,
    fm: &FixedModel,
    factory: &SuiteFactory<'_>,
    input: PartyInput,
    sizes: &[usize],
    depth: usize,
    opts: &RunOptions,
    cancel: crate::transport::CancelToken,
    clock: &(dyn Fn() -> f64 + Sync),
    pace: Duration,
) -> Result<PartyOutput> {
    if !fm.is_skeleton() {
        return Err(MpcError::Param(
            "internal: a party was handed the model's parameters".into(),
        ));
    }
    let [online, offline, control, _output]: [MemTransport; crate::pipeline::LANES] = lanes
        .try_into()
        .map_err(|_| MpcError::Param("internal: wrong number of lanes".into()))?;
    let t0 = Instant::now();
    let mut comm = Comm::new(Box::new(online));
    comm.set_label("setup");
    let mut suite = factory(comm, fm.fp)?;
    // One plan per distinct batch size (plans hold shares of fused gates' `U`: megabytes).
    let mut plans: Vec<Plan> = Vec::new();
    for &n in sizes {
        if !plans.iter().any(|p| p.n == n) {
            plans.push(build_plan(fm, n, &input.group_params));
        }
    }
    let first = plans
        .first()
        .ok_or_else(|| MpcError::Param("a stream of no batches".into()))?;
    suite.comm().set_phase(Phase::Offline);
    suite.comm().set_label("model-setup");
    suite.prepare(first, &input.weights)?;
    let setup = suite.comm().take_costs();
    let setup_seconds = t0.elapsed().as_secs_f64();
    let by_batch: Vec<&Plan> = sizes
        .iter()
        .map(|&n| plans.iter().find(|p| p.n == n).expect("built above"))
        .collect();
    let party = crate::pipeline::StreamParty {
        suite: suite.as_mut(),
        offline: Comm::new(Box::new(offline)),
        control: Box::new(control),
        depth,
        timeout: opts.timeout,
        cancel,
        clock,
    };
    let (got, _) = crate::pipeline::run_party(
        party,
        &by_batch,
        &input.weights,
        input.inputs,
        &fm.out_lens,
        &mut |_, b| {
            if b.output.is_some() && !pace.is_zero() {
                std::thread::sleep(pace);
            }
            Ok(())
        },
    )?;
    Ok(PartyOutput {
        setup,
        setup_seconds,
        batches: got
            .into_iter()
            .map(|b| PartyBatch {
                costs: b.costs,
                client_bytes: b.client_bytes,
                layer_seconds: b.layer_seconds,
                offline_seconds: b.times.offline_end - b.times.offline_start,
                online_seconds: b.times.online_end - b.times.online_start,
                output: b.output,
                trace: Vec::new(),
                times: b.times,
            })
            .collect(),
    })
}

/// Runs a **stream** of batches with the offline work pipelined away ([`crate::pipeline`]):
/// three parties on threads over in-memory lanes, the dealer producing the material of the next
/// batches (at most `depth` ahead) while the current one is online. Costs per batch equal those
/// of [`run_session`]; the outputs are the same function of the inputs.
pub fn run_stream(
    fm: &FixedModel,
    batches: &[Vec<Vec<u64>>],
    factory: &SuiteFactory<'_>,
    opts: &RunOptions,
    depth: usize,
) -> Result<StreamResult> {
    run_stream_paced(fm, batches, factory, opts, depth, Duration::ZERO)
}

/// [`run_stream`] in which P0 and P1 spend `pace` more after each batch's online steps (tests:
/// a slow evaluator, so that a dealer without credits would run ahead).
pub(crate) fn run_stream_paced(
    fm: &FixedModel,
    batches: &[Vec<Vec<u64>>],
    factory: &SuiteFactory<'_>,
    opts: &RunOptions,
    depth: usize,
    pace: Duration,
) -> Result<StreamResult> {
    crate::pipeline::check_depth(depth)?;
    if batches.is_empty() || batches.iter().any(|b| b.is_empty()) {
        return Err(MpcError::Param("a stream needs non-empty batches".into()));
    }
    if opts.trace {
        return Err(MpcError::Param(
            "layer traces are not available for streams (use run_session)".into(),
        ));
    }
    let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
    let inputs = party_inputs(fm, batches)?;
    let skeleton = fm.skeleton();
    let cancel = crate::transport::CancelToken::new();
    let lanes = MemTransport::trio_lanes(crate::pipeline::LANES, opts.timeout, &cancel);
    let t0 = Instant::now();
    let clock = move || t0.elapsed().as_secs_f64();
    let results: Vec<Result<PartyOutput>> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .zip(inputs)
            .map(|(l, inp)| {
                let (sizes, skeleton, cancel, clock) = (&sizes, &skeleton, cancel.clone(), &clock);
                s.spawn(move || {
                    let r = stream_party(
                        l,
                        skeleton,
                        factory,
                        inp,
                        sizes,
                        depth,
                        opts,
                        cancel.clone(),
                        clock,
                        pace,
                    );
                    if r.is_err() {
                        cancel.cancel();
                    }
                    r
                })
            })
            .collect();
        join_parties(handles)
    });
    let outs = root_cause(results)?;
    let names: Vec<String> = fm.layers.iter().map(|l| l.name().to_string()).collect();
    let setup = CostReport::from_parties(
        &outs.iter().map(|o| o.setup.clone()).collect::<Vec<_>>(),
        &[],
    );
    let setup_seconds = outs.iter().map(|o| o.setup_seconds).fold(0.0, f64::max);
    let mut res = Vec::new();
    let mut times = Vec::new();
    for (bi, &n) in sizes.iter().enumerate() {
        let pb: Vec<&PartyBatch> = outs.iter().map(|o| &o.batches[bi]).collect();
        res.push(merge_batch(fm, &names, n, &pb, false)?);
        times.push([pb[0].times, pb[1].times, pb[2].times]);
    }
    let per_party: Vec<Vec<crate::pipeline::BatchTimes>> = (0..3)
        .map(|p| times.iter().map(|t| t[p]).collect())
        .collect();
    let refs: Vec<&[crate::pipeline::BatchTimes]> =
        per_party.iter().map(|v| v.as_slice()).collect();
    let merged = crate::pipeline::merge_times(&refs);
    let timing = crate::pipeline::StreamTiming::from_batches(
        &merged,
        &sizes,
        sizes.iter().copied().max().unwrap_or(1),
        depth,
    );
    Ok(StreamResult {
        setup,
        setup_seconds,
        batches: res,
        times,
        timing,
    })
}

/// Join the party threads in order; a thread that panicked becomes
/// [`MpcError::PartyFailed`] with the panic's message.
fn join_parties<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T>>>) -> Vec<Result<T>> {
    handles
        .into_iter()
        .enumerate()
        .map(|(p, h)| {
            h.join().unwrap_or_else(|e| {
                let reason = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                Err(MpcError::PartyFailed { party: p, reason })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use relushare_model::{presets, Arch, Model};

    /// The parties' skeleton holds no parameter, and a party's plan from it equals the plan
    /// from the full model (nothing a party runs depends on the plaintext parameters).
    #[test]
    fn parties_get_the_skeleton_only() {
        for (arch, preset) in [(Arch::Fmnist, "uniform32"), (Arch::Svhn, "fc-noise")] {
            let m = Model::random(presets::build(arch, preset).unwrap(), None, 2).unwrap();
            let mut fm = FixedModel::from_model(&m, 13).unwrap();
            let fused = crate::fast::gate::fuse(&mut fm).unwrap();
            assert_eq!(fused.is_empty(), preset == "fc-noise");
            assert!(!fm.is_skeleton());
            let sk = fm.skeleton();
            assert!(sk.is_skeleton());
            assert_eq!(sk.out_lens, fm.out_lens);
            let gp = party_inputs(&fm, &[vec![vec![0; fm.input_len]]]).unwrap();
            for p in &gp {
                let a = build_plan(&fm, 2, &p.group_params);
                let b = build_plan(&sk, 2, &p.group_params);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{arch} {preset}");
            }
            // A party thread refuses the full model.
            let [t, ..] = MemTransport::trio();
            let [inp, ..] = gp;
            let f = crate::securenn::factory;
            let e = run_party(Box::new(t), &fm, &f, inp, &[1], &RunOptions::default());
            assert!(matches!(e, Err(MpcError::Param(_))));
        }
    }
}
