//! The `mimo` protocol suite: masked-in/masked-out function-secret-sharing gates, after Boyle
//! et al. 2021 ("Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation"),
//! LLAMA and Orca. Semi-honest; P0/P1 compute, P2 is a dealer that is idle online.
//!
//! # Representation
//! Every tensor between two gates is held as a **public masked value** `x^ = x + r mod 2^b`:
//! P0 and P1 both know `x^`, the dealer knows `r`, and P0/P1 hold additive shares of `r`
//! (seed-derived where `r` is fresh randomness, dealt where it is a function of other masks).
//! The ring `b` of each tensor is the smallest its consumers need ([`layout`], backwards over the
//! plan's graph): a linear layer needs its input modulo `2^(R+f)` where `R` is its own output
//! ring, a ReLU only modulo its comparison ring `2^k`, an add its operands modulo its own output
//! ring, a max pool its input modulo `max(k, R)`, the client's output modulo `2^64`; a tensor
//! read by several ops (a residual block's input) is known modulo the largest of their rings.
//! Nothing is ever computed modulo more than the consumers can observe, so all openings are as
//! narrow as correctness allows. The suite keeps every masked tensor until its last reader
//! (model graphs: [`crate::suite::Plan::srcs`]; identity ops stand for their input).
//!
//! # Gates (one online round each, P0 <-> P1)
//! * **Input**: P0/P1 open `x + r_in` (the client's shares plus seed-derived masks).
//! * **Linear** (conv, fc): with masked weights `F = W - B` (public to P0/P1, opened once per
//!   model as in `fast`), `W x = F x^ + B x^ - F r - B r`; the dealer deals shares of `B r`
//!   (one correction per output element), each party adds the bias and its share of a fresh
//!   output mask `r_y` and they open `y^ = W x + b + r_y mod 2^(R+f)`. **Truncation is free and
//!   never fails**: `t^ = y^ >> f` is the masked truncated value with mask `r' = (r_y mod
//!   2^(R+f)) >> f` (the dealer deals shares of `r'`), and `t^ - r' mod 2^R` equals
//!   `floor(y / 2^f)` or that plus one, for every `y` (the wrap-around of `y + r_y` cancels
//!   modulo `2^R`), the same one-unit error as local truncation without its failure event.
//!   The last layer, whose output goes to the client, computes 64-bit shares locally (no
//!   round) and truncates them locally as `fast` does.
//! * **Average pooling**: local, `p^ = (c * window_sum(x^) mod 2^(R+f)) >> f` with the dealt mask
//!   `(c * window_sum(r) mod 2^(R+f)) >> f`, the same truncation argument.
//! * **ReLU** on `t` with `|t| < 2^(k-1)` (`k` proven per layer by `fast::bounds`): one DCF
//!   key with point `r' = r mod 2^k` and payload `(1, r')` in `Z_2^m` (`m` = the output ring),
//!   evaluated at the two public points `c = t^ + 2^(k-1)` and `c' = t^ mod 2^k` (one key, two
//!   evaluations, as Boyle et al.'s interval containment): with `N = 2^k`, `a = [c >= N/2]`,
//!   `L = [c < r']`, `L' = [c' < r']`:
//!   `d = [t >= 0] = a + L - L'` and, since `u = t + N/2 = c - r' + N L` and `L L' = a L + (1 -
//!   a) L'`, `ReLU(t) = d t = d c - d r' + N (L - (1 - a) L') - (N/2) d` (mod `2^m`), linear in
//!   the shares of `L, L r', L', L' r'` (the DCF outputs) and of `r'` (dealt). Each party adds
//!   its share of a fresh mask and they open `ReLU(t) + r_out mod 2^m`: the output is already
//!   sign-extended to the ring the next layer needs.
//! * **Partial ReLU**: the ReLU gate on its channels; the identity channels keep their masked
//!   values (their producer opened them wide enough).
//! * **ReLU sharing** (gReLU): one DCF key per group on its decision value, payload `(1, r_i for
//!   every member i)` (with noise: `(1 - 2 nb_i, (1 - 2 nb_i) r_i)` per member plus dealt shares
//!   of `nb_i` and `nb_i r_i`); member `i`'s output `d_g t_i = d_g x^_i - d_g r_i` (with noise
//!   `keep_i t_i`, `keep_i = nb_i XOR d_g`) is linear in the DCF outputs; members are known
//!   modulo the output ring, so no sign extension is needed. A one-hot decider compares the
//!   leader's masked value directly (one round). An unfused learned/FC decider's `z_g = sum v_i
//!   t_i (+ b_g)` is computed like a linear layer from the masked members and opened first (one
//!   more round: the decision depends on the truncated members, so it cannot ride with the
//!   producer's opening).
//! * **Fused gate** (a learned or FC gate after a convolution whose output it alone reads, noisy
//!   or not, whole channels or patches, fused by the model owner with [`fuse`] in
//!   [`GateMode::Fold`], see [`crate::fast::gate`]): the
//!   decisions are a linear function of the convolution's input, `z = U x + beta` (`U =
//!   round_f(v o W)`, `beta` with the FC bias, 2f bits, no truncation), so they ride with the
//!   convolution's own opening: with `U = F_U + B_U` masked
//!   once per model like a weight, `z^ = F_U x^ + B_U x^ - F_U r - [B_U r] + beta + r_z mod 2^k`
//!   (the dealer deals `[B_U r]`, `k` bits per decision; `r_z` is seed-derived) is opened in the
//!   same message as `y^`, the convolution's input is taken modulo `2^max(R+f, k)`, and the gate
//!   is the sharing gate above on the opened `z^` (its DCF point is `r_z`), one round for the
//!   members only. The decision is exact (`|z| < 2^(k-1)` from `fast::bounds`' bound on fused
//!   decisions), the output `[z_c >= 0] * t` with `t` the convolution's truncated output, i.e.
//!   the plaintext `Fold` semantics of [`crate::plain`] up to the one-unit truncation error.
//!   Noise is the sharing gate's (`keep_i = [z_c >= 0] XOR nb_i`). `Pool`-mode gates (the exact
//!   output pooled before truncation) are refused: [`fuse`] never picks them. One-hot deciders
//!   stay unfused. **Patch groups** (e.g. CIFAR-10 `uniform3`'s 3x3 patches) use a *sparse*
//!   `U` ([`crate::plain::SparseRows`], [`crate::fast::gate::fuse_patches`]): row `g`,
//!   `U_g = round_f(sum_{i in g} v_i W_{row(i)})`, lives only on the union of its members'
//!   receptive fields (a 3x3 patch after a 3x3 convolution: a 5x5 window per input channel),
//!   fixed by the structure alone; `z^`, `[B_U r]` and the one-time masking of `U` then cost
//!   `groups x window` multiply-adds and entries instead of `groups x in_len`. The online and
//!   dealer bytes per decision are the whole-channel gate's.
//! * **Residual add**: local, `(x^ + y^) mod 2^R` is the sum masked by `r_x + r_y` (the dealer
//!   adds its masks, each party its shares): no round, no dealer bytes.
//! * **Max pooling**: the balanced tree of [`crate::suite::default_max_pool`] (the plaintext
//!   reference's), `max(a, b) = b + ReLU(a - b)`. With both candidates masked, `a^ - b^ mod 2^k`
//!   is `a - b` masked by `r_a - r_b`, so every tree level is one ReLU gate over all its pairs
//!   (the dealer's key has point `(r_a - r_b) mod 2^k`; `|a - b| < 2^(k-1)` with `k` from the
//!   max pool's comparison bound) whose opened output `ReLU(a - b) + r_o` plus `b^` is the winner
//!   masked by `r_b + r_o`; an odd candidate waits. One round per level (`ceil(log2 9) = 4` for a
//!   3x3 window, 2 for 2x2); a level's results are opened modulo `max(k, R)` (the next level
//!   compares them), the last level's modulo the output ring `R`. Exact: the results equal the
//!   plaintext fixed point.
//! * Batch norm is folded into the convolution before the plan is built, global average pooling
//!   is average pooling over the whole plane; identity, dropout, flatten: nothing.
//!
//! So a model takes one online round per linear layer (but the last) and per ReLU/gReLU layer,
//! plus the input opening, when its learned/FC deciders are fused (CIFAR-10 `uniform32`,
//! `uniform3` and `fc-noise`: 15).
//!
//! # Costs
//! [`op_costs`] gives every layer's online bytes, rounds and dealer bytes; the suite checks
//! every dealt message against them and the tests assert the measured totals. The DCF key size
//! is `(k - et)(129 + w m) + 2^et w m` bits ([`crate::fss::vdcf`]), sent to both parties.
//!
//! # Rings of graph models
//! [`config_for_model`] sizes `k` from `fast`'s interval proof; where it overflows (ResNets:
//! worst cases compound past 2^63) a graph model takes `fast`'s calibrated bounds instead
//! ([`rings_for_model`] says which, as [`crate::fast::rings_for_model`]).
//!
//! # Leakage
//! As `fast`: the per-layer rings (`k` for comparisons, `b` for every opened tensor) are public
//! and reveal power-of-two bounds on the activations, derived from the plaintext weights by the
//! model owner. Every opened value is masked by a uniform mask of its ring.

#[cfg(test)]
mod tests;
#[cfg(test)]
mod view_tests;

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::fast::bits;
use crate::fast::deal::Deal;
use crate::fast::linear::{LinOp, MaskedWeight};
use crate::fast::masks::FixedMasks;
use crate::fast::{dealer_seed, noise_source, MaskedTensor, TestHooks};
use crate::fixed;
use crate::fss::vdcf::{self, ring_mask, Shape};
use crate::fss::{deal_keys, Keys};
use crate::kernels;
use crate::plain::GateMode;
use crate::prg::Prg;
use crate::suite::{
    DeciderKind, GroupPlan, LinearGeom, MaxPoolGeom, Plan, PlanOp, PoolGeom, Shared, Suite,
    WeightShare,
};
use std::collections::{BTreeMap, VecDeque};

/// Comparison rings per layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MimoConfig {
    /// Comparison bits per layer name (ReLU: the pre-activation; sharing: the group value).
    pub bits: BTreeMap<String, u32>,
    /// Bits for `f`-bit comparison inputs of layers not in `bits`.
    pub default_bits: u32,
    /// Bits for `2f`-bit group values of layers not in `bits`.
    pub default_bits_2f: u32,
}

impl MimoConfig {
    /// Safe defaults for `f` fractional bits (values below `2^19` in magnitude).
    pub fn defaults(frac_bits: u32) -> MimoConfig {
        MimoConfig {
            bits: BTreeMap::new(),
            default_bits: (frac_bits + 20).min(63),
            default_bits_2f: (2 * frac_bits + 20).min(63),
        }
    }

    fn for_layer(&self, name: &str, double: bool) -> u32 {
        self.bits.get(name).copied().unwrap_or(if double {
            self.default_bits_2f
        } else {
            self.default_bits
        })
    }
}

/// Fuse every whole-channel gate with a learned or FC decider (noisy or not) with the
/// convolution before it, in [`GateMode::Fold`] (the model owner's step, see
/// [`crate::fast::gate::fuse_by`]): its decisions `z = U x + beta` are then computed from the
/// convolution's own masked input and opened with the convolution's output, so the gate costs
/// no round of its own. `Fold` is the mode whose semantics `mimo` meets exactly (the gate
/// scales the truncated convolution output). One-hot gates stay unfused: they already decide on
/// the leader's masked value in the gate's own round, on an `f`-bit ring. Learned/FC gates
/// whose groups are not whole channels (patches) are fused with a sparse `U`
/// ([`crate::fast::gate::fuse_patches`]: one row per group on its members' receptive fields; a
/// dense `U` would be far larger than the convolution). Only a gate that reads its
/// convolution's output alone is fused. Gates already fused (in `Fold` mode) are kept. Returns
/// the fused gates' names (whole channels first).
pub fn fuse(fm: &mut crate::plain::FixedModel) -> Result<Vec<String>> {
    let mut names = crate::fast::gate::fuse_by(fm, |_, _, s| {
        matches!(s.decider, DeciderKind::Learned | DeciderKind::Fc).then_some(GateMode::Fold)
    })?;
    names.extend(crate::fast::gate::fuse_patches(fm)?);
    Ok(names)
}

