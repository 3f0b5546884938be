//! The `fast` protocol suite (semi-honest, P0/P1 hold additive shares over Z_2^64, P2 is a
//! dealer that never sees data and is idle online).
//!
//! # Phases
//! * **Model load** ([`Suite::prepare`], offline): the dealer sends P0 and P1 one PRG seed each
//!   (16 bytes); every weight tensor `W` (and every decider `v`) is masked with a seed-derived
//!   `B` and `F = W - B` is opened once ([`linear`]). When serving, the masks are instead fixed
//!   per owner-helper pair and `F` is computed once by the owner ([`masks`]).
//! * **Offline** ([`Suite::offline`], per batch): the dealer deals, layer by layer, all material
//!   of the batch. Everything random is seed-derived; only correlated values (products, bits of
//!   masks) cost bytes and go to P1 alone ([`deal`]). One message per layer.
//! * **Online**: P0 and P1 only. Linear layers open `X - A` once; ReLUs open `y + r` once,
//!   compare on a small ring `Z_2^k` with a log-depth tree of bit Beaver multiplications
//!   ([`cmp`]) and select with one more opened bit; ReLU-sharing layers compare only the group
//!   values ([`share`]); whole-channel gates right after a convolution are fused with it
//!   ([`gate`]: decisions from the convolution's input, the gate folded into the convolution's
//!   weights or applied after the following pooling). With [`CmpMode::Fss`] the comparisons are instead evaluated with
//!   distributed comparison functions ([`crate::fss`]): one opening, no tree rounds.
//!
//! # Comparison ring
//! A comparison on `k` bits is correct when `|y| < 2^(k-1)`. [`FastConfig`] holds `k` per
//! layer; `bounds::comparison_bits` derives a provable `k` for every layer from the plaintext
//! model (interval arithmetic on the fixed-point weights, done by the model owner; `k` is then
//! public, which reveals a power-of-two bound on the layer's activations; see the threat model
//! in the workspace README). A bound that would need more than 63 bits is an error.
//!
//! # Truncation
//! Local share truncation after each product (see [`crate::fixed`]): at most one unit in the
//! last place of error, except with probability at most `2^(e+1-64)` per element for values
//! below `2^e`. [`config_for_model`] proves `e` for every truncating layer and refuses a model
//! whose per-inference failure bound exceeds [`bounds::MAX_TRUNC_FAILURE`] (see [`bounds`]).
//!
//! # Inputs
//! The rings and truncation bounds hold for normalized inputs of pixels in `[0, 1]`
//! ([`input_abs_max`]); the client refuses any other input ([`crate::protocol::check_input`]).

pub mod bits;

pub mod bounds;
pub mod cmp;
pub mod deal;
pub mod gate;
#[cfg(test)]
mod gate_tests;
pub mod linear;
pub mod masks;
pub mod share;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod view_tests;

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::kernels::{self, ConvGeom};
use crate::plain::GateMode;
use crate::prg::{self, Prg};
use crate::suite::{
    DeciderKind, GroupPlan, LinearGeom, Plan, PlanOp, PoolGeom, Shared, Suite, WeightShare,
};
use deal::Deal;
use linear::{LinMat, LinOp, MaskedWeight};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// How comparisons are evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpMode {
    /// Dealer edaBits + log-depth bit circuit (small dealer material, `log k` rounds).
    Tree,
    /// Distributed comparison functions (one round, large dealer keys).
    Fss,
}

/// Comparison ring sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastConfig {
    /// Bits per layer name (ReLU layers: the pre-activation; ReLU sharing: the group value).
    pub bits: BTreeMap<String, u32>,
    /// Bits for ReLU inputs of layers not in `bits` (`f`-bit fixed point).
    pub default_bits: u32,
    /// Bits for Learned/Fc group values of layers not in `bits` (`2f`-bit fixed point).
    pub default_bits_2f: u32,
}