/// The comparison rings of a model for `mimo`: from the same interval bounds as `fast`
/// ([`crate::fast::bounds`]), `k = bitlen(B) + 1` (a DCF needs no spare bit and no odd size:
/// `|t| <= B < 2^(k-1)` is all the gate uses; a max pool's `B` bounds the differences of window
/// members). Refuses what `fast` refuses (a truncation failure bound above the limit; `mimo`
/// itself truncates locally only in the last layer). Graph models whose proof overflows (a
/// ResNet's bounds compound past 2^63) take calibrated bounds as `fast` does
/// ([`rings_for_model`]).
pub fn config_for_model(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
) -> Result<MimoConfig> {
    rings_for_model(fm, model).map(|(c, _)| c)
}

/// [`config_for_model`] with where its rings come from: the interval proof
/// ([`crate::fast::bounds::analyse`]), or for a graph model where the proof fails, calibration
/// ([`crate::fast::bounds::calibrate`], as [`crate::fast::rings_for_model`]). A sequential model
/// is never calibrated.
pub fn rings_for_model(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
) -> Result<(MimoConfig, crate::fast::bounds::BoundsKind)> {
    use crate::fast::bounds::{self, BoundsKind};
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let proven = bounds::analyse(fm, lim).and_then(|b| config_from_bounds(fm, &b));
    match proven {
        Ok(c) => Ok((c, BoundsKind::Proven)),
        Err(e) if !model.spec.is_sequential() => {
            let cal = bounds::calibrate(fm, lim)
                .and_then(|b| config_from_bounds(fm, &b))
                .map_err(|c| MpcError::Model(format!("{e}; calibrated bounds fail too: {c}")))?;
            Ok((cal, BoundsKind::Calibrated))
        }
        Err(e) => Err(e),
    }
}

/// The rings of `fm` from `b` (proven or calibrated bounds), refused where the failure bound
/// per inference exceeds [`crate::fast::bounds::MAX_TRUNC_FAILURE`].
fn config_from_bounds(
    fm: &crate::plain::FixedModel,
    b: &crate::fast::bounds::Bounds,
) -> Result<MimoConfig> {
    let mut cfg = MimoConfig::defaults(fm.fp.frac_bits);
    for c in b.comparisons.iter().cloned() {
        let k = crate::fast::bounds::smallest_bits(c.bound);
        if k > 63 {
            return Err(MpcError::Model(format!(
                "{}: comparison inputs need a {k}-bit ring (at most 63)",
                c.name
            )));
        }
        cfg.bits.insert(c.name, k);
    }
    let (p, trunc) = failure_parts(fm, &cfg, b)?;
    if p > crate::fast::bounds::MAX_TRUNC_FAILURE {
        return Err(MpcError::Model(format!(
            "mimo: the failure bound per inference is {p:.3e} (last layer's local \
             truncation {trunc:.3e}), above {}; use fewer --frac-bits",
            crate::fast::bounds::MAX_TRUNC_FAILURE
        )));
    }
    Ok(cfg)
}

/// The failure bound per inference of `fm` under the rings of `cfg` with bounds `b`, and its
/// part from the last layer's local truncation. Failure events: the last layer's local
/// truncation and capped outputs' wrap-around ([`wrap_failure`]); every other truncation is
/// exact up to one unit.
fn failure_parts(
    fm: &crate::plain::FixedModel,
    cfg: &MimoConfig,
    b: &crate::fast::bounds::Bounds,
) -> Result<(f64, f64)> {
    let f = fm.fp.frac_bits;
    let plan = crate::runner::build_plan(fm, 1, &vec![None; fm.layers.len()]);
    let lay = layout(&plan, cfg, f)?;
    let last = visible(&plan)
        .last()
        .map(|&i| plan.ops[i].name().to_string())
        .unwrap_or_default();
    let trunc: f64 = b
        .truncations
        .iter()
        .filter(|t| t.name == last)
        .map(|t| t.elements as f64 * t.per_element())
        .sum();
    Ok((trunc + wrap_failure(&plan, &lay, f, b)?, trunc))
}

/// The failure bound per inference of `fm` under `mimo` (see `failure_parts`) and where its
/// bounds come from (as [`rings_for_model`]).
pub fn failure_bound(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
) -> Result<(f64, crate::fast::bounds::BoundsKind)> {
    use crate::fast::bounds::{self, BoundsKind};
    let (cfg, kind) = rings_for_model(fm, model)?;
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let b = match kind {
        BoundsKind::Proven => bounds::analyse(fm, lim)?,
        BoundsKind::Calibrated => bounds::calibrate(fm, lim)?,
    };
    Ok((failure_parts(fm, &cfg, &b)?.0, kind))
}

/// The ring (bits) of every op's output and of the model input, from the consumers backwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bits of the masked input opened at the start.
    pub input: u32,
    /// Per op: bits its output is known modulo (64 for the last op: the client's shares); the
    /// ring of the shares of its mask.
    pub out: Vec<u32>,
    /// Per op: bits of its public masked output (`out`, except a linear layer whose consumer
    /// needs more than `64 - f` bits: it opens all 64 and its masked output has `64 - f` bits;
    /// the consumer then uses it as an integer, see [`wrap_failure`]).
    pub open: Vec<u32>,
    /// Per op: bits it needs of its input.
    pub inp: Vec<u32>,
}

fn lin_parts(op: &PlanOp) -> Option<LinOp> {
    match op {
        PlanOp::Conv { geom, .. } => Some(LinOp::Conv(*geom)),
        PlanOp::Linear { geom, .. } => Some(LinOp::Fc {
            n: geom.n,
            in_f: geom.in_f,
            out_f: geom.out_f,
        }),
        _ => None,
    }
}

/// Indices of the ops the runner hands to a suite (identity ops never reach it).
fn visible(plan: &Plan) -> Vec<usize> {
    (0..plan.ops.len())
        .filter(|&i| !matches!(plan.ops[i], PlanOp::Identity { .. }))
        .collect()
}

/// The fused gate that op `i` feeds (a convolution followed by a ReLU-sharing layer whose
/// decisions are folded through it, see [`fuse`]): the gate's name and plan.
fn fused_after(plan: &Plan, i: usize) -> Option<(&str, &GroupPlan)> {
    match (plan.ops.get(i), plan.ops.get(i + 1)) {
        (Some(PlanOp::Conv { .. }), Some(PlanOp::SharedRelu { name, plan: gp }))
            if gp.fused.is_some() =>
        {
            Some((name.as_str(), gp))
        }
        _ => None,
    }
}

/// `U x` per image for a batch `x` of images of `in_len` elements: a dense `groups x in_len`
/// product, or `groups x window` multiply-adds per image for sparse rows.
fn apply_u(
    sparse: Option<&crate::plain::SparseRows>,
    x: &[u64],
    u: &[u64],
    in_len: usize,
    groups: usize,
) -> Result<Vec<u64>> {
    if in_len == 0 || !x.len().is_multiple_of(in_len) {
        return Err(MpcError::Shape("fused gate: input length".into()));
    }
    match sparse {
        Some(sp) => {
            if sp.rows() != groups {
                return Err(MpcError::Shape("fused gate: sparse rows".into()));
            }
            sp.apply(x, u, in_len)
        }
        None => LinOp::Fc {
            n: x.len() / in_len,
            in_f: in_len,
            out_f: groups,
        }
        .apply(x, u),
    }
}

/// Comparison bits of the decision values of sharing layer `name`: `2f`-bit values for
/// learned/FC deciders and fused gates (decisions on the exact convolution output), `f` bits
/// for an unfused one-hot decider.
fn group_bits(cfg: &MimoConfig, name: &str, gp: &GroupPlan) -> u32 {
    cfg.for_layer(
        name,
        gp.fused.is_some() || gp.decider != DeciderKind::OneHot,
    )
}

/// Whether op `i` is the last op a suite runs (its output goes to the client).
fn is_last(plan: &Plan, i: usize) -> bool {
    plan.ops[i + 1..]
        .iter()
        .all(|op| matches!(op, PlanOp::Identity { .. }))
}

/// The plan as a graph of the ops a suite runs: every op's input tensors with identity ops
/// resolved to the tensor they pass on (`0` the input, `i + 1` the output of op `i`), and the
/// last op that reads each tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Graph {
    /// Per op: its input tensors (an identity op: the tensor its output stands for).
    srcs: Vec<Vec<usize>>,
    /// Per tensor: the last non-identity op reading it (`usize::MAX`: none).
    last_use: Vec<usize>,
}

fn graph(plan: &Plan) -> Result<Graph> {
    let edges = plan.edges();
    let nops = plan.ops.len();
    if edges.len() != nops {
        return Err(MpcError::Model(format!(
            "mimo: a plan of {nops} ops with {} edge lists",
            edges.len()
        )));
    }
    let mut alias: Vec<usize> = (0..=nops).collect();
    let mut srcs = Vec::with_capacity(nops);
    let mut last_use = vec![usize::MAX; nops + 1];
    for (i, op) in plan.ops.iter().enumerate() {
        let want = if matches!(op, PlanOp::Add { .. }) {
            2
        } else {
            1
        };
        let e = &edges[i];
        if e.len() != want || e.iter().any(|&t| t > i) {
            return Err(MpcError::Model(format!(
                "{}: mimo: reads tensors {e:?} (expects {want} earlier tensor(s))",
                op.name()
            )));
        }
        let r: Vec<usize> = e.iter().map(|&t| alias[t]).collect();
        if matches!(op, PlanOp::Identity { .. }) {
            alias[i + 1] = r[0];
        } else {
            for &t in &r {
                last_use[t] = i;
            }
        }
        srcs.push(r);
    }
    // The client's output is the last computed tensor (the last linear layer computes 64-bit
    // shares locally and stores no masked value).
    let last = visible(plan).last().copied();
    if let Some(l) = last {
        if alias[nops] != l + 1 {
            return Err(MpcError::Model(format!(
                "mimo: the model's output must be the output of its last step ({})",
                plan.ops[l].name()
            )));
        }
    }
    Ok(Graph { srcs, last_use })
}

/// The tree levels of a max pool: pairs compared per level (the whole batch, as
/// [`crate::suite::MaxPoolGeom::level_pairs`]) and the ring of the level's results: the output
/// ring `out` at the last level, `max(k, out)` before it (the next level compares them on `k`
/// bits).
fn max_pool_levels(g: &MaxPoolGeom, k: u32, out: u32) -> Vec<(usize, u32)> {
    let pairs = g.level_pairs();
    let nl = pairs.len();
    pairs
        .into_iter()
        .enumerate()
        .map(|(l, p)| (p, if l + 1 == nl { out } else { k.max(out) }))
        .collect()
}

/// The rings of `plan` (see the module docs): every tensor is known modulo the largest ring its
/// consumers need, computed from the client's output (64 bits) backwards.
pub fn layout(plan: &Plan, cfg: &MimoConfig, f: u32) -> Result<Layout> {
    let nops = plan.ops.len();
    let mut out = vec![0u32; nops];
    let mut open = vec![0u32; nops];
    let mut inp = vec![0u32; nops];
    if f >= 32 {
        return Err(MpcError::Param(format!(
            "mimo: {f} fractional bits (at most 31)"
        )));
    }
    let g = graph(plan)?;
    // Per tensor: the largest ring a consumer needs (0: none seen yet; an unread tensor, the
    // client's output included, is computed on 64 bits).
    let mut need = vec![0u32; nops + 1];
    for i in (0..nops).rev() {
        let op = &plan.ops[i];
        if matches!(op, PlanOp::Identity { .. }) {
            continue;
        }
        let o = if need[i + 1] == 0 { 64 } else { need[i + 1] };
        out[i] = o;
        open[i] = o;
        let last = is_last(plan, i);
        inp[i] = match op {
            PlanOp::Conv { .. } | PlanOp::Linear { .. } => {
                if last {
                    64
                } else {
                    open[i] = o.min(64 - f);
                    // A fused gate's decisions are computed from this layer's input.
                    let zk = fused_after(plan, i).map_or(0, |(g, gp)| group_bits(cfg, g, gp));
                    (open[i] + f).max(zk)
                }
            }
            PlanOp::AvgPool { geom, .. } => {
                let c = fixed::pool_factor(geom.k, f);
                let tz = if c == 0 { 0 } else { c.trailing_zeros() };
                (o + f).saturating_sub(tz).clamp(1, 64)
            }
            PlanOp::Relu { name, .. } => cfg.for_layer(name, false),
            PlanOp::Partial { name, .. } => cfg.for_layer(name, false).max(o),
            PlanOp::SharedRelu { name, plan: gp } => match &gp.fused {
                Some(fp) => {
                    if fp.mode != GateMode::Fold {
                        return Err(MpcError::Model(format!(
                            "{name}: mimo runs fused gates in Fold mode only (prepare the \
                             model for mimo)"
                        )));
                    }
                    if i == 0 || fused_after(plan, i - 1).is_none() || g.srcs[i] != [i] {
                        return Err(MpcError::Model(format!(
                            "{name}: a fused gate must directly follow its convolution"
                        )));
                    }
                    // The decisions come with the convolution's opening; the members are
                    // only needed modulo the output ring.
                    o
                }
                None => group_bits(cfg, name, gp).max(o),
            },
            // Local: the operands modulo the sum's ring.
            PlanOp::Add { .. } => o,
            // The differences on `k` bits, the winners carried to the output ring.
            PlanOp::MaxPool { name, geom } => {
                if geom.level_pairs().is_empty() {
                    o
                } else {
                    cfg.for_layer(name, false).max(o)
                }
            }
            PlanOp::Identity { .. } => unreachable!("skipped above"),
        };
        for &t in &g.srcs[i] {
            need[t] = need[t].max(inp[i]);
        }
    }
    // Identity ops stand for the tensor they pass on.
    for i in 0..nops {
        if matches!(plan.ops[i], PlanOp::Identity { .. }) {
            let t = g.srcs[i][0];
            let r = if t == 0 { need[0] } else { out[t - 1] };
            (out[i], open[i], inp[i]) = (r, r, r);
        }
    }
    Ok(Layout {
        input: need[0].max(1),
        out,
        open,
        inp,
    })
}

/// Upper bound on the probability that a capped linear output ([`Layout::open`] below
/// [`Layout::out`]) wraps around: its consumer uses `t = t^ - r'` as an integer (`r'` uniform in
/// `[0, 2^(64-f))`), which is wrong only if `t + r'` leaves `[0, 2^(64-f))`, with probability at
/// most `B_t / 2^(64-f)` per element for `|t| <= B_t` (union bound over the elements of one
/// image). `bounds`: the model's per-layer truncation bounds (before truncation, `2f` bits).
pub fn wrap_failure(
    plan: &Plan,
    lay: &Layout,
    f: u32,
    bounds: &crate::fast::bounds::Bounds,
) -> Result<f64> {
    let mut p = 0.0;
    for (i, op) in plan.ops.iter().enumerate() {
        if lay.open[i] >= lay.out[i] {
            continue;
        }
        let lop = lin_parts(op).expect("only linear layers are capped");
        let b = bounds
            .truncations
            .iter()
            .find(|t| t.name == op.name())
            .ok_or_else(|| MpcError::Model(format!("{}: no proven bound", op.name())))?;
        let bt = b.bound / 2f64.powi(f as i32) + 1.0;
        p += (lop.out_len() / plan.n.max(1)) as f64 * bt / 2f64.powi((64 - f) as i32);
    }
    Ok(p)
}

fn kb(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Costs of one op of a plan: online bytes (both parties), online rounds, dealer bytes to P1
/// and to P0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCost {
    /// Online bytes, both parties together.
    pub online: usize,
    /// Online rounds.
    pub rounds: usize,
    /// Dealer bytes to P1.
    pub to_p1: usize,
    /// Dealer bytes to P0.
    pub to_p0: usize,
}

/// The DCF shape of a ReLU gate (`k`-bit points, payload `(1, r')` mod `2^m`).
pub fn relu_shape(k: u32, m: u32) -> Result<Shape> {
    Shape::new(k, 2, m)
}

/// Buckets of a sharing layer's groups by size (the DCF shape depends on the payload width):
/// `(members, groups of that size per image)`, ascending.
fn group_sizes(gp: &GroupPlan) -> Vec<(usize, usize)> {
    let mut size = vec![0usize; gp.num_groups];
    for &g in &gp.group_of {
        size[g as usize] += 1;
    }
    let mut by: BTreeMap<usize, usize> = BTreeMap::new();
    for s in size {
        *by.entry(s).or_default() += 1;
    }
    by.into_iter().collect()
}

/// Payload elements of a group of `members` (one shared "1" plus one mask per member, or two
/// per member with noise).
fn group_w(members: usize, noisy: bool) -> usize {
    if noisy {
        2 * members
    } else {
        1 + members
    }
}

/// Every op's costs for `plan` (op 0 includes the opening of the input).
pub fn op_costs(plan: &Plan, cfg: &MimoConfig, f: u32) -> Result<Vec<OpCost>> {
    let lay = layout(plan, cfg, f)?;
    let n = plan.n;
    let nops = plan.ops.len();
    let mut out = Vec::with_capacity(nops);
    let first = visible(plan).first().copied();
    for (i, op) in plan.ops.iter().enumerate() {
        let mut c = OpCost::default();
        if Some(i) == first {
            c.online += 2 * kb(n * plan.input_len, lay.input);
            c.rounds += 1;
        }
        let r = lay.out[i];
        match op {
            PlanOp::Conv { .. } | PlanOp::Linear { .. } => {
                let lop = lin_parts(op).expect("linear op");
                let o = lop.out_len();
                if is_last(plan, i) {
                    c.to_p1 += 8 * o;
                } else {
                    let op_bits = lay.open[i] + f;
                    c.to_p1 += kb(o, op_bits) + kb(o, r);
                    c.online += 2 * kb(o, op_bits);
                    c.rounds += 1;
                    if let Some((g, gp)) = fused_after(plan, i) {
                        // The fused gate's decisions ride with this opening: the dealt
                        // `B_U r` per decision and the opened `z^`.
                        let (groups, k) = (n * gp.num_groups, group_bits(cfg, g, gp));
                        c.to_p1 += kb(groups, k);
                        c.online += 2 * kb(groups, k);
                    }
                }
            }
            PlanOp::AvgPool { geom, .. } => {
                c.to_p1 += kb(geom.n * geom.c * geom.oh() * geom.ow(), r);
            }
            PlanOp::Relu { name, len } => {
                let cnt = n * len;
                relu_cost(&mut c, cnt, cfg.for_layer(name, false), r)?;
            }
            PlanOp::Partial {
                name,
                plane,
                relu_channels,
                ..
            } => {
                let cnt = n * relu_channels * plane;
                relu_cost(&mut c, cnt, cfg.for_layer(name, false), r)?;
            }
            PlanOp::SharedRelu { name, plan: gp } => {
                let k = group_bits(cfg, name, gp);
                let noisy = gp.noise > 0.0;
                let total = n * gp.len;
                let groups = n * gp.num_groups;
                if gp.fused.is_none() && gp.decider != DeciderKind::OneHot {
                    // The decision values: dealt sum of B_v r per group, fresh mask, opening.
                    c.to_p1 += kb(groups, k);
                    c.online += 2 * kb(groups, k);
                    c.rounds += 1;
                }
                for (members, count) in group_sizes(gp) {
                    let s = Shape::new(k, group_w(members, noisy), r)?;
                    let b = s.bytes(n * count);
                    c.to_p1 += b;
                    c.to_p0 += b;
                }
                if noisy {
                    c.to_p1 += 2 * kb(total, r);
                }
                c.online += 2 * kb(total, r);
                c.rounds += 1;
            }
            PlanOp::MaxPool { name, geom } => {
                // One ReLU gate per tree level on the level's differences.
                let k = cfg.for_layer(name, false);
                for (pairs, m) in max_pool_levels(geom, k, r) {
                    relu_cost(&mut c, pairs, k, m)?;
                }
            }
            // An add is local: no round, no dealer bytes.
            PlanOp::Identity { .. } | PlanOp::Add { .. } => {}
        }
        out.push(c);
    }
    Ok(out)
}

fn relu_cost(c: &mut OpCost, cnt: usize, k: u32, m: u32) -> Result<()> {
    let s = relu_shape(k, m)?;
    c.to_p1 += s.bytes(cnt) + kb(cnt, m);
    c.to_p0 += s.bytes(cnt);
    c.online += 2 * kb(cnt, m);
    c.rounds += 1;
    Ok(())
}

/// Totals of [`op_costs`]: (online bytes, online rounds, offline bytes).
pub fn totals(plan: &Plan, cfg: &MimoConfig, f: u32) -> Result<(usize, usize, usize)> {
    let c = op_costs(plan, cfg, f)?;
    Ok((
        c.iter().map(|x| x.online).sum(),
        c.iter().map(|x| x.rounds).sum(),
        c.iter().map(|x| x.to_p1 + x.to_p0).sum(),
    ))
}

/// Largest dealer material one batch may need (held in memory until used).
pub const MAX_OFFLINE_BYTES: usize = 4_000_000_000;

/// A masked tensor: public `hat` (mod `2^bits`) and this party's share of the mask (dealer: the
/// mask itself).
#[derive(Clone, Debug, Default)]
struct Masked {
    hat: Vec<u64>,
    r: Vec<u64>,
    bits: u32,
}

/// Dealer material of one op (P0/P1 side).
enum Mat {
    Lin {
        pre: Vec<u64>,
        rt: Vec<u64>,
        gate: Option<Box<LinGate>>,
    },
    Pool {
        rp: Vec<u64>,
    },
    Relu {
        keys: Keys,
        rk: Vec<u64>,
        rout: Vec<u64>,
    },
    Group(Box<GroupMat>),
    /// Max pooling: one ReLU gate per tree level.
    MaxPool(Vec<ReluLevel>),
    Nothing,
}

/// One level of a max pool's comparison tree: the ReLU keys of its differences, the shares of
/// their masks (mod the level's ring) and of the fresh masks of the results.
struct ReluLevel {
    keys: Keys,
    rk: Vec<u64>,
    rout: Vec<u64>,
}

/// The decisions of the fused gate after a convolution, opened with its output:
/// `z^ = U x^ + zpre mod 2^k` per image.
struct LinGate {
    /// The weight key of `U` (`groups x in_len` per image, or sparse rows).
    ukey: String,
    /// The rows of a sparse `U` (patch groups); `None`: dense.
    sparse: Option<crate::plain::SparseRows>,
    /// Decisions per image.
    groups: usize,
    /// Convolution input elements per image.
    in_len: usize,
    /// Comparison ring of the decisions.
    k: u32,
    /// This party's share of `-F_U r - B_U r + beta + r_z` per decision.
    zpre: Vec<u64>,
}

/// Material of a sharing layer.
struct GroupMat {
    /// Per size bucket: the member count and the keys of its groups.
    buckets: Vec<(usize, Keys)>,
    /// Learned/Fc: this party's share of `-F r - sum B_v r + r_z (+ bias)` per group.
    zpre: Vec<u64>,
    /// Noise: shares of `nb_i` and `nb_i r_i`.
    nb: Vec<u64>,
    nbr: Vec<u64>,
    rout: Vec<u64>,
}