impl FastConfig {
    /// Safe defaults for `f` fractional bits: values below `2^(19)` in magnitude
    /// (`33` bits at `f = 13`), group values with `2f` bits likewise.
    pub fn defaults(frac_bits: u32) -> FastConfig {
        let odd = |b: u32| if b.is_multiple_of(2) { b + 1 } else { b };
        FastConfig {
            bits: BTreeMap::new(),
            default_bits: odd(frac_bits + 20).min(63),
            default_bits_2f: odd(2 * frac_bits + 20).min(63),
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

enum Mat {
    Lin(LinMat),
    Relu(cmp::ReluMat),
    Group(Box<share::GroupMat>, Option<MaskedWeight>),
    Gate(Box<GateRun>),
}

/// A fused block's material and the public/shared values its online steps need.
struct GateRun {
    mat: gate::GateMat,
    /// The gate layer's name (its traffic is labelled with it).
    act: String,
    /// Weight keys: the convolution, the gate's `U`.
    conv_key: String,
    u_key: String,
    /// This party's shares of `beta` and of the convolution bias.
    beta: Shared,
    conv_bias: Shared,
}

/// State carried between the layers of a fused Pool-mode block.
enum Pending {
    /// After the convolution: the ungated pooled values and the decision value shares.
    Conv(Box<GateRun>, Vec<u64>, Vec<u64>),
    /// After the gate: the gated pooled output (returned by the pooling layer).
    Gated(Vec<u64>),
}

/// The fused block (gate index) whose convolution is `ops[i]`.
fn fused_head(ops: &[PlanOp], i: usize) -> Option<(&ConvGeom, usize, &str, &GroupPlan)> {
    match (ops.get(i), ops.get(i + 1)) {
        (Some(PlanOp::Conv { geom, weight, .. }), Some(PlanOp::SharedRelu { name, plan }))
            if plan.fused.is_some() =>
        {
            Some((geom, *weight, name.as_str(), plan))
        }
        _ => None,
    }
}

/// The public geometry of the fused block at `ops[i]`.
pub(crate) fn gate_geom(
    ops: &[PlanOp],
    i: usize,
    cfg: &FastConfig,
    mode: CmpMode,
) -> Result<Option<gate::GateGeom>> {
    let Some((geom, _, act, gp)) = fused_head(ops, i) else {
        return Ok(None);
    };
    let fp = gp.fused.as_ref().expect("fused_head checks");
    if gp.noise > 0.0 || gp.decider == DeciderKind::Fc || fp.sparse.is_some() {
        return Err(MpcError::Model(format!(
            "{act}: the fast suites run noise-free learned/one-hot whole-channel fused gates \
             only (prepare the model for fast)"
        )));
    }
    let pool: Option<PoolGeom> = match (fp.mode, ops.get(i + 2)) {
        (GateMode::Pool, Some(PlanOp::AvgPool { geom, .. })) => Some(*geom),
        (GateMode::Pool, _) => {
            return Err(MpcError::Model(format!(
                "{act}: a pooled gate must be followed by average pooling"
            )))
        }
        (GateMode::Fold, _) => None,
    };
    Ok(Some(gate::GateGeom {
        mode: fp.mode,
        conv: *geom,
        pool,
        k: cfg.for_layer(act, true),
        cmp_mode: mode,
    }))
}

/// The `fast` (or `fss`) suite as run by one party.
pub struct FastSuite {
    comm: Comm,
    frac: u32,
    cfg: FastConfig,
    mode: CmpMode,
    deal: Option<Deal>,
    /// The masked weights of the one-time setup (shared with an offline twin).
    weights: Arc<BTreeMap<String, MaskedWeight>>,
    queue: VecDeque<Mat>,
    noise_rng: Option<Prg>,
    pending: Option<Pending>,
    /// Serving: masks fixed for the owner-helper pair, installed by `prepare` instead of the
    /// masked opening ([`masks`]).
    fixed: Option<masks::FixedMasks>,
    test: TestHooks,
}

/// Test-only control of the dealer's randomness in the `fast`, `fss` and `mimo` suites (its
/// fields exist only in the crate's tests; elsewhere the dealer's randomness is always fresh
/// from the OS).
#[derive(Clone, Debug, Default)]
pub(crate) struct TestHooks {
    /// The seed the dealer shares with P0 / P1 (instead of a fresh one from the OS).
    #[cfg(test)]
    pub seeds: [Option<prg::Seed>; 2],
    /// The dealer's private noise source (instead of a fresh one from the OS).
    #[cfg(test)]
    pub noise_seed: Option<prg::Seed>,
}

/// The seed the dealer shares with `party` (fresh from the OS, unless `hooks` fix it).
pub(crate) fn dealer_seed(hooks: &TestHooks, party: usize) -> Result<prg::Seed> {
    #[cfg(test)]
    if let Some(s) = hooks.seeds[party] {
        return Ok(s);
    }
    let _ = (hooks, party);
    prg::os_seed()
}

/// The dealer's private noise source (fresh from the OS, unless `hooks` fix it).
pub(crate) fn noise_source(hooks: &TestHooks) -> Result<Prg> {
    #[cfg(test)]
    if let Some(s) = hooks.noise_seed {
        return Ok(Prg::from_seed(s));
    }
    let _ = hooks;
    Prg::from_os()
}

impl FastSuite {
    /// A suite for the party behind `comm`.
    pub fn new(comm: Comm, frac_bits: u32, cfg: FastConfig, mode: CmpMode) -> FastSuite {
        FastSuite {
            comm,
            frac: frac_bits,
            cfg,
            mode,
            deal: None,
            weights: Arc::new(BTreeMap::new()),
            queue: VecDeque::new(),
            noise_rng: None,
            pending: None,
            fixed: None,
            test: TestHooks::default(),
        }
    }

    /// This suite's [`Suite::prepare`] installs the weight masks `m` (fixed across the sessions
    /// of an owner-helper pair, see [`masks`]) instead of dealing fresh masks and opening
    /// `F = W - B`; the weight shares passed to `prepare` are then not used (and may be empty).
    /// The session's dealer streams (seeds from `prepare`) stay fresh.
    pub fn with_fixed_masks(mut self, m: masks::FixedMasks) -> FastSuite {
        self.fixed = Some(m);
        self
    }

    /// Test only: fix the dealer's seeds / noise source of this (dealer's) suite.
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

    /// Run `f` (a dealing function) on every party: P0/P1 first receive the dealer's message
    /// for this step (P1: corrections, `bytes.0`; P0: public material, `bytes.1`), the dealer
    /// deals and ships. The shipped sizes are checked against the cost formulas.
    fn dealt<T>(
        &mut self,
        bytes: (usize, usize),
        f: impl FnOnce(&mut Deal, Option<&mut Prg>) -> Result<T>,
    ) -> Result<T> {
        let me = self.me();
        let expect_mine = match me {
            0 => bytes.1,
            1 => bytes.0,
            _ => 0,
        };
        if me != 2 && expect_mine > 0 {
            let got = self.comm.round(vec![], &[2])?.pop().unwrap_or_default();
            let deal = self
                .deal
                .as_mut()
                .ok_or_else(|| MpcError::Param("fast suite used before prepare".into()))?;
            if me == 0 {
                deal.feed0(got);
            } else {
                deal.feed(got);
            }
        }
        let deal = self
            .deal
            .as_mut()
            .ok_or_else(|| MpcError::Param("fast suite used before prepare".into()))?;
        let out = f(deal, self.noise_rng.as_mut())?;
        if me != 2 {
            deal.finish()?;
        } else {
            let c1 = deal.take_corrections();
            let c0 = deal.take_public0();
            if c1.len() != bytes.0 || c0.len() != bytes.1 {
                return Err(MpcError::Param(format!(
                    "internal: dealt ({}, {}) bytes, cost formula says {bytes:?}",
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

    fn lin_online(&mut self, x: &Shared, wname: &str, bias: &Shared, op: &LinOp) -> Result<Shared> {
        let mat = match self.queue.pop_front() {
            Some(Mat::Lin(m)) => m,
            _ => {
                return Err(MpcError::Param(format!(
                    "fast suite: no linear material for {wname}"
                )))
            }
        };
        if self.me() == 2 {
            return Ok(Vec::new());
        }
        crate::ring::check_len("linear input", x, op.in_len())?;
        let masked: Vec<u64> = x
            .iter()
            .zip(&mat.a)
            .map(|(a, b)| a.wrapping_sub(*b))
            .collect();
        let e = cmp::open_u64(&mut self.comm, &masked)?;
        let mw = self
            .weights
            .get(wname)
            .ok_or_else(|| MpcError::Model(format!("weight {wname} was not prepared")))?;
        let mut y = op.apply(&e, &mw.online)?;
        crate::ring::add_assign(&mut y, &mat.pre);
        if !bias.is_empty() {
            kernels::add_channel_bias(&mut y, bias, op.bias_plane());
        }
        crate::fixed::trunc_share_vec(&mut y, self.frac, self.me());
        Ok(y)
    }

    /// The convolution of a fused block: Fold returns the gated output; Pool opens the input,
    /// keeps the pooled values for the gate and returns zeros (the layer is not materialized).
    fn gate_conv(&mut self, run: GateRun, x: &Shared, g: &ConvGeom) -> Result<Shared> {
        if self.me() == 2 {
            return Ok(Vec::new());
        }
        let get = |k: &str| {
            self.weights
                .get(k)
                .ok_or_else(|| MpcError::Model(format!("weight {k} was not prepared")))
        };
        let (mw, mu) = (get(&run.conv_key)?, get(&run.u_key)?);
        match run.mat.geom.mode {
            GateMode::Fold => {
                let mb = get(&gate::bias_key(&run.conv_key))?;
                let gw = gate::GateWeights {
                    w: mw,
                    bias: Some(mb),
                    u: mu,
                };
                gate::fold_online(
                    &mut self.comm,
                    &run.mat,
                    &gw,
                    &run.beta,
                    x,
                    self.frac,
                    &run.act,
                )
            }
            GateMode::Pool => {
                let gw = gate::GateWeights {
                    w: mw,
                    bias: None,
                    u: mu,
                };
                let (q, z) = gate::pool_conv_online(
                    &mut self.comm,
                    &run.mat,
                    &gw,
                    &run.conv_bias,
                    &run.beta,
                    x,
                    self.frac,
                )?;
                self.pending = Some(Pending::Conv(Box::new(run), q, z));
                Ok(vec![0; g.out_len()])
            }
        }
    }

    /// The gate layer of a fused block.
    fn gate_layer(
        &mut self,
        x: &Shared,
        n: usize,
        plan: &GroupPlan,
        mode: GateMode,
    ) -> Result<Shared> {
        if self.me() == 2 {
            return Ok(Vec::new());
        }
        match mode {
            GateMode::Fold => Ok(x.clone()),
            GateMode::Pool => match self.pending.take() {
                Some(Pending::Conv(run, q, z)) => {
                    let y = gate::pool_gate_online(&mut self.comm, &run.mat, &q, &z)?;
                    self.pending = Some(Pending::Gated(y));
                    Ok(vec![0; n * plan.len])
                }
                _ => Err(MpcError::Param(
                    "fast suite: pooled gate without its convolution".into(),
                )),
            },
        }
    }

    fn deal_relu_op(&mut self, len: usize, k: u32) -> Result<Mat> {
        let mode = self.mode;
        let bytes = cmp::relu_offline_bytes(len, k, mode)?;
        Ok(Mat::Relu(
            self.dealt(bytes, |d, _| cmp::deal_relu(d, len, k, mode))?,
        ))
    }

    fn relu_with(&mut self, x: &Shared, mat: Mat) -> Result<Shared> {
        if self.me() == 2 {
            return Ok(Vec::new());
        }
        match mat {
            Mat::Relu(m) => cmp::relu_online(&mut self.comm, &m, x),
            #[allow(unreachable_patterns)]
            _ => Err(MpcError::Param("fast suite: expected ReLU material".into())),
        }
    }
}

/// [`factory`] with test hooks on the dealer (fixed seeds / noise source).
#[cfg(test)]
pub(crate) fn test_factory(
    cfg: FastConfig,
    mode: CmpMode,
    hooks: TestHooks,
) -> impl Fn(Comm, crate::fixed::FixedPoint) -> Result<Box<dyn Suite>> + Sync {
    move |comm, fp| {
        let mut s = FastSuite::new(comm, fp.frac_bits, cfg.clone(), mode);
        s.set_test_hooks(hooks.clone());
        Ok(Box::new(s) as Box<dyn Suite>)
    }
}

/// A runner factory ([`crate::runner::SuiteFactory`]) for the `fast` (`CmpMode::Tree`) or `fss`
/// suite with the comparison sizes of `cfg` (see [`config_for_model`]).
pub fn factory(
    cfg: FastConfig,
    mode: CmpMode,
) -> impl Fn(Comm, crate::fixed::FixedPoint) -> Result<Box<dyn Suite>> + Sync {
    move |comm, fp| {
        Ok(Box::new(FastSuite::new(comm, fp.frac_bits, cfg.clone(), mode)) as Box<dyn Suite>)
    }
}

/// Largest magnitude of a normalized input value for images with pixels in `[0, 1]`.
pub fn input_abs_max(norm: &relushare_model::Normalization) -> f64 {
    norm.mean
        .iter()
        .zip(&norm.std)
        .map(|(&m, &s)| (m.abs().max((1.0 - m).abs()) / s.abs().max(1e-12)) as f64)
        .fold(1.0, f64::max)
}

/// The provable comparison sizes of a model (computed by the model owner from the plaintext
/// weights; see [`bounds`]).
///
/// Refuses a model whose proven truncation failure bound per inference exceeds
/// [`bounds::MAX_TRUNC_FAILURE`]; the error names the largest number of fractional bits (the
/// rescaling) with which the model meets it, if any.
pub fn config_for_model(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
) -> Result<FastConfig> {
    rings_for_model(fm, model).map(|(c, _)| c)
}

/// [`config_for_model`] with where its rings come from: the interval proof, or for graph
/// models (residual networks, whose worst cases compound past 2^63) where the proof fails,
/// calibration ([`bounds::calibrate`]). A sequential model is never calibrated: it is refused
/// with the `--frac-bits` that would meet the proof.
pub fn rings_for_model(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
) -> Result<(FastConfig, bounds::BoundsKind)> {
    rings_for_mode(fm, model, CmpMode::Tree)
}

/// [`rings_for_model`] for the comparisons of `mode` ([`config_for_mode`]).
fn rings_for_mode(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
    mode: CmpMode,
) -> Result<(FastConfig, bounds::BoundsKind)> {
    let lim = input_abs_max(&model.spec.normalization);
    let found = if model.spec.is_sequential() {
        bounds::comparison_bits(fm, lim, mode).map(|c| (c, bounds::BoundsKind::Proven))
    } else {
        bounds::comparison_bits_or_calibrated(fm, lim, mode)
    };
    found.map_err(|e| {
        let f = fm.fp.frac_bits;
        let fused = fm
            .layers
            .iter()
            .any(|l| matches!(l, crate::plain::FixedLayer::Shared { s, .. } if s.fused.is_some()));
        let meets = |g: u32| -> bool {
            let Ok(mut fg) = crate::plain::FixedModel::from_model(model, g) else {
                return false;
            };
            if fused && gate::fuse(&mut fg).is_err() {
                return false;
            }
            bounds::analyse(&fg, lim).is_ok_and(|b| b.check_truncation().is_ok())
        };
        match (1..f).rev().find(|&g| meets(g)) {
            Some(g) => MpcError::Model(format!("{e}; rescale with --frac-bits {g} (or less)")),
            None => e,
        }
    })
}

/// The comparison rings of `mode`: [`config_for_model`]'s for the tree circuit, which needs a
/// spare bit and an odd `k`; the smallest the same bounds (proven or, for graph models whose
/// proof fails, calibrated) allow for [`CmpMode::Fss`], whose comparison
/// (`[y >= 0] = c_u[k-1] ^ r[k-1] ^ [c_u mod 2^(k-1) < r mod 2^(k-1)]`) needs only
/// `|y| < 2^(k-1)`: `k = bitlen(B) + 1` ([`bounds::smallest_bits`]), one or two bits less,
/// each a DCF level of both keys per comparison. The bounds are computed once either way.
pub fn config_for_mode(
    fm: &crate::plain::FixedModel,
    model: &relushare_model::Model,
    mode: CmpMode,
) -> Result<FastConfig> {
    rings_for_mode(fm, model, mode).map(|(c, _)| c)
}

/// One tensor masked in the one-time setup: its weight key, this party's share of it (the
/// plaintext for the model owner's own computation of `F`, empty for the dealer) and its length.
pub(crate) struct MaskedTensor<'a> {
    pub key: String,
    pub w: &'a [u64],
    pub len: usize,
}

/// The session's dealer streams, one round: the dealer (P2) sends P0 and P1 one seed each
/// (`dealer_seeds`, which only the dealer passes: fresh from the OS, or fixed by a test) and
/// keeps both; each data party takes the one it receives. Shared by the `fast`/`fss` and
/// `mimo` suites' `prepare`.
pub(crate) fn session_deal(
    comm: &mut Comm,
    dealer_seeds: Option<(prg::Seed, prg::Seed)>,
) -> Result<Deal> {
    let me = comm.party();
    if me == 2 {
        let (s0, s1) =
            dealer_seeds.ok_or_else(|| MpcError::Param("the dealer needs its two seeds".into()))?;
        comm.round(vec![(0, s0.to_vec()), (1, s1.to_vec())], &[])?;
        return Ok(Deal::dealer(Prg::from_seed(s0), Prg::from_seed(s1)));
    }
    let got = comm.round(vec![], &[2])?.pop().unwrap_or_default();
    let s: prg::Seed = got.as_slice().try_into().map_err(|_| MpcError::Malformed {
        from: 2,
        reason: format!("seed of {} bytes", got.len()),
    })?;
    Ok(if me == 0 {
        Deal::p0(Prg::from_seed(s))
    } else {
        Deal::p1(Prg::from_seed(s))
    })
}

/// A one-off run's weight masking: every tensor of `layout` gets a fresh dealt mask `B` and
/// P0/P1 open `F = W - B` for all of them in one round (the dealer keeps `B`). Returns each
/// tensor's key with its [`MaskedWeight`], in layout order. Shared by the `fast`/`fss` and
/// `mimo` suites' `prepare`.
pub(crate) fn mask_and_open(
    comm: &mut Comm,
    deal: &mut Deal,
    layout: Vec<MaskedTensor<'_>>,
) -> Result<Vec<(String, MaskedWeight)>> {
    let me = comm.party();
    let mut masked_all = Vec::new();
    let mut bs = Vec::new();
    for m in &layout {
        let b = deal.rand_u64(m.len);
        if me == 2 {
            bs.push(b.secret.expect("dealer"));
        } else {
            crate::ring::check_len("weight share", m.w, m.len)?;
            masked_all.extend(m.w.iter().zip(&b.mine).map(|(x, y)| x.wrapping_sub(*y)));
            bs.push(b.mine);
        }
    }
    let f_all = if me == 2 {
        Vec::new()
    } else {
        cmp::open_u64(comm, &masked_all)?
    };
    let mut off = 0;
    let mut out = Vec::with_capacity(layout.len());
    for (m, b) in layout.into_iter().zip(bs) {
        let len = m.len;
        let mw = if me == 2 {
            MaskedWeight {
                f: Vec::new(),
                online: Vec::new(),
                b,
            }
        } else {
            let f = f_all[off..off + len].to_vec();
            let online = if me == 0 {
                crate::ring::add(&f, &b)
            } else {
                b.clone()
            };
            MaskedWeight { f, online, b }
        };
        off += len;
        out.push((m.key, mw));
    }
    Ok(out)
}

/// The tensors the one-time setup masks, in the order their masks are drawn: every
/// convolution and linear weight, every unfused Learned/Fc decider `v`, and for each fused gate
/// its `U` (and, in Fold mode, the convolution's bias). The layout depends on the plan's
/// structure only; `weights` supplies the values.
pub(crate) fn mask_layout<'a>(
    plan: &'a Plan,
    weights: &'a [WeightShare],
) -> Result<Vec<MaskedTensor<'a>>> {
    let mut out = Vec::new();
    let weight = |i: usize| {
        weights
            .get(i)
            .ok_or_else(|| MpcError::Model("weight index".into()))
    };
    for (i, op) in plan.ops.iter().enumerate() {
        if let Some((geom, widx, act, gp)) = fused_head(&plan.ops, i) {
            let fp = gp.fused.as_ref().expect("fused_head checks");
            out.push(MaskedTensor {
                key: gate::u_key(act),
                w: &fp.u,
                len: fp
                    .sparse
                    .as_ref()
                    .map_or(gp.num_groups * fp.in_len, |sp| sp.cols.len()),
            });
            if fp.mode == GateMode::Fold {
                let w = weight(widx)?;
                out.push(MaskedTensor {
                    key: gate::bias_key(&w.name),
                    w: &w.bias,
                    len: geom.o,
                });
            }
        }
        match op {
            PlanOp::Conv {
                weight: wi, geom, ..
            } => {
                let w = weight(*wi)?;
                out.push(MaskedTensor {
                    key: w.name.clone(),
                    w: &w.w,
                    len: geom.w_len(),
                });
            }
            PlanOp::Linear {
                weight: wi, geom, ..
            } => {
                let w = weight(*wi)?;
                out.push(MaskedTensor {
                    key: w.name.clone(),
                    w: &w.w,
                    len: geom.in_f * geom.out_f,
                });
            }
            PlanOp::SharedRelu { name, plan: gp }
                if gp.decider != DeciderKind::OneHot && gp.fused.is_none() =>
            {
                out.push(MaskedTensor {
                    key: v_key(name),
                    w: &gp.v,
                    len: gp.len,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The weight key of a decider `v` of ReLU-sharing layer `name`.
fn v_key(name: &str) -> String {
    format!("{name}.v")
}

impl Suite for FastSuite {
    fn name(&self) -> &'static str {
        match self.mode {
            CmpMode::Tree => "fast",
            CmpMode::Fss => "fss",
        }
    }

    fn comm(&mut self) -> &mut Comm {
        &mut self.comm
    }

    fn frac_bits(&self) -> u32 {
        self.frac
    }

    fn prepare(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        let me = self.me();
        // Seeds: the dealer draws one per partner.
        let seeds = if me == 2 {
            self.noise_rng = Some(noise_source(&self.test)?);
            Some((dealer_seed(&self.test, 0)?, dealer_seed(&self.test, 1)?))
        } else {
            None
        };
        self.deal = Some(session_deal(&mut self.comm, seeds)?);
        let layout = mask_layout(plan, weights)?;
        if let Some(fixed) = self.fixed.take() {
            // Serving: the masks are fixed for the owner-helper pair and `F` was computed once;
            // nothing is drawn from this session's dealer streams and nothing is opened.
            let lens: Vec<usize> = layout.iter().map(|m| m.len).collect();
            let installed = fixed.install(me, &lens)?;
            let mut ws = BTreeMap::new();
            for (m, mw) in layout.into_iter().zip(installed) {
                ws.insert(m.key, mw);
            }
            self.weights = Arc::new(ws);
            return Ok(());
        }
        // Mask every weight tensor and decider once.
        let deal = self.deal.as_mut().expect("set above");
        let ws: BTreeMap<_, _> = mask_and_open(&mut self.comm, deal, layout)?
            .into_iter()
            .collect();
        self.weights = Arc::new(ws);
        Ok(())
    }

    fn offline(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        self.queue.clear();
        let n = plan.n;
        let need = offline_bytes(plan, &self.cfg, self.mode)?;
        if need > MAX_OFFLINE_BYTES {
            return Err(MpcError::Param(format!(
                "the {} offline material of this batch of {n} would be {:.1} GB (held by each \
                 party until used); run smaller batches (at most {} images)",
                self.name(),
                need as f64 / 1e9,
                (MAX_OFFLINE_BYTES / (need / n.max(1)).max(1)).max(1)
            )));
        }
        self.pending = None;
        for (i, op) in plan.ops.iter().enumerate() {
            self.comm.set_label(op.name());
            if let Some(gg) = gate_geom(&plan.ops, i, &self.cfg, self.mode)? {
                let (_, widx, act, gp) = fused_head(&plan.ops, i).expect("gate_geom checks");
                let w = weights
                    .get(widx)
                    .ok_or_else(|| MpcError::Model("weight index".into()))?;
                let (conv_key, u_key) = (w.name.clone(), gate::u_key(act));
                let fp = gp.fused.as_ref().expect("fused_head checks");
                let (beta, act) = (fp.beta.clone(), act.to_string());
                let bytes = gg.offline_bytes()?;
                // The masked weights are borrowed by the dealing closure, which needs `self`.
                let ws = self.weights.clone();
                let get = |k: &str| {
                    ws.get(k)
                        .ok_or_else(|| MpcError::Model(format!("weight {k} was not prepared")))
                };
                let mat = (|| {
                    let gw = gate::GateWeights {
                        w: get(&conv_key)?,
                        bias: match gg.mode {
                            GateMode::Fold => Some(get(&gate::bias_key(&conv_key))?),
                            GateMode::Pool => None,
                        },
                        u: get(&u_key)?,
                    };
                    self.dealt(bytes, |d, _| gate::deal_gate(d, &gg, &gw))
                })();
                let mat = mat?;
                self.queue.push_back(Mat::Gate(Box::new(GateRun {
                    mat,
                    act,
                    conv_key,
                    u_key,
                    beta,
                    conv_bias: w.bias.clone(),
                })));
                continue;
            }
            match op {
                PlanOp::SharedRelu { plan: gp, .. } if gp.fused.is_some() => {}
                PlanOp::Conv { weight, .. } | PlanOp::Linear { weight, .. } => {
                    let lop = match op {
                        PlanOp::Conv { geom, .. } => LinOp::Conv(*geom),
                        PlanOp::Linear { geom, .. } => LinOp::Fc {
                            n: geom.n,
                            in_f: geom.in_f,
                            out_f: geom.out_f,
                        },
                        _ => unreachable!("matched above"),
                    };
                    let w = weights
                        .get(*weight)
                        .ok_or_else(|| MpcError::Model("weight index".into()))?;
                    let mw = self.weights.get(&w.name).ok_or_else(|| {
                        MpcError::Model(format!("weight {} was not prepared", w.name))
                    })?;
                    // The product first (P1 overlaps it with the dealer's), then the correction.
                    let deal = self
                        .deal
                        .as_mut()
                        .ok_or_else(|| MpcError::Param("fast suite used before prepare".into()))?;
                    let pre = linear::deal_linear_pre(deal, &lop, mw)?;
                    let bytes = linear::linear_offline_bytes(&lop);
                    let m =
                        self.dealt((bytes, 0), |d, _| linear::deal_linear_finish(d, &lop, pre))?;
                    self.queue.push_back(Mat::Lin(m));
                }
                PlanOp::Relu { name, len } => {
                    let k = self.cfg.for_layer(name, false);
                    let m = self.deal_relu_op(n * len, k)?;
                    self.queue.push_back(m);
                }
                PlanOp::Partial {
                    name,
                    c: _,
                    plane,
                    relu_channels,
                } => {
                    let k = self.cfg.for_layer(name, false);
                    let m = self.deal_relu_op(n * relu_channels * plane, k)?;
                    self.queue.push_back(m);
                }
                PlanOp::MaxPool { name, geom } => {
                    // One ReLU per tree level, on the differences of the pairs.
                    let k = self.cfg.for_layer(name, false);
                    for pairs in geom.level_pairs() {
                        let m = self.deal_relu_op(pairs, k)?;
                        self.queue.push_back(m);
                    }
                }
                PlanOp::SharedRelu { name, plan: gp } => {
                    let double = gp.decider != DeciderKind::OneHot;
                    let k = self.cfg.for_layer(name, double);
                    let mv = self.weights.get(&v_key(name)).cloned();
                    let mode = self.mode;
                    let bytes = group_offline_bytes(n, gp, k, mode)?;
                    let m = self.dealt(bytes, |d, rng| {
                        share::deal_group(d, n, gp, k, mv.as_ref(), rng, mode)
                    })?;
                    self.queue.push_back(Mat::Group(Box::new(m), mv));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn offline_twin(&mut self, comm: Comm) -> Result<Option<Box<dyn Suite>>> {
        if self.deal.is_none() {
            return Err(MpcError::Param(
                "fast suite: an offline twin needs a prepared suite".into(),
            ));
        }
        if comm.party() != self.me() {
            return Err(MpcError::Param(format!(
                "fast suite: an offline twin of party {} on party {}'s connection",
                self.me(),
                comm.party()
            )));
        }
        // The dealer streams (and the dealer's noise source) move to the twin: only `offline`
        // draws from them, so this suite cannot deal any more. The masked weights are shared.
        let twin = FastSuite {
            comm,
            frac: self.frac,
            cfg: self.cfg.clone(),
            mode: self.mode,
            deal: self.deal.take(),
            weights: self.weights.clone(),
            queue: VecDeque::new(),
            noise_rng: self.noise_rng.take(),
            pending: None,
            fixed: None,
            test: self.test.clone(),
        };
        Ok(Some(Box::new(twin)))
    }

    fn take_material(&mut self) -> Result<crate::suite::Material> {
        Ok(Box::new(FastMaterial(std::mem::take(&mut self.queue))))
    }

    fn install_material(&mut self, m: crate::suite::Material) -> Result<()> {
        if !self.queue.is_empty() || self.pending.is_some() {
            return Err(MpcError::Param(format!(
                "{} suite: material installed before the previous batch used up its own",
                self.name()
            )));
        }
        let m = m.downcast::<FastMaterial>().map_err(|_| {
            MpcError::Param(format!("{} suite: material of another suite", self.name()))
        })?;
        self.queue = m.0;
        Ok(())
    }

    fn conv2d(&mut self, x: &Shared, w: &WeightShare, g: &ConvGeom) -> Result<Shared> {
        if matches!(self.queue.front(), Some(Mat::Gate(_))) {
            let Some(Mat::Gate(run)) = self.queue.pop_front() else {
                unreachable!("checked above")
            };
            return self.gate_conv(*run, x, g);
        }
        self.lin_online(x, &w.name, &w.bias, &LinOp::Conv(*g))
    }

    fn avg_pool(&mut self, x: &Shared, g: &PoolGeom) -> Result<Shared> {
        match self.pending.take() {
            Some(Pending::Gated(y)) => {
                crate::ring::check_len("gated pooling output", &y, g.n * g.c * g.oh() * g.ow())?;
                Ok(y)
            }
            Some(Pending::Conv(..)) => Err(MpcError::Param(
                "fast suite: pooled gate skipped its gate layer".into(),
            )),
            None => crate::suite::default_avg_pool(self, x, g),
        }
    }

    fn linear(&mut self, x: &Shared, w: &WeightShare, g: &LinearGeom) -> Result<Shared> {
        self.lin_online(
            x,
            &w.name,
            &w.bias,
            &LinOp::Fc {
                n: g.n,
                in_f: g.in_f,
                out_f: g.out_f,
            },
        )
    }

    fn relu(&mut self, x: &Shared, len: usize) -> Result<Shared> {
        let mat = match self.queue.pop_front() {
            Some(m @ Mat::Relu(_)) => m,
            _ => {
                return Err(MpcError::Param(
                    "fast suite: no ReLU material (was offline() run?)".into(),
                ))
            }
        };
        let _ = len;
        self.relu_with(x, mat)
    }

    fn shared_relu(&mut self, x: &Shared, n: usize, plan: &GroupPlan) -> Result<Shared> {
        if let Some(fp) = &plan.fused {
            return self.gate_layer(x, n, plan, fp.mode);
        }
        let (mat, mv) = match self.queue.pop_front() {
            Some(Mat::Group(m, mv)) => (m, mv),
            _ => {
                return Err(MpcError::Param(
                    "fast suite: no ReLU-sharing material".into(),
                ))
            }
        };
        let _ = n;
        if self.me() == 2 {
            return Ok(Vec::new());
        }
        share::group_online(&mut self.comm, &mat, plan, mv.as_ref(), x)
    }
}

/// One batch's material as it moves from an offline twin to the online suite.
struct FastMaterial(VecDeque<Mat>);

/// Largest dealer material one batch may need (it is held in memory until used).
pub const MAX_OFFLINE_BYTES: usize = 4_000_000_000;

/// Dealer bytes (to P1 and P0 together) of one run of `plan` with comparison sizes `cfg`.
pub fn offline_bytes(plan: &Plan, cfg: &FastConfig, mode: CmpMode) -> Result<usize> {
    let n = plan.n;
    let mut total = 0;
    for (i, op) in plan.ops.iter().enumerate() {
        if let Some(gg) = gate_geom(&plan.ops, i, cfg, mode)? {
            let (a, b) = gg.offline_bytes()?;
            total += a + b;
            continue;
        }
        total += match op {
            PlanOp::SharedRelu { plan: gp, .. } if gp.fused.is_some() => 0,
            PlanOp::Conv { geom, .. } => linear::linear_offline_bytes(&LinOp::Conv(*geom)),
            PlanOp::Linear { geom, .. } => linear::linear_offline_bytes(&LinOp::Fc {
                n: geom.n,
                in_f: geom.in_f,
                out_f: geom.out_f,
            }),
            PlanOp::Relu { name, len } => {
                let (a, b) = cmp::relu_offline_bytes(n * len, cfg.for_layer(name, false), mode)?;
                a + b
            }
            PlanOp::Partial {
                name,
                plane,
                relu_channels,
                ..
            } => {
                let (a, b) = cmp::relu_offline_bytes(
                    n * relu_channels * plane,
                    cfg.for_layer(name, false),
                    mode,
                )?;
                a + b
            }
            PlanOp::SharedRelu { name, plan: gp } => {
                let k = cfg.for_layer(name, gp.decider != DeciderKind::OneHot);
                let (a, b) = group_offline_bytes(n, gp, k, mode)?;
                a + b
            }
            PlanOp::MaxPool { name, geom } => {
                let k = cfg.for_layer(name, false);
                let mut t = 0;
                for pairs in geom.level_pairs() {
                    let (a, b) = cmp::relu_offline_bytes(pairs, k, mode)?;
                    t += a + b;
                }
                t
            }
            _ => 0,
        };
    }
    Ok(total)
}

/// Dealer bytes of a ReLU-sharing layer: (to P1, to P0).
pub fn group_offline_bytes(
    n: usize,
    plan: &GroupPlan,
    k: u32,
    mode: CmpMode,
) -> Result<(usize, usize)> {
    let total = n * plan.len;
    let groups = n * plan.num_groups;
    let (c1, c0) = cmp::cmp_offline_bytes(groups, k, mode)?;
    let wg = if plan.decider == DeciderKind::OneHot {
        0
    } else {
        8 * groups
    };
    let tau = if plan.noise > 0.0 {
        8 * total
    } else {
        8 * groups
    };
    Ok((c1 + wg + tau + 8 * total, c0))
}

/// Online bytes one party sends in a ReLU-sharing layer.
pub fn group_online_bytes(n: usize, plan: &GroupPlan, k: u32, mode: CmpMode) -> Result<usize> {
    let total = n * plan.len;
    let groups = n * plan.num_groups;
    let open_z = if plan.decider == DeciderKind::OneHot {
        0
    } else {
        (groups * k as usize).div_ceil(8)
    };
    Ok(8 * total + open_z + cmp::cmp_online_bytes(groups, k, mode)? + bits::plane_bytes(groups))
}