#[cfg(test)]
thread_local! {
    /// Test only: this party opens its raw input share instead of the masked one (the view
    /// tests' control must catch it).
    pub(crate) static PLANT_RAW_SHARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Test only: the ReLU gate opens its output without the fresh output mask (the view
    /// tests' second control: each message alone still looks uniform, the opened value does
    /// not).
    pub(crate) static PLANT_UNMASKED_RELU: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Test only: the ReLU gate masks its output with the input mask it was given (its share
    /// of `r_in`) instead of the fresh output mask (the view tests' third control: each opened
    /// value alone is still masked, the pair of input and output openings is not).
    pub(crate) static PLANT_REUSED_MASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
use crate::view_harness::record_opened;

/// The `mimo` suite as run by one party.
pub struct MimoSuite {
    comm: Comm,
    frac: u32,
    cfg: MimoConfig,
    deal: Option<Deal>,
    weights: BTreeMap<String, MaskedWeight>,
    lay: Option<Layout>,
    input_mask: Vec<u64>,
    queue: VecDeque<Mat>,
    /// The masked tensors still to be read, by tensor (`0` the input, `i + 1` op `i`'s output).
    vals: Vec<Option<Masked>>,
    /// Whether the input was opened (this batch).
    opened: bool,
    /// The plan's tensors and their readers.
    graph: Graph,
    noise_rng: Option<Prg>,
    /// Count of the online ops run so far (the runner skips identity ops).
    pos: usize,
    /// Offline (dealer): the decision masks `r_z` a convolution dealt for the fused gate after
    /// it.
    fused_rz: Option<Vec<u64>>,
    /// Online (P0/P1): the masked decisions a convolution opened for the fused gate after it.
    fused_zh: Option<Vec<u64>>,
    /// Plan indices of the ops the suite runs, and every op's name.
    visible: Vec<usize>,
    names: Vec<String>,
    last: usize,
    /// Serving: masks fixed for the owner-helper pair, installed by `prepare` instead of the
    /// masked opening ([`crate::fast::masks`]).
    fixed: Option<FixedMasks>,
    test: TestHooks,
}

/// `x` of P0/P1 with P0 adding a public value (`[c] = c` for P0, `0` for P1).
#[inline]
fn pub_share(me: usize, c: u64) -> u64 {
    if me == 0 {
        c
    } else {
        0
    }
}

/// Open a vector shared mod `2^bits` (one round).
fn open_bits(comm: &mut Comm, mine: &[u64], bits: u32) -> Result<Vec<u64>> {
    let me = comm.party();
    let peer = 1 - me;
    let mask = ring_mask(bits);
    let got = comm.round(vec![(peer, bits::pack_kbit(mine, bits))], &[peer])?;
    let theirs = bits::unpack_kbit(&got[0], mine.len(), bits, peer)?;
    let opened: Vec<u64> = mine
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.wrapping_add(*b) & mask)
        .collect();
    #[cfg(test)]
    record_opened(&opened);
    Ok(opened)
}

/// Open two vectors shared mod `2^abits` and `2^bbits` in one round (one message each way).
fn open_two(
    comm: &mut Comm,
    a: &[u64],
    abits: u32,
    b: &[u64],
    bbits: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let me = comm.party();
    let peer = 1 - me;
    let mut msg = bits::pack_kbit(a, abits);
    let alen = msg.len();
    msg.extend(bits::pack_kbit(b, bbits));
    let got = comm.round(vec![(peer, msg)], &[peer])?;
    let got = &got[0];
    if got.len() < alen {
        return Err(MpcError::Malformed {
            from: peer,
            reason: format!("an opening of {} bytes", got.len()),
        });
    }
    let ta = bits::unpack_kbit(&got[..alen], a.len(), abits, peer)?;
    let tb = bits::unpack_kbit(&got[alen..], b.len(), bbits, peer)?;
    let sum = |mine: &[u64], theirs: &[u64], bits: u32| -> Vec<u64> {
        let mask = ring_mask(bits);
        mine.iter()
            .zip(theirs)
            .map(|(x, y)| x.wrapping_add(*y) & mask)
            .collect()
    };
    let (oa, ob) = (sum(a, &ta, abits), sum(b, &tb, bbits));
    #[cfg(test)]
    {
        record_opened(&oa);
        record_opened(&ob);
    }
    Ok((oa, ob))
}

impl MimoSuite {
    /// A suite for the party behind `comm`.
    pub fn new(comm: Comm, frac_bits: u32, cfg: MimoConfig) -> MimoSuite {
        MimoSuite {
            comm,
            frac: frac_bits,
            cfg,
            deal: None,
            weights: BTreeMap::new(),
            lay: None,
            input_mask: Vec::new(),
            queue: VecDeque::new(),
            vals: Vec::new(),
            opened: false,
            graph: Graph::default(),
            noise_rng: None,
            pos: 0,
            fused_rz: None,
            fused_zh: None,
            visible: Vec::new(),
            names: Vec::new(),
            last: 0,
            fixed: None,
            test: TestHooks::default(),
        }
    }

    /// This suite's [`Suite::prepare`] installs the weight masks `m` (fixed across the sessions
    /// of an owner-helper pair, see [`crate::fast::masks`]; `mimo`'s own context and
    /// `mask_layout`) instead of dealing fresh masks and opening `F = W - B`; the masked
    /// tensors' shares passed to `prepare` are then not used (and may be empty). The session's
    /// dealer streams (seeds from `prepare`) stay fresh.
    pub fn with_fixed_masks(mut self, m: FixedMasks) -> MimoSuite {
        self.fixed = Some(m);
        self
    }

    /// Test only: the masked weights `prepare` installed.
    #[cfg(test)]
    pub(crate) fn installed_weights(&self) -> BTreeMap<String, MaskedWeight> {
        self.weights.clone()
    }

    /// Test only: fix the dealer's seeds / noise source.
    #[cfg(test)]
    pub(crate) fn set_test_hooks(&mut self, hooks: TestHooks) {
        self.test = hooks;
    }

    /// Take back the metered connection.
    pub fn into_comm(self) -> Comm {
        self.comm
    }

    fn me(&self) -> usize {
        self.comm.party()
    }

    fn deal_mut(&mut self) -> Result<&mut Deal> {
        self.deal
            .as_mut()
            .ok_or_else(|| MpcError::Param("mimo suite used before prepare".into()))
    }

    /// Run a dealing step: P0/P1 receive the dealer's message for it (P1: `bytes.0`, P0:
    /// `bytes.1`), everyone runs `f`, the dealer ships what `f` dealt (checked against the
    /// cost formula).
    fn dealt<T>(
        &mut self,
        bytes: (usize, usize),
        f: impl FnOnce(&mut Deal, Option<&mut Prg>) -> Result<T>,
    ) -> Result<T> {
        let me = self.me();
        let expect = match me {
            0 => bytes.1,
            1 => bytes.0,
            _ => 0,
        };
        if me != 2 && expect > 0 {
            let got = self.comm.round(vec![], &[2])?.pop().unwrap_or_default();
            let d = self.deal_mut()?;
            if me == 0 {
                d.feed0(got);
            } else {
                d.feed(got);
            }
        }
        let deal = self
            .deal
            .as_mut()
            .ok_or_else(|| MpcError::Param("mimo suite used before prepare".into()))?;
        let out = f(deal, self.noise_rng.as_mut())?;
        if me != 2 {
            deal.finish()?;
        } else {
            let c1 = deal.take_corrections();
            let c0 = deal.take_public0();
            if c1.len() != bytes.0 || c0.len() != bytes.1 {
                return Err(MpcError::Param(format!(
                    "internal: mimo dealt ({}, {}) bytes, cost formula says {bytes:?}",
                    c1.len(),
                    c0.len()
                )));
            }
            let mut msgs = Vec::new();
            if !c0.is_empty() {
                msgs.push((0, c0));
            }
            if !c1.is_empty() {
                msgs.push((1, c1));
            }
            if !msgs.is_empty() {
                self.comm.round(msgs, &[])?;
            }
        }
        Ok(out)
    }

    fn weight(&self, key: &str) -> Result<&MaskedWeight> {
        self.weights
            .get(key)
            .ok_or_else(|| MpcError::Model(format!("weight {key} was not prepared")))
    }

    /// The masked input of the op now running (its first input tensor).
    fn take_input(&mut self, x: &Shared) -> Result<Masked> {
        self.input_of(0, x)
    }

    /// The masked value of input `j` of the op now running: taken at its last reader, copied
    /// before; the client's input (`x`: this party's shares of it) is opened at its first
    /// reader.
    fn input_of(&mut self, j: usize, x: &Shared) -> Result<Masked> {
        let i = self.op_index()?;
        let t = *self
            .graph
            .srcs
            .get(i)
            .and_then(|s| s.get(j))
            .ok_or_else(|| MpcError::Param(format!("mimo suite: op {i} has no input {j}")))?;
        if t == 0 && !self.opened {
            let m = self.open_input(x)?;
            self.opened = true;
            if let Some(v) = self.vals.get_mut(0) {
                *v = Some(m);
            }
        }
        let once = self.graph.srcs[i].iter().filter(|&&s| s == t).count() == 1;
        let slot = self
            .vals
            .get_mut(t)
            .ok_or_else(|| MpcError::Param(format!("mimo suite: tensor {t} is not in the plan")))?;
        let m = if once && self.graph.last_use.get(t) == Some(&i) {
            slot.take()
        } else {
            slot.clone()
        };
        m.ok_or_else(|| {
            MpcError::Param(format!(
                "mimo suite: no masked value of tensor {t} (op out of order)"
            ))
        })
    }

    /// Open the client's input (`x`: this party's shares) under the input mask.
    fn open_input(&mut self, x: &Shared) -> Result<Masked> {
        let lay = self
            .lay
            .as_ref()
            .ok_or_else(|| MpcError::Param("mimo suite: offline() was not run".into()))?;
        let bits = lay.input;
        let r = std::mem::take(&mut self.input_mask);
        crate::ring::check_len("mimo input", x, r.len())?;
        let mask = ring_mask(bits);
        #[cfg(test)]
        let plant = PLANT_RAW_SHARE.with(|c| c.get());
        #[cfg(not(test))]
        let plant = false;
        let mine: Vec<u64> = x
            .iter()
            .zip(&r)
            .map(|(a, b)| {
                if plant {
                    *a & mask
                } else {
                    a.wrapping_add(*b) & mask
                }
            })
            .collect();
        let hat = open_bits(&mut self.comm, &mine, bits)?;
        Ok(Masked { hat, r, bits })
    }

    /// The shares this party returns for a masked value (P0: `x^ - r0`, P1: `-r1`): their sum
    /// is the value modulo its ring (exact 64-bit shares for the last op).
    fn shares_of(&self, m: &Masked) -> Shared {
        let me = self.me();
        m.hat
            .iter()
            .zip(&m.r)
            .map(|(h, r)| pub_share(me, *h).wrapping_sub(*r))
            .collect()
    }

    /// The plan index of the op now running.
    fn op_index(&self) -> Result<usize> {
        self.visible.get(self.pos).copied().ok_or_else(|| {
            MpcError::Param("mimo suite: more ops than the plan of offline()".into())
        })
    }

    /// The output ring of the op now running.
    fn out_ring(&self) -> Result<u32> {
        let i = self.op_index()?;
        Ok(self.lay.as_ref().expect("offline ran").out[i])
    }

    fn next_mat(&mut self, what: &str) -> Result<Mat> {
        self.queue.pop_front().ok_or_else(|| {
            MpcError::Param(format!(
                "mimo suite: no {what} material (was offline() run?)"
            ))
        })
    }

    /// Finish an online op: drop the inputs it read last, store the output (if it is read
    /// later), return its shares.
    fn emit(&mut self, m: Masked) -> Shared {
        let s = self.shares_of(&m);
        if let Ok(i) = self.op_index() {
            self.release(i);
            if let Some(v) = self.vals.get_mut(i + 1) {
                if self
                    .graph
                    .last_use
                    .get(i + 1)
                    .is_some_and(|&l| l != usize::MAX)
                {
                    *v = Some(m);
                }
            }
        }
        self.pos += 1;
        s
    }

    /// Drop the tensors op `i` read last.
    fn release(&mut self, i: usize) {
        for &t in self.graph.srcs.get(i).into_iter().flatten() {
            if self.graph.last_use.get(t) == Some(&i) {
                if let Some(v) = self.vals.get_mut(t) {
                    *v = None;
                }
            }
        }
    }

    fn lin_online(&mut self, x: &Shared, wname: &str, lop: &LinOp) -> Result<Shared> {
        let me = self.me();
        let mat = self.next_mat("linear")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        let inp = self.take_input(x)?;
        let Mat::Lin { pre, rt, gate } = mat else {
            return Err(MpcError::Param(format!(
                "mimo suite: expected linear material for {wname}"
            )));
        };
        let i = self.op_index()?;
        let last = i == self.last;
        let r = self.lay.as_ref().expect("offline ran").open[i];
        let zk = gate.as_ref().map_or(0, |g| g.k);
        let want = if last { 64 } else { (r + self.frac).max(zk) };
        if inp.bits < want {
            return Err(MpcError::Param(format!(
                "mimo suite: {wname} got its input modulo 2^{}, needs 2^{want}",
                inp.bits
            )));
        }
        let mw = self.weight(wname)?;
        let mut y = lop.apply(&inp.hat, &mw.online)?;
        crate::ring::add_assign(&mut y, &pre);
        if last {
            fixed::trunc_share_vec(&mut y, self.frac, me);
            self.release(i);
            self.pos += 1;
            return Ok(y);
        }
        let f = self.frac;
        let yh = match gate {
            None => open_bits(&mut self.comm, &y, r + f)?,
            Some(g) => {
                let mut z = apply_u(
                    g.sparse.as_ref(),
                    &inp.hat,
                    &self.weight(&g.ukey)?.online,
                    g.in_len,
                    g.groups,
                )?;
                crate::ring::add_assign(&mut z, &g.zpre);
                let (yh, zh) = open_two(&mut self.comm, &y, r + f, &z, g.k)?;
                self.fused_zh = Some(zh);
                yh
            }
        };
        let hat = yh.iter().map(|v| v >> f).collect();
        let known = self.out_ring()?;
        Ok(self.emit(Masked {
            hat,
            r: rt,
            bits: known,
        }))
    }

    fn pool_online(&mut self, x: &Shared, g: &PoolGeom) -> Result<Shared> {
        let me = self.me();
        let mat = self.next_mat("pooling")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        let inp = self.take_input(x)?;
        let Mat::Pool { rp } = mat else {
            return Err(MpcError::Param(
                "mimo suite: expected pooling material".into(),
            ));
        };
        let r = self.out_ring()?;
        let hat = pool_masked(&inp.hat, g, self.frac, r)?;
        Ok(self.emit(Masked {
            hat,
            r: rp,
            bits: r,
        }))
    }

    /// ReLU on the elements `idx` of the masked input; the others pass unchanged (reduced to
    /// the output ring).
    fn relu_online(&mut self, x: &Shared, idx: Option<Vec<usize>>) -> Result<Shared> {
        let me = self.me();
        let mat = self.next_mat("ReLU")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        let inp = self.take_input(x)?;
        let Mat::Relu { keys, rk, rout } = mat else {
            return Err(MpcError::Param("mimo suite: expected ReLU material".into()));
        };
        let m = self.out_ring()?;
        let mmask = ring_mask(m);
        if inp.bits < keys.shape.n {
            return Err(MpcError::Param(format!(
                "mimo suite: a ReLU got its input modulo 2^{}, compares on {} bits",
                inp.bits, keys.shape.n
            )));
        }
        let sel: Vec<usize> = idx.unwrap_or_else(|| (0..inp.hat.len()).collect());
        let th: Vec<u64> = sel.iter().map(|&i| inp.hat[i]).collect();
        let mut y = relu_gate_eval(me, &keys, &th, &rk)?;
        #[cfg(test)]
        let plant = PLANT_UNMASKED_RELU.with(|c| c.get());
        #[cfg(not(test))]
        let plant = false;
        #[cfg(test)]
        let rout = if PLANT_REUSED_MASK.with(|c| c.get()) {
            sel.iter().map(|&i| inp.r[i]).collect()
        } else {
            rout
        };
        if !plant {
            crate::ring::add_assign(&mut y, &rout);
        }
        let yh = open_bits(&mut self.comm, &y, m)?;
        let mut hat: Vec<u64> = inp.hat.iter().map(|v| v & mmask).collect();
        let mut r: Vec<u64> = inp.r.iter().map(|v| v & mmask).collect();
        for (j, &i) in sel.iter().enumerate() {
            hat[i] = yh[j];
            r[i] = rout[j];
        }
        Ok(self.emit(Masked { hat, r, bits: m }))
    }

    fn group_online(&mut self, x: &Shared, n: usize, gp: &GroupPlan) -> Result<Shared> {
        let me = self.me();
        let name = self.names[self.op_index()?].clone();
        let name = name.as_str();
        let mat = self.next_mat("ReLU-sharing")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        let inp = self.take_input(x)?;
        let Mat::Group(gm) = mat else {
            return Err(MpcError::Param(
                "mimo suite: expected ReLU-sharing material".into(),
            ));
        };
        let m = self.out_ring()?;
        let k = group_bits(&self.cfg, name, gp);
        let kmask = ring_mask(k);
        let groups = n * gp.num_groups;
        // The masked decision values.
        let zh: Vec<u64> = if gp.fused.is_some() {
            let zh = self.fused_zh.take().ok_or_else(|| {
                MpcError::Param(format!(
                    "mimo suite: {name}: no decisions from the convolution before it"
                ))
            })?;
            crate::ring::check_len("fused decisions", &zh, groups)?;
            zh
        } else if gp.decider != DeciderKind::OneHot {
            let mv = self.weight(&v_key(name))?;
            let mut z = gm.zpre.clone();
            for img in 0..n {
                for (i, &g) in gp.group_of.iter().enumerate() {
                    let e = img * gp.len + i;
                    let gi = img * gp.num_groups + g as usize;
                    z[gi] = z[gi].wrapping_add(mv.online[i].wrapping_mul(inp.hat[e]));
                }
            }
            open_bits(&mut self.comm, &z, k)?
        } else {
            (0..groups)
                .map(|gi| {
                    let (img, g) = (gi / gp.num_groups, gi % gp.num_groups);
                    inp.hat[img * gp.len + gp.leaders[g] as usize] & kmask
                })
                .collect()
        };
        let y = group_gate_eval(me, &gm, gp, n, &zh, &inp, k, m)?;
        let yh = open_bits(&mut self.comm, &y, m)?;
        Ok(self.emit(Masked {
            hat: yh,
            r: gm.rout,
            bits: m,
        }))
    }
}

/// `(c * window_sum(x) mod 2^(r+f)) >> f` of a masked (or mask) tensor.
fn pool_masked(x: &[u64], g: &PoolGeom, f: u32, r: u32) -> Result<Vec<u64>> {
    crate::ring::check_len("pool input", x, g.n * g.c * g.h * g.w)?;
    let c = fixed::pool_factor(g.k, f);
    let mask = ring_mask(r + f);
    Ok(kernels::pool_sums(x, g.n, g.c, g.h, g.w, g.k, g.stride)
        .into_iter()
        .map(|s| (s.wrapping_mul(c) & mask) >> f)
        .collect())
}

/// The two-point evaluation of a batch of keys at `c = t^ + N/2` and `c' = t^` (mod `N = 2^k`):
/// returns `(a, out(c), out(c'))`.
fn two_point(me: usize, keys: &Keys, th: &[u64]) -> Result<(Vec<u64>, Vec<u64>, Vec<u64>)> {
    let k = keys.shape.n;
    let kmask = ring_mask(k);
    let half = 1u64 << (k - 1);
    let c: Vec<u64> = th.iter().map(|t| t.wrapping_add(half) & kmask).collect();
    let c2: Vec<u64> = th.iter().map(|t| t & kmask).collect();
    let prg = vdcf::Prg::new();
    let o1 = vdcf::eval(&prg, &keys.shape, me as u8, &keys.root, &keys.cw, &c)?;
    let o2 = vdcf::eval(&prg, &keys.shape, me as u8, &keys.root, &keys.cw, &c2)?;
    let a = c.iter().map(|v| (v >> (k - 1)) & 1).collect();
    Ok((a, o1, o2))
}

/// Shares of `ReLU(t) mod 2^m` (see the module docs) from the masked `t^` (mod `2^k`), the
/// keys with payload `(1, r')` and the shares `rk` of `r'` mod `2^m`.
fn relu_gate_eval(me: usize, keys: &Keys, th: &[u64], rk: &[u64]) -> Result<Vec<u64>> {
    let (k, m) = (keys.shape.n, keys.shape.m);
    crate::ring::check_len("ReLU mask shares", rk, th.len())?;
    let (a, o1, o2) = two_point(me, keys, th)?;
    let kmask = ring_mask(k);
    let half = 1u64 << (k - 1);
    let nn = if k >= 64 { 0 } else { 1u64 << k };
    let mmask = ring_mask(m);
    Ok((0..th.len())
        .map(|j| {
            let c = th[j].wrapping_add(half) & kmask;
            let (l, lr) = (o1[2 * j], o1[2 * j + 1]);
            let (l2, l2r) = (o2[2 * j], o2[2 * j + 1]);
            let aj = a[j];
            let d = pub_share(me, aj).wrapping_add(l).wrapping_sub(l2);
            let dr = aj.wrapping_mul(rk[j]).wrapping_add(lr).wrapping_sub(l2r);
            let lterm = l.wrapping_sub((1 - aj).wrapping_mul(l2));
            d.wrapping_mul(c)
                .wrapping_sub(dr)
                .wrapping_add(nn.wrapping_mul(lterm))
                .wrapping_sub(half.wrapping_mul(d))
                & mmask
        })
        .collect())
}

/// Shares of every member's gated output mod `2^m`, plus its output mask share.
#[allow(clippy::too_many_arguments)]
fn group_gate_eval(
    me: usize,
    gm: &GroupMat,
    gp: &GroupPlan,
    n: usize,
    zh: &[u64],
    inp: &Masked,
    k: u32,
    m: u32,
) -> Result<Vec<u64>> {
    let mmask = ring_mask(m);
    let noisy = gp.noise > 0.0;
    let members = members_of(gp);
    let mut y = vec![0u64; n * gp.len];
    // Keys are laid out bucket by bucket, image by image, groups ascending.
    for (size, keys) in &gm.buckets {
        let gs: Vec<usize> = (0..gp.num_groups)
            .filter(|&g| members[g].len() == *size)
            .collect();
        let pts: Vec<u64> = (0..n)
            .flat_map(|img| gs.iter().map(move |&g| (img, g)))
            .map(|(img, g)| zh[img * gp.num_groups + g])
            .collect();
        let (a, o1, o2) = two_point(me, keys, &pts)?;
        let w = keys.shape.w;
        debug_assert_eq!(keys.shape.n, k);
        for (j, (img, g)) in (0..n)
            .flat_map(|img| gs.iter().map(move |&g| (img, g)))
            .enumerate()
        {
            let aj = a[j];
            // [beta * d] = a [beta] + [L beta] - [L' beta] for payload element c.
            let bd = |c: usize, beta_share: u64| {
                aj.wrapping_mul(beta_share)
                    .wrapping_add(o1[j * w + c])
                    .wrapping_sub(o2[j * w + c])
            };
            for (mi, &e) in members[g].iter().enumerate() {
                let idx = img * gp.len + e;
                let (h, r) = (inp.hat[idx], inp.r[idx]);
                let v = if noisy {
                    let (nb, nbr) = (gm.nb[idx], gm.nbr[idx]);
                    let p = pub_share(me, 1).wrapping_sub(nb.wrapping_mul(2));
                    let q = r.wrapping_sub(nbr.wrapping_mul(2));
                    nb.wrapping_mul(h)
                        .wrapping_sub(nbr)
                        .wrapping_add(bd(2 * mi, p).wrapping_mul(h))
                        .wrapping_sub(bd(2 * mi + 1, q))
                } else {
                    bd(0, pub_share(me, 1))
                        .wrapping_mul(h)
                        .wrapping_sub(bd(1 + mi, r))
                };
                y[idx] = v.wrapping_add(gm.rout[idx]) & mmask;
            }
        }
    }
    Ok(y)
}

/// Members (element indices, ascending) of every group.
fn members_of(gp: &GroupPlan) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); gp.num_groups];
    for (i, &g) in gp.group_of.iter().enumerate() {
        out[g as usize].push(i);
    }
    out
}

/// The tensors `mimo`'s one-time setup masks, in the order their masks are drawn: `fast`'s
/// layout ([`crate::fast::mask_layout`]: every convolution and linear weight, every unfused
/// learned/FC decider `v`, every fused gate's dense or sparse `U`) without the biases of the
/// convolutions a gate is fused after (`mimo` adds a fused convolution's bias shares as any
/// other's: no masked copy). The layout depends on the plan's structure only; `weights`
/// supplies the values (the plaintext for the model owner's computation of `F`).
pub(crate) fn mask_layout<'a>(
    plan: &'a Plan,
    weights: &'a [WeightShare],
) -> Result<Vec<MaskedTensor<'a>>> {
    let folded: Vec<String> = (0..plan.ops.len())
        .filter(|&i| fused_after(plan, i).is_some())
        .filter_map(|i| match &plan.ops[i] {
            PlanOp::Conv { weight, .. } => weights
                .get(*weight)
                .map(|w| crate::fast::gate::bias_key(&w.name)),
            _ => None,
        })
        .collect();
    Ok(crate::fast::mask_layout(plan, weights)?
        .into_iter()
        .filter(|m| !folded.contains(&m.key))
        .collect())
}

/// The weight key of a decider `v` of sharing layer `name` (as `fast`'s mask layout).
fn v_key(name: &str) -> String {
    format!("{name}.v")
}

impl MimoSuite {
    /// Offline: deal op `i` given the current mask (`mask`, this party's share or the dealer's
    /// value); returns the material and the output mask.
    fn deal_op(
        &mut self,
        plan: &Plan,
        i: usize,
        weights: &[WeightShare],
        mask: Vec<u64>,
        cost: OpCost,
    ) -> Result<(Mat, Vec<u64>)> {
        let me = self.me();
        let dealer = me == 2;
        let f = self.frac;
        let lay = self.lay.clone().expect("set by offline");
        let r = lay.out[i];
        let ropen = lay.open[i];
        let n = plan.n;
        let last = is_last(plan, i);
        let bytes = (cost.to_p1, cost.to_p0);
        let op = &plan.ops[i];
        match op {
            PlanOp::Conv { weight, .. } | PlanOp::Linear { weight, .. } => {
                let lop = lin_parts(op).expect("linear op");
                let w = weights
                    .get(*weight)
                    .ok_or_else(|| MpcError::Model("weight index".into()))?;
                let mw = self.weight(&w.name)?.clone();
                // Dealer: B r; parties: F r_b (before the message, to overlap).
                let prod = if dealer {
                    lop.apply(&mask, &mw.b)?
                } else {
                    lop.apply(&mask, &mw.f)?
                };
                let o = lop.out_len();
                let plane = lop.bias_plane();
                let bias = w.bias.clone();
                // A fused gate after this convolution: its decisions' precomputation, from the
                // same input mask (dealer: `B_U r`; parties: `F_U r_b`).
                let zdeal = match fused_after(plan, i) {
                    Some((g, gp)) => {
                        let fp = gp.fused.as_ref().expect("fused_after checks");
                        let ukey = crate::fast::gate::u_key(g);
                        let mu = self.weight(&ukey)?;
                        let zprod = apply_u(
                            fp.sparse.as_ref(),
                            &mask,
                            if dealer { &mu.b } else { &mu.f },
                            fp.in_len,
                            gp.num_groups,
                        )?;
                        if !dealer {
                            crate::ring::check_len("fused gate beta", &fp.beta, gp.num_groups)?;
                        }
                        Some((
                            (ukey, fp.sparse.clone()),
                            gp.num_groups,
                            fp.in_len,
                            group_bits(&self.cfg, g, gp),
                            zprod,
                            fp.beta.clone(),
                        ))
                    }
                    None => None,
                };
                let (out, rz) = self.dealt(bytes, move |d, _| {
                    if last {
                        let c = d.corr_u64(o, dealer.then_some(&prod[..]))?;
                        if dealer {
                            return Ok(((Mat::Nothing, Vec::new()), None));
                        }
                        let mut pre: Vec<u64> = prod
                            .iter()
                            .zip(&c)
                            .map(|(p, c)| p.wrapping_add(*c).wrapping_neg())
                            .collect();
                        if !bias.is_empty() {
                            kernels::add_channel_bias(&mut pre, &bias, plane);
                        }
                        let m = Mat::Lin {
                            pre,
                            rt: Vec::new(),
                            gate: None,
                        };
                        return Ok(((m, Vec::new()), None));
                    }
                    let c = d.corr_kbit(o, ropen + f, dealer.then_some(&prod[..]))?;
                    let ry = d.rand_u64(o);
                    let mrf = ring_mask(ropen + f);
                    let rt_secret: Option<Vec<u64>> = ry
                        .secret
                        .as_ref()
                        .map(|s| s.iter().map(|v| (v & mrf) >> f).collect());
                    let rt = d.corr_kbit(o, r, rt_secret.as_deref())?;
                    // The fused gate's decisions: `z^ = U x^ - U r + beta + r_z mod 2^k`.
                    let gate = match zdeal {
                        Some(((ukey, sparse), groups, in_len, k, zprod, beta)) => {
                            let cnt = n * groups;
                            let c = d.corr_kbit(cnt, k, dealer.then_some(&zprod[..]))?;
                            let rzr = d.rand_u64(cnt);
                            if dealer {
                                let kmask = ring_mask(k);
                                let s = rzr.secret.expect("dealer");
                                return Ok((
                                    (Mat::Nothing, rt_secret.expect("dealer")),
                                    Some(s.iter().map(|v| v & kmask).collect()),
                                ));
                            }
                            let mut zpre: Vec<u64> = zprod
                                .iter()
                                .zip(&c)
                                .zip(&rzr.mine)
                                .map(|((p, c), z)| z.wrapping_sub(*p).wrapping_sub(*c))
                                .collect();
                            for img in zpre.chunks_exact_mut(groups) {
                                crate::ring::add_assign(img, &beta);
                            }
                            Some(Box::new(LinGate {
                                ukey,
                                sparse,
                                groups,
                                in_len,
                                k,
                                zpre,
                            }))
                        }
                        None => None,
                    };
                    if dealer {
                        return Ok(((Mat::Nothing, rt_secret.expect("dealer")), None));
                    }
                    let mut pre: Vec<u64> = prod
                        .iter()
                        .zip(&c)
                        .zip(&ry.mine)
                        .map(|((p, c), y)| y.wrapping_sub(*p).wrapping_sub(*c))
                        .collect();
                    if !bias.is_empty() {
                        kernels::add_channel_bias(&mut pre, &bias, plane);
                    }
                    Ok((
                        (
                            Mat::Lin {
                                pre,
                                rt: rt.clone(),
                                gate,
                            },
                            rt,
                        ),
                        None,
                    ))
                })?;
                self.fused_rz = rz;
                Ok(out)
            }
            PlanOp::AvgPool { geom, .. } => {
                let g = *geom;
                let secret = if dealer {
                    Some(pool_masked(&mask, &g, f, r)?)
                } else {
                    None
                };
                let o = g.n * g.c * g.oh() * g.ow();
                self.dealt(bytes, move |d, _| {
                    let rp = d.corr_kbit(o, r, secret.as_deref())?;
                    if dealer {
                        let s = secret.expect("dealer");
                        return Ok((Mat::Nothing, s));
                    }
                    Ok((Mat::Pool { rp: rp.clone() }, rp))
                })
            }
            PlanOp::Relu { name, .. } | PlanOp::Partial { name, .. } => {
                let k = self.cfg.for_layer(name, false);
                let sel: Vec<usize> = match op {
                    PlanOp::Partial {
                        c,
                        plane,
                        relu_channels,
                        ..
                    } => (0..n)
                        .flat_map(|img| {
                            let base = img * c * plane;
                            (base..base + relu_channels * plane).collect::<Vec<_>>()
                        })
                        .collect(),
                    PlanOp::Relu { len, .. } => (0..n * len).collect(),
                    _ => unreachable!("matched above"),
                };
                let cnt = sel.len();
                let shape = relu_shape(k, r)?;
                let kmask = ring_mask(k);
                let mmask = ring_mask(r);
                let alpha: Option<Vec<u64>> =
                    dealer.then(|| sel.iter().map(|&i| mask[i] & kmask).collect());
                self.dealt(bytes, move |d, _| {
                    let beta: Option<Vec<u64>> = alpha
                        .as_ref()
                        .map(|a| a.iter().flat_map(|&x| [1u64, x & mmask]).collect());
                    let keys = deal_keys(d, shape, cnt, alpha.as_deref(), beta.as_deref())?;
                    let rk = d.corr_kbit(cnt, r, alpha.as_deref())?;
                    let ro = d.rand_u64(cnt);
                    // The output mask: fresh on the ReLU elements, the input's elsewhere.
                    let mut out: Vec<u64> = mask.iter().map(|v| v & mmask).collect();
                    let rout: Vec<u64> = match &ro.secret {
                        Some(s) => s.iter().map(|v| v & mmask).collect(),
                        None => ro.mine.iter().map(|v| v & mmask).collect(),
                    };
                    for (j, &i) in sel.iter().enumerate() {
                        out[i] = rout[j];
                    }
                    if dealer {
                        return Ok((Mat::Nothing, out));
                    }
                    Ok((Mat::Relu { keys, rk, rout }, out))
                })
            }
            PlanOp::SharedRelu { name, plan: gp } => {
                let k = group_bits(&self.cfg, name, gp);
                let mv = if gp.fused.is_none() && gp.decider != DeciderKind::OneHot {
                    Some(self.weight(&v_key(name))?.clone())
                } else {
                    None
                };
                // Fused: the decision masks the convolution dealt (dealer only).
                let rz = self.fused_rz.take();
                if gp.fused.is_some() && dealer && rz.is_none() {
                    return Err(MpcError::Param(format!(
                        "mimo suite: {name}: no decision masks from the convolution before it"
                    )));
                }
                let rz = if gp.fused.is_some() { rz } else { None };
                let gp = gp.clone();
                self.dealt(bytes, move |d, rng| {
                    deal_group(d, rng, &gp, n, k, r, f, mv.as_ref(), rz, mask, dealer)
                })
            }
            PlanOp::Identity { .. } => Ok((Mat::Nothing, mask)),
            PlanOp::Add { .. } | PlanOp::MaxPool { .. } => Err(MpcError::Param(format!(
                "internal: mimo: {} is dealt by its own step",
                op.name()
            ))),
        }
    }
}

/// The candidates of every max-pool output of a batch (image-major, windows in order):
/// `pick(element)` of each window member.
fn window_candidates<T>(g: &MaxPoolGeom, mut pick: impl FnMut(usize) -> T) -> Vec<Vec<T>> {
    let il = g.in_len();
    let wins = g.windows();
    let mut out = Vec::with_capacity(g.n * wins.len());
    for img in 0..g.n {
        for w in &wins {
            out.push(w.iter().map(|&e| pick(img * il + e as usize)).collect());
        }
    }
    out
}

/// One level of the comparison tree on masked (or mask) candidates: `max(a, b) = b + ReLU(a -
/// b)` per pair in order (an odd last candidate waits), given the level's ReLU results `relu`
/// (one per pair); every candidate reduced modulo `2^m`.
fn tree_level<T: Copy>(
    cands: &mut [Vec<T>],
    relu: &[T],
    m: u32,
    add: impl Fn(T, T, u64) -> T,
    reduce: impl Fn(T, u64) -> T,
) -> Result<()> {
    let mmask = ring_mask(m);
    let mut j = 0;
    for c in cands.iter_mut() {
        let odd = (c.len() % 2 == 1).then(|| reduce(c[c.len() - 1], mmask));
        let mut next = Vec::with_capacity(c.len().div_ceil(2));
        for p in c.chunks_exact(2) {
            let r = *relu.get(j).ok_or_else(|| {
                MpcError::Param("internal: mimo: fewer ReLU results than pairs".into())
            })?;
            next.push(add(p[1], r, mmask));
            j += 1;
        }
        next.extend(odd);
        *c = next;
    }
    if j != relu.len() {
        return Err(MpcError::Param(format!(
            "internal: mimo: {} ReLU results for {j} pairs",
            relu.len()
        )));
    }
    Ok(())
}

/// The differences `a - b mod 2^k` of every pair of a tree level, in order.
fn tree_diffs(cands: &[Vec<u64>], k: u32) -> Vec<u64> {
    let kmask = ring_mask(k);
    cands
        .iter()
        .flat_map(|c| c.chunks_exact(2).map(|p| p[0].wrapping_sub(p[1]) & kmask))
        .collect()
}

impl MimoSuite {
    /// Offline, residual add: the output mask is the sum of the operands' masks modulo the
    /// output ring (the dealer adds its masks, the parties their shares): nothing is dealt.
    fn deal_add(&mut self, i: usize, ins: Vec<Vec<u64>>) -> Result<(Mat, Vec<u64>)> {
        let r = self
            .lay
            .as_ref()
            .ok_or_else(|| MpcError::Param("mimo suite: no layout".into()))?
            .out[i];
        let [a, b] = <[Vec<u64>; 2]>::try_from(ins)
            .map_err(|_| MpcError::Param("internal: mimo: an add of two masks".into()))?;
        crate::ring::check_len("add mask", &b, a.len())?;
        let m = ring_mask(r);
        let out = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.wrapping_add(*y) & m)
            .collect();
        Ok((Mat::Nothing, out))
    }

    /// Offline, max pooling: per tree level, the ReLU keys of the differences (point
    /// `r_a - r_b mod 2^k`, payload `(1, r')` mod the level's ring), the shares of `r'` and the
    /// fresh masks of the results; the winners' masks are `r_b + r_out`.
    fn deal_max_pool(
        &mut self,
        i: usize,
        g: &MaxPoolGeom,
        k: u32,
        mask: Vec<u64>,
        cost: OpCost,
    ) -> Result<(Mat, Vec<u64>)> {
        g.validate()?;
        let dealer = self.me() == 2;
        let out_ring = self
            .lay
            .as_ref()
            .ok_or_else(|| MpcError::Param("mimo suite: no layout".into()))?
            .out[i];
        let levels = max_pool_levels(g, k, out_ring);
        crate::ring::check_len("max-pool mask", &mask, g.n * g.in_len())?;
        let mut cands = window_candidates(g, |e| mask[e]);
        self.dealt((cost.to_p1, cost.to_p0), move |d, _| {
            let mut mats = Vec::with_capacity(levels.len());
            for &(cnt, m) in &levels {
                let shape = relu_shape(k, m)?;
                let mmask = ring_mask(m);
                let alpha: Option<Vec<u64>> = dealer.then(|| tree_diffs(&cands, k));
                if let Some(a) = &alpha {
                    if a.len() != cnt {
                        return Err(MpcError::Param(format!(
                            "internal: mimo: {} max-pool pairs, the plan says {cnt}",
                            a.len()
                        )));
                    }
                }
                let beta: Option<Vec<u64>> = alpha
                    .as_ref()
                    .map(|a| a.iter().flat_map(|&x| [1u64, x & mmask]).collect());
                let keys = deal_keys(d, shape, cnt, alpha.as_deref(), beta.as_deref())?;
                let rk = d.corr_kbit(cnt, m, alpha.as_deref())?;
                let ro = d.rand_u64(cnt);
                let rout: Vec<u64> = ro
                    .secret
                    .as_ref()
                    .unwrap_or(&ro.mine)
                    .iter()
                    .map(|v| v & mmask)
                    .collect();
                tree_level(
                    &mut cands,
                    &rout,
                    m,
                    |b, r, mm| b.wrapping_add(r) & mm,
                    |v, mm| v & mm,
                )?;
                mats.push(ReluLevel { keys, rk, rout });
            }
            let om = ring_mask(out_ring);
            let out: Vec<u64> = cands
                .iter()
                .map(|c| c.first().map_or(0, |v| v & om))
                .collect();
            if dealer {
                return Ok((Mat::Nothing, out));
            }
            Ok((Mat::MaxPool(mats), out))
        })
    }

    /// Online, residual add: `x^ + y^` with mask shares `r_x + r_y`, modulo the output ring
    /// (local).
    fn add_online(&mut self, a: &Shared, b: &Shared) -> Result<Shared> {
        let me = self.me();
        let mat = self.next_mat("add")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        if !matches!(mat, Mat::Nothing) {
            return Err(MpcError::Param("mimo suite: expected add material".into()));
        }
        let x = self.input_of(0, a)?;
        let y = self.input_of(1, b)?;
        let r = self.out_ring()?;
        if x.bits < r || y.bits < r {
            return Err(MpcError::Param(format!(
                "mimo suite: an add of values modulo 2^{} and 2^{} into 2^{r}",
                x.bits, y.bits
            )));
        }
        crate::ring::check_len("add operand", &y.hat, x.hat.len())?;
        let m = ring_mask(r);
        let hat = x
            .hat
            .iter()
            .zip(&y.hat)
            .map(|(u, v)| u.wrapping_add(*v) & m)
            .collect();
        let rr =
            x.r.iter()
                .zip(&y.r)
                .map(|(u, v)| u.wrapping_add(*v) & m)
                .collect();
        Ok(self.emit(Masked {
            hat,
            r: rr,
            bits: r,
        }))
    }

    /// Online, max pooling: per tree level one ReLU gate on the masked differences `a^ - b^`
    /// (mask `r_a - r_b`), opened modulo the level's ring, then the local add `b + ReLU(a - b)`.
    fn max_pool_online(&mut self, x: &Shared, g: &MaxPoolGeom) -> Result<Shared> {
        let me = self.me();
        let mat = self.next_mat("max-pool")?;
        if me == 2 {
            self.pos += 1;
            return Ok(Vec::new());
        }
        g.validate()?;
        let inp = self.take_input(x)?;
        let Mat::MaxPool(levels) = mat else {
            return Err(MpcError::Param(
                "mimo suite: expected max-pool material".into(),
            ));
        };
        let i = self.op_index()?;
        let want = self.lay.as_ref().expect("offline ran").inp[i];
        if inp.bits < want {
            return Err(MpcError::Param(format!(
                "mimo suite: {} got its input modulo 2^{}, needs 2^{want}",
                self.names[i], inp.bits
            )));
        }
        crate::ring::check_len("max_pool input", &inp.hat, g.n * g.in_len())?;
        let mut hats = window_candidates(g, |e| inp.hat[e]);
        let mut rs = window_candidates(g, |e| inp.r[e]);
        for lv in levels {
            let (k, m) = (lv.keys.shape.n, lv.keys.shape.m);
            let th = tree_diffs(&hats, k);
            crate::ring::check_len("max-pool level", &th, lv.rout.len())?;
            let mut y = relu_gate_eval(me, &lv.keys, &th, &lv.rk)?;
            crate::ring::add_assign(&mut y, &lv.rout);
            let yh = open_bits(&mut self.comm, &y, m)?;
            let add = |b: u64, r: u64, mm: u64| b.wrapping_add(r) & mm;
            let red = |v: u64, mm: u64| v & mm;
            tree_level(&mut hats, &yh, m, add, red)?;
            tree_level(&mut rs, &lv.rout, m, add, red)?;
        }
        let out = self.out_ring()?;
        let om = ring_mask(out);
        let first = |c: Vec<Vec<u64>>| -> Vec<u64> {
            c.into_iter()
                .map(|v| v.first().map_or(0, |x| x & om))
                .collect()
        };
        Ok(self.emit(Masked {
            hat: first(hats),
            r: first(rs),
            bits: out,
        }))
    }
}

/// Deal a sharing layer (see the module docs); returns the material and the output mask.
#[allow(clippy::too_many_arguments)]
fn deal_group(
    d: &mut Deal,
    rng: Option<&mut Prg>,
    gp: &GroupPlan,
    n: usize,
    k: u32,
    m: u32,
    f: u32,
    mv: Option<&MaskedWeight>,
    fused_rz: Option<Vec<u64>>,
    mask: Vec<u64>,
    dealer: bool,
) -> Result<(Mat, Vec<u64>)> {
    let _ = f;
    let kmask = ring_mask(k);
    let mmask = ring_mask(m);
    let total = n * gp.len;
    let groups = n * gp.num_groups;
    let noisy = gp.noise > 0.0;
    crate::ring::check_len("sharing mask", &mask, total)?;
    // Decision masks and (Learned/Fc) the decision values' precomputation.
    let (zpre, rz): (Vec<u64>, Vec<u64>) = match (mv, fused_rz) {
        // Fused gate: the decisions were opened with the convolution (the dealer knows their
        // masks; P0/P1 need nothing here).
        (_, Some(rz)) => {
            crate::ring::check_len("fused decision masks", &rz, groups)?;
            (Vec::new(), rz)
        }
        (None, None) if gp.fused.is_some() => (Vec::new(), Vec::new()),
        (Some(mv), None) => {
            // Dealer: sum_{i in g} B_v,i r_i; parties: sum F_v,i r_i.
            let mut prod = vec![0u64; groups];
            let wv = if dealer { &mv.b } else { &mv.f };
            crate::ring::check_len("decider mask", wv, gp.len)?;
            for img in 0..n {
                for (i, &g) in gp.group_of.iter().enumerate() {
                    let gi = img * gp.num_groups + g as usize;
                    prod[gi] = prod[gi].wrapping_add(wv[i].wrapping_mul(mask[img * gp.len + i]));
                }
            }
            let c = d.corr_kbit(groups, k, dealer.then_some(&prod[..]))?;
            let rzr = d.rand_u64(groups);
            if dealer {
                let s = rzr.secret.expect("dealer");
                (Vec::new(), s.iter().map(|v| v & kmask).collect())
            } else {
                let mut pre: Vec<u64> = prod
                    .iter()
                    .zip(&c)
                    .zip(&rzr.mine)
                    .map(|((p, c), z)| z.wrapping_sub(*p).wrapping_sub(*c))
                    .collect();
                if gp.decider == DeciderKind::Fc {
                    for img in 0..n {
                        crate::ring::add_assign(
                            &mut pre[img * gp.num_groups..(img + 1) * gp.num_groups],
                            &gp.bias,
                        );
                    }
                }
                (pre, rzr.mine)
            }
        }
        (None, None) => {
            let rz: Vec<u64> = (0..groups)
                .map(|gi| {
                    let (img, g) = (gi / gp.num_groups, gi % gp.num_groups);
                    mask[img * gp.len + gp.leaders[g] as usize] & kmask
                })
                .collect();
            (Vec::new(), rz)
        }
    };
    // Noise bits (dealer's secret) and shares of nb_i, nb_i r_i.
    let nb_secret: Option<Vec<u64>> = if noisy && dealer {
        let rng = rng.ok_or_else(|| MpcError::Param("dealer noise source missing".into()))?;
        Some(
            rng.bernoulli(total, gp.noise as f64)
                .into_iter()
                .map(u64::from)
                .collect(),
        )
    } else {
        None
    };
    let members = members_of(gp);
    let mut buckets = Vec::new();
    for (size, _) in group_sizes(gp) {
        let gs: Vec<usize> = (0..gp.num_groups)
            .filter(|&g| members[g].len() == size)
            .collect();
        let shape = Shape::new(k, group_w(size, noisy), m)?;
        let count = n * gs.len();
        let (alpha, beta) = if dealer {
            let mut a = Vec::with_capacity(count);
            let mut b = Vec::with_capacity(count * shape.w);
            for img in 0..n {
                for &g in &gs {
                    a.push(rz[img * gp.num_groups + g]);
                    if !noisy {
                        b.push(1);
                    }
                    for &e in &members[g] {
                        let idx = img * gp.len + e;
                        let ri = mask[idx] & mmask;
                        match &nb_secret {
                            Some(nb) => {
                                let p = 1u64.wrapping_sub(2 * nb[idx]) & mmask;
                                b.push(p);
                                b.push(p.wrapping_mul(ri) & mmask);
                            }
                            None => b.push(ri),
                        }
                    }
                }
            }
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let keys = deal_keys(d, shape, count, alpha.as_deref(), beta.as_deref())?;
        buckets.push((size, keys));
    }
    let (nb, nbr) = if noisy {
        let nbr_secret: Option<Vec<u64>> = nb_secret.as_ref().map(|nb| {
            nb.iter()
                .zip(&mask)
                .map(|(b, r)| b.wrapping_mul(*r) & mmask)
                .collect()
        });
        (
            d.corr_kbit(total, m, nb_secret.as_deref())?,
            d.corr_kbit(total, m, nbr_secret.as_deref())?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let ro = d.rand_u64(total);
    if dealer {
        let out = ro
            .secret
            .expect("dealer")
            .iter()
            .map(|v| v & mmask)
            .collect();
        return Ok((Mat::Nothing, out));
    }
    let rout: Vec<u64> = ro.mine.iter().map(|v| v & mmask).collect();
    let mask_out = rout.clone();
    Ok((
        Mat::Group(Box::new(GroupMat {
            buckets,
            zpre,
            nb,
            nbr,
            rout,
        })),
        mask_out,
    ))
}

impl Suite for MimoSuite {
    fn name(&self) -> &'static str {
        "mimo"
    }

    fn comm(&mut self) -> &mut Comm {
        &mut self.comm
    }

    fn frac_bits(&self) -> u32 {
        self.frac
    }

    fn prepare(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        let me = self.me();
        let seeds = if me == 2 {
            self.noise_rng = Some(noise_source(&self.test)?);
            Some((dealer_seed(&self.test, 0)?, dealer_seed(&self.test, 1)?))
        } else {
            None
        };
        self.deal = Some(crate::fast::session_deal(&mut self.comm, seeds)?);
        let layout = mask_layout(plan, weights)?;
        if let Some(fixed) = self.fixed.take() {
            // Serving: the masks are fixed for the owner-helper pair and `F` was computed once
            // (`crate::fast::masks`); nothing is drawn from this session's dealer streams and
            // nothing is opened.
            let lens: Vec<usize> = layout.iter().map(|m| m.len).collect();
            let installed = fixed.install(me, &lens)?;
            self.weights = layout.into_iter().map(|m| m.key).zip(installed).collect();
            return Ok(());
        }
        // A one-off run: mask every tensor of the layout with fresh dealt masks and open
        // `F = W - B` once, as `fast` does.
        let deal = self.deal.as_mut().expect("set above");
        self.weights
            .extend(crate::fast::mask_and_open(&mut self.comm, deal, layout)?);
        Ok(())
    }

    fn offline(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        self.queue.clear();
        self.pos = 0;
        self.graph = graph(plan)?;
        self.vals = vec![None; plan.ops.len() + 1];
        self.opened = false;
        self.fused_rz = None;
        self.fused_zh = None;
        self.visible = visible(plan);
        self.names = plan.ops.iter().map(|op| op.name().to_string()).collect();
        self.last = *self
            .visible
            .last()
            .ok_or_else(|| MpcError::Model("mimo: a model without layers".into()))?;
        let f = self.frac;
        let costs = op_costs(plan, &self.cfg, f)?;
        let need: usize = costs.iter().map(|c| c.to_p1 + c.to_p0).sum();
        if need > MAX_OFFLINE_BYTES {
            return Err(MpcError::Param(format!(
                "the mimo offline material of this batch of {} would be {:.1} GB (held by each \
                 party until used); run smaller batches",
                plan.n,
                need as f64 / 1e9
            )));
        }
        self.lay = Some(layout(plan, &self.cfg, f)?);
        let me = self.me();
        // The input mask (seed-derived; the dealer knows the sum).
        self.comm.set_label(plan.ops[self.visible[0]].name());
        let r = self.deal_mut()?.rand_u64(plan.n * plan.input_len);
        let inbits = self.lay.as_ref().expect("set").input;
        let im = ring_mask(inbits);
        let mask: Vec<u64> = if me == 2 {
            r.secret.expect("dealer").iter().map(|v| v & im).collect()
        } else {
            r.mine.iter().map(|v| v & im).collect()
        };
        self.input_mask = if me == 2 { Vec::new() } else { mask.clone() };
        // Every tensor's mask (the dealer's value, a party's share) until its last reader.
        let g = self.graph.clone();
        let mut masks: Vec<Option<Vec<u64>>> = vec![None; plan.ops.len() + 1];
        masks[0] = Some(mask);
        for i in self.visible.clone() {
            self.comm.set_label(plan.ops[i].name());
            let mut ins = Vec::with_capacity(g.srcs[i].len());
            for &t in &g.srcs[i] {
                let once = g.srcs[i].iter().filter(|&&s| s == t).count() == 1;
                let m = if once && g.last_use[t] == i {
                    masks[t].take()
                } else {
                    masks[t].clone()
                };
                ins.push(m.ok_or_else(|| {
                    MpcError::Param(format!("internal: mimo: no mask of tensor {t}"))
                })?);
            }
            for &t in &g.srcs[i] {
                if g.last_use[t] == i {
                    masks[t] = None;
                }
            }
            let (mat, out) = match &plan.ops[i] {
                PlanOp::Add { .. } => self.deal_add(i, ins)?,
                PlanOp::MaxPool { name, geom } => {
                    let k = self.cfg.for_layer(name, false);
                    let m = ins.pop().unwrap_or_default();
                    self.deal_max_pool(i, geom, k, m, costs[i])?
                }
                _ => {
                    let m = ins.pop().unwrap_or_default();
                    self.deal_op(plan, i, weights, m, costs[i])?
                }
            };
            self.queue.push_back(mat);
            if g.last_use[i + 1] != usize::MAX {
                masks[i + 1] = Some(out);
            }
        }
        Ok(())
    }

    fn conv2d(&mut self, x: &Shared, w: &WeightShare, g: &kernels::ConvGeom) -> Result<Shared> {
        self.lin_online(x, &w.name, &LinOp::Conv(*g))
    }

    fn linear(&mut self, x: &Shared, w: &WeightShare, g: &LinearGeom) -> Result<Shared> {
        self.lin_online(
            x,
            &w.name,
            &LinOp::Fc {
                n: g.n,
                in_f: g.in_f,
                out_f: g.out_f,
            },
        )
    }

    fn avg_pool(&mut self, x: &Shared, g: &PoolGeom) -> Result<Shared> {
        self.pool_online(x, g)
    }

    fn relu(&mut self, x: &Shared, _len: usize) -> Result<Shared> {
        self.relu_online(x, None)
    }

    fn partial_relu(
        &mut self,
        x: &Shared,
        n: usize,
        c: usize,
        plane: usize,
        relu_channels: usize,
    ) -> Result<Shared> {
        if relu_channels > c {
            return Err(MpcError::Shape(format!(
                "partial ReLU on {relu_channels} of {c} channels"
            )));
        }
        let sel = (0..n)
            .flat_map(|img| {
                let base = img * c * plane;
                base..base + relu_channels * plane
            })
            .collect();
        self.relu_online(x, Some(sel))
    }

    fn offline_twin(&mut self, comm: Comm) -> Result<Option<Box<dyn Suite>>> {
        if self.deal.is_none() {
            return Err(MpcError::Param(
                "mimo suite: an offline twin needs a prepared suite".into(),
            ));
        }
        if comm.party() != self.me() {
            return Err(MpcError::Param(format!(
                "mimo suite: an offline twin of party {} on party {}'s connection",
                self.me(),
                comm.party()
            )));
        }
        // The dealer streams and noise source move to the twin (only `offline` draws from
        // them); the masked weights are shared.
        let mut twin = MimoSuite::new(comm, self.frac, self.cfg.clone());
        twin.deal = self.deal.take();
        twin.noise_rng = self.noise_rng.take();
        twin.weights = self.weights.clone();
        twin.test = self.test.clone();
        Ok(Some(Box::new(twin)))
    }

    fn take_material(&mut self) -> Result<crate::suite::Material> {
        Ok(Box::new(MimoMaterial {
            queue: std::mem::take(&mut self.queue),
            input_mask: std::mem::take(&mut self.input_mask),
            lay: self.lay.take(),
            visible: std::mem::take(&mut self.visible),
            names: std::mem::take(&mut self.names),
            last: self.last,
            graph: std::mem::take(&mut self.graph),
        }))
    }

    fn install_material(&mut self, m: crate::suite::Material) -> Result<()> {
        if !self.queue.is_empty() {
            return Err(MpcError::Param(
                "mimo suite: material installed before the previous batch used up its own".into(),
            ));
        }
        let m = m
            .downcast::<MimoMaterial>()
            .map_err(|_| MpcError::Param("mimo suite: material of another suite".into()))?;
        let MimoMaterial {
            queue,
            input_mask,
            lay,
            visible,
            names,
            last,
            graph,
        } = *m;
        self.queue = queue;
        self.input_mask = input_mask;
        self.lay = lay;
        self.visible = visible;
        self.names = names;
        self.last = last;
        self.vals = vec![None; graph.srcs.len() + 1];
        self.opened = false;
        self.graph = graph;
        self.pos = 0;
        self.fused_zh = None;
        Ok(())
    }

    fn add(&mut self, a: &Shared, b: &Shared) -> Result<Shared> {
        self.add_online(a, b)
    }

    fn max_pool(&mut self, x: &Shared, g: &MaxPoolGeom) -> Result<Shared> {
        self.max_pool_online(x, g)
    }

    fn shared_relu(&mut self, x: &Shared, n: usize, plan: &GroupPlan) -> Result<Shared> {
        self.group_online(x, n, plan)
    }
}

/// One batch's dealer material and the plan facts its online phase needs (pipelining: dealt by
/// the offline twin, installed in the online suite).
struct MimoMaterial {
    queue: VecDeque<Mat>,
    input_mask: Vec<u64>,
    lay: Option<Layout>,
    visible: Vec<usize>,
    names: Vec<String>,
    last: usize,
    graph: Graph,
}

/// A runner factory ([`crate::runner::SuiteFactory`]) for the `mimo` suite with the rings of
/// `cfg` (see [`config_for_model`]).
pub fn factory(
    cfg: MimoConfig,
) -> impl Fn(Comm, crate::fixed::FixedPoint) -> Result<Box<dyn Suite>> + Sync {
    move |comm, fp| Ok(Box::new(MimoSuite::new(comm, fp.frac_bits, cfg.clone())) as Box<dyn Suite>)
}

/// [`factory`] with test hooks on the dealer.
#[cfg(test)]
pub(crate) fn test_factory(
    cfg: MimoConfig,
    hooks: TestHooks,
) -> impl Fn(Comm, crate::fixed::FixedPoint) -> Result<Box<dyn Suite>> + Sync {
    move |comm, fp| {
        let mut s = MimoSuite::new(comm, fp.frac_bits, cfg.clone());
        s.set_test_hooks(hooks.clone());
        Ok(Box::new(s) as Box<dyn Suite>)
    }
}
