//! The interface every protocol suite implements, once per party, plus the model plan it runs.
//!
//! # Conventions
//! * A [`Shared`] value is a flat vector over Z_2^64. P0 and P1 hold additive shares
//!   (`x = x0 + x1 mod 2^64`); **P2 holds an empty vector** for every shared value (it never holds
//!   shares of data) but receives all geometry, so it can play its helper role.
//! * All three parties call the same methods in the same order with the same public arguments
//!   (lockstep). Every method communicates only through [`Suite::comm`] (so the costs are counted
//!   under the label/phase the runner set).
//! * Fixed point with `f = frac_bits()` fractional bits ([`crate::fixed`]). Activations and
//!   weights carry `f` bits, biases and the Fc decider bias carry `2f` bits.
//! * Batches: activations are `[n, ...]` flattened, image-major; `n` is in the geometry.
//! * Bits (DReLU results, decisions, noise) are shared as ring elements 0/1 in Z_2^64.

use crate::cost::{Comm, Phase};
use crate::error::{MpcError, Result};
use crate::fixed;
use crate::kernels::{self, ConvGeom};

/// One party's view of a secret-shared vector (empty for P2).
pub type Shared = Vec<u64>;

/// The material one [`Suite::offline`] call left in a suite, moved out of it whole (pipelining:
/// [`Suite::take_material`] on the offline twin, [`Suite::install_material`] on the online
/// suite). Opaque to everyone but the suite that made it.
pub type Material = Box<dyn std::any::Any + Send>;

/// Shares of a linear layer's parameters: weight (`f` bits) and bias (`2f` bits).
#[derive(Clone, Debug, Default)]
pub struct WeightShare {
    /// Layer name (unique in the model; suites may key caches by it).
    pub name: String,
    /// Weight: conv `[o, c, k, k]`, linear `[out, in]` (PyTorch layout); empty for P2.
    pub w: Shared,
    /// Bias `[o]` encoded with `2f` fractional bits; empty for P2.
    pub bias: Shared,
}

/// Geometry of a fully connected layer on a batch: `x[n, in_f] -> y[n, out_f]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearGeom {
    /// Batch size.
    pub n: usize,
    /// Input features.
    pub in_f: usize,
    /// Output features.
    pub out_f: usize,
}

/// Geometry of average pooling on a batch (no padding, floor output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
}

impl PoolGeom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h - self.k) / self.stride + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w - self.k) / self.stride + 1
    }
}

/// Geometry of max pooling on a batch: square window, stride, padding (padded positions take
/// no part). Evaluated by every suite as the same balanced tree of pairwise maxima,
/// `max(a, b) = b + ReLU(a - b)`: one ReLU call per tree level over all pairs of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolGeom {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Window size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero-extent padding on each side (positions outside the input are skipped).
    pub pad: usize,
}

impl MaxPoolGeom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Check the geometry (valid, not degenerate).
    pub fn validate(&self) -> Result<()> {
        if self.k == 0
            || self.stride == 0
            || 2 * self.pad > self.k
            || self.h + 2 * self.pad < self.k
            || self.w + 2 * self.pad < self.k
        {
            return Err(MpcError::Shape(format!("bad max-pool geometry {self:?}")));
        }
        Ok(())
    }
    /// Input elements per image.
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Output elements per image.
    pub fn out_len(&self) -> usize {
        self.c * self.oh() * self.ow()
    }
    /// For every output of one image (CHW order), the input indices of its window.
    pub fn windows(&self) -> Vec<Vec<u32>> {
        let d = relushare_model::Dims::new(self.c, self.h, self.w);
        let mut out = Vec::with_capacity(self.out_len());
        for c in 0..self.c {
            for oy in 0..self.oh() {
                for ox in 0..self.ow() {
                    out.push(
                        relushare_model::spec::pool_window(
                            d,
                            self.k,
                            self.stride,
                            self.pad,
                            oy,
                            ox,
                        )
                        .map(|(y, x)| (c * self.h * self.w + y * self.w + x) as u32)
                        .collect(),
                    );
                }
            }
        }
        out
    }
    /// Pairs compared at every tree level, for the whole batch (the ReLU lengths of
    /// [`default_max_pool`]).
    pub fn level_pairs(&self) -> Vec<usize> {
        let mut counts: Vec<usize> = self.windows().iter().map(|w| w.len()).collect();
        let mut out = Vec::new();
        while counts.iter().any(|&m| m > 1) {
            out.push(self.n * counts.iter().map(|&m| m / 2).sum::<usize>());
            counts.iter_mut().for_each(|m| *m = m.div_ceil(2));
        }
        out
    }
}

/// How a ReLU-sharing layer computes each group's decision value `z_g`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeciderKind {
    /// `z_g = sum_{i in g} v_i * s_i` (2f bits).
    Learned,
    /// `z_g = s_{leader(g)}` (f bits), no dot product.
    OneHot,
    /// `z_g = sum_{i in g} v_i * s_i + b_g` (2f bits).
    Fc,
}

/// Everything (public and shared) a ReLU-sharing layer needs, for ONE image of `len` elements.
#[derive(Clone, Debug)]
pub struct GroupPlan {
    /// Elements per image (`C*H*W`).
    pub len: usize,
    /// Global group id of every element (`len` entries, ids `0..num_groups`).
    pub group_of: Vec<u32>,
    /// Number of groups per image.
    pub num_groups: usize,
    /// Per group: element index of its one-hot member (used by `OneHot`).
    pub leaders: Vec<u32>,
    /// Decider.
    pub decider: DeciderKind,
    /// Shares of `v` (`len` entries, `f` bits) for Learned/Fc; empty otherwise and for P2.
    pub v: Shared,
    /// Shares of the per-group bias (`num_groups` entries, `2f` bits) for Fc; else empty.
    pub bias: Shared,
    /// Flip probability of each member's decision (0 = no noise).
    pub noise: f32,
    /// Set when the layer is a gate fused with the convolution before it.
    pub fused: Option<FusedPlan>,
}

/// A fused gate as the suites see it (see [`crate::plain::FusedGate`]).
#[derive(Clone, Debug)]
pub struct FusedPlan {
    /// Evaluation mode.
    pub mode: crate::plain::GateMode,
    /// Shares of `U` (`groups x in_len`, or the entries of `sparse`'s rows, f bits); empty for
    /// P2.
    pub u: Shared,
    /// Shares of `beta` (`groups`, 2f bits); empty for P2.
    pub beta: Shared,
    /// Convolution input elements per image.
    pub in_len: usize,
    /// Sparse rows of `U` (patch-group gates, `mimo` only; see [`crate::plain::SparseRows`]).
    pub sparse: Option<crate::plain::SparseRows>,
}

/// One party's shares of a ReLU-sharing layer's secret parameters (empty for P2).
#[derive(Clone, Debug, Default)]
pub struct GroupShares {
    /// Decider `v`.
    pub v: Shared,
    /// Fc decider bias.
    pub bias: Shared,
    /// Fused gates: `U`.
    pub u: Shared,
    /// Fused gates: `beta`.
    pub beta: Shared,
}

impl GroupPlan {
    /// `map[i]` = index of element `i`'s group decision in a batch of `n` images
    /// (`img * num_groups + group_of[i]`).
    pub fn batch_map(&self, n: usize) -> Vec<u32> {
        let mut m = Vec::with_capacity(n * self.len);
        for img in 0..n {
            let off = (img * self.num_groups) as u32;
            m.extend(self.group_of.iter().map(|g| off + g));
        }
        m
    }
}

/// One step of a model, as the suites see it (built by the runner from a model spec).
#[derive(Clone, Debug)]
pub enum PlanOp {
    /// Convolution + bias, then truncation; `weight` indexes the runner's weight list.
    Conv {
        name: String,
        geom: ConvGeom,
        weight: usize,
    },
    /// Fully connected + bias, then truncation.
    Linear {
        name: String,
        geom: LinearGeom,
        weight: usize,
    },
    /// Average pooling.
    AvgPool { name: String, geom: PoolGeom },
    /// ReLU on `len` elements per image.
    Relu { name: String, len: usize },
    /// ReLU on channels `[0, relu_channels)` of `[c, plane]`, identity on the rest.
    Partial {
        name: String,
        c: usize,
        plane: usize,
        relu_channels: usize,
    },
    /// ReLU sharing.
    SharedRelu { name: String, plan: Box<GroupPlan> },
    /// Identity activation, dropout, flatten: no work.
    Identity { name: String },
    /// Element-wise sum of two tensors of `len` elements per image (residual connection).
    Add { name: String, len: usize },
    /// Max pooling (comparisons, see [`MaxPoolGeom`]).
    MaxPool { name: String, geom: MaxPoolGeom },
}

impl PlanOp {
    /// The layer name (used as the cost label).
    pub fn name(&self) -> &str {
        match self {
            PlanOp::Conv { name, .. }
            | PlanOp::Linear { name, .. }
            | PlanOp::AvgPool { name, .. }
            | PlanOp::Relu { name, .. }
            | PlanOp::Partial { name, .. }
            | PlanOp::SharedRelu { name, .. }
            | PlanOp::Identity { name }
            | PlanOp::Add { name, .. }
            | PlanOp::MaxPool { name, .. } => name,
        }
    }
}

/// The whole model as a list of steps, for batch size `n`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Images per run.
    pub n: usize,
    /// Input elements per image.
    pub input_len: usize,
    /// Output elements per image (logits).
    pub output_len: usize,
    /// Steps in order.
    pub ops: Vec<PlanOp>,
    /// The tensors each step reads (`0` the input, `i + 1` the output of step `i`; see
    /// `relushare_model::ModelSpec::sources`): `[i]` for every step of a sequential model.
    /// Empty means sequential (see [`Plan::edges`]).
    pub srcs: Vec<Vec<usize>>,
}

impl Plan {
    /// The tensors each step reads, with an empty `srcs` read as sequential.
    pub fn edges(&self) -> Vec<Vec<usize>> {
        if self.srcs.is_empty() {
            (0..self.ops.len()).map(|i| vec![i]).collect()
        } else {
            self.srcs.clone()
        }
    }

    /// Does step `i` read the previous step's output alone, and is that output read by step `i`
    /// alone? (Where a suite may fuse step `i - 1` with step `i`.)
    pub fn chained(&self, i: usize) -> bool {
        let e = self.edges();
        i >= 1
            && e.get(i).is_some_and(|s| s == &[i])
            && e.iter().enumerate().all(|(j, s)| j == i || !s.contains(&i))
    }
}

#[cfg(test)]
impl Plan {
    /// Test only: one ReLU layer `act` of `n` elements, one image.
    pub(crate) fn relu_act(n: usize) -> Plan {
        Plan {
            n: 1,
            input_len: n,
            output_len: n,
            srcs: Vec::new(),
            ops: vec![PlanOp::Relu {
                name: "act".into(),
                len: n,
            }],
        }
    }
}

/// A protocol suite as run by one party: one method per layer kind (the provided ones compose
/// the required ones; override them to fuse steps or save rounds). A suite built from generic
/// secure operations implements [`Primitives`] too and gets its ReLU layers from
/// [`default_relu`] and [`default_shared_relu`].
pub trait Suite: Send {
    /// Short name ("securenn", "fast", "fss").
    fn name(&self) -> &'static str;

    /// The metered connection (the runner sets label and phase on it).
    fn comm(&mut self) -> &mut Comm;

    /// Fixed-point fractional bits `f`.
    fn frac_bits(&self) -> u32;

    /// This party's index (0, 1, 2).
    fn party(&mut self) -> usize {
        self.comm().party()
    }

    /// Called once per model load, after the weights are shared and before any image: a suite
    /// may precompute per-weight material (e.g. open masked weights). Runs with phase offline and
    /// label "model-setup". Default: nothing.
    fn prepare(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        let _ = (plan, weights);
        Ok(())
    }

    /// Input-independent preprocessing for one run of `plan` (one batch), before the input is
    /// known. Runs with phase offline; the runner sets the label of each layer only online, so
    /// implementations should call `self.comm().set_label(op.name())` themselves to attribute
    /// offline bytes per layer. Default: nothing (SecureNN has no offline phase).
    fn offline(&mut self, plan: &Plan, weights: &[WeightShare]) -> Result<()> {
        let _ = (plan, weights);
        Ok(())
    }

    /// Pipelining ([`crate::pipeline`]): a second instance of this party's suite, after
    /// [`Suite::prepare`], that runs [`Suite::offline`] on its own connection `comm` while this
    /// one runs the online steps. The twin takes over whatever only the offline phase uses (the
    /// dealer's streams), shares the one-time setup, and hands each batch's material over with
    /// [`Suite::take_material`] / [`Suite::install_material`]; this suite then no longer runs
    /// `offline` itself. The protocol is unchanged: same messages, same order per connection.
    /// `None` (the default): the suite has no offline phase to overlap and runs sequentially.
    fn offline_twin(&mut self, comm: Comm) -> Result<Option<Box<dyn Suite>>> {
        let _ = comm;
        Ok(None)
    }

    /// Takes the material of the last [`Suite::offline`] call out of this suite (the twin).
    fn take_material(&mut self) -> Result<Material> {
        Err(MpcError::Unsupported(format!(
            "the {} suite does not hand over offline material",
            self.name()
        )))
    }

    /// Installs material taken from the twin for the next batch (all of the previous batch's
    /// material must have been used).
    fn install_material(&mut self, m: Material) -> Result<()> {
        let _ = m;
        Err(MpcError::Unsupported(format!(
            "the {} suite does not take offline material",
            self.name()
        )))
    }

    /// Convolution with shared weights: returns shares of `trunc_f(conv(x, w) + bias)` with
    /// `x[n, c, h, w]` (f bits), `w[o, c, k, k]` (f bits), bias (2f bits); output `[n, o, oh, ow]`.
    fn conv2d(&mut self, x: &Shared, w: &WeightShare, g: &ConvGeom) -> Result<Shared>;

    /// Fully connected layer: shares of `trunc_f(x * w^T + bias)` for `x[n, in]`, `w[out, in]`.
    fn linear(&mut self, x: &Shared, w: &WeightShare, g: &LinearGeom) -> Result<Shared>;

    /// Truncate shares by `bits` (default: SecureNN local truncation, no communication).
    fn truncate(&mut self, x: &mut Shared, bits: u32) -> Result<()> {
        let me = self.party();
        if me != 2 {
            fixed::trunc_share_vec(x, bits, me);
        }
        Ok(())
    }

    /// Average pooling: `trunc_f(window sum * round(2^f / k^2))` (default: local + truncate).
    fn avg_pool(&mut self, x: &Shared, g: &PoolGeom) -> Result<Shared> {
        default_avg_pool(self, x, g)
    }

    /// ReLU on `len` elements: shares of `max(x_i, 0)` (for a suite built from [`Primitives`]:
    /// [`default_relu`]).
    fn relu(&mut self, x: &Shared, len: usize) -> Result<Shared>;

    /// Partial ReLU on a batch of `[c, plane]` images: ReLU on channels `[0, relu_channels)`,
    /// identity elsewhere (default: gather, relu, scatter).
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
        let me = self.party();
        let per = relu_channels * plane;
        let mut sub = Vec::new();
        if me != 2 {
            crate::ring::check_len("partial input", x, n * c * plane)?;
            for img in 0..n {
                sub.extend_from_slice(&x[img * c * plane..img * c * plane + per]);
            }
        }
        let r = self.relu(&sub, n * per)?;
        if me == 2 {
            return Ok(Vec::new());
        }
        let mut y = x.clone();
        for img in 0..n {
            y[img * c * plane..img * c * plane + per]
                .copy_from_slice(&r[img * per..(img + 1) * per]);
        }
        Ok(y)
    }

    /// Element-wise sum of two shared tensors (residual connection). Default: local.
    fn add(&mut self, a: &Shared, b: &Shared) -> Result<Shared> {
        if self.party() == 2 {
            return Ok(Vec::new());
        }
        if a.len() != b.len() {
            return Err(MpcError::Shape(format!(
                "add of {} and {} elements",
                a.len(),
                b.len()
            )));
        }
        Ok(crate::ring::add(a, b))
    }

    /// Max pooling (default: [`default_max_pool`], one [`Suite::relu`] per tree level).
    fn max_pool(&mut self, x: &Shared, g: &MaxPoolGeom) -> Result<Shared> {
        default_max_pool(self, x, g)
    }

    /// ReLU sharing on a batch of `n` images: group values `z_g` (dot product / leader), one
    /// DReLU per group, optional noise flips (`keep_i = keep_g XOR Ber(p)`, the dealer's secret
    /// bits), then `y_i = x_i * keep_i` (for a suite built from [`Primitives`]:
    /// [`default_shared_relu`]).
    fn shared_relu(&mut self, x: &Shared, n: usize, plan: &GroupPlan) -> Result<Shared>;

    /// The shares P0/P1 send to the client at the end (P2 returns None). Local; the runner
    /// reconstructs and records the bytes as client bytes.
    fn reveal_to_client(&mut self, x: &Shared) -> Result<Option<Vec<u64>>> {
        if self.party() == 2 {
            return Ok(None);
        }
        let bytes = (x.len() * 8) as u64;
        self.comm().record_client_bytes(bytes);
        Ok(Some(x.clone()))
    }

    /// Current phase helper for implementations.
    fn set_phase(&mut self, p: Phase) {
        self.comm().set_phase(p);
    }
}

/// The generic secure operations a suite may be built from (SecureNN is): the generic ReLU
/// ([`default_relu`]) and ReLU-sharing layer ([`default_shared_relu`]) are composed from them.
/// Suites with their own fused layers (`fast`, `fss`) implement [`Suite::relu`] and
/// [`Suite::shared_relu`] directly and do not provide these.
pub trait Primitives: Suite {
    /// Elementwise product of two shared vectors of equal length (no truncation).
    fn mul_elem(&mut self, a: &Shared, b: &Shared, len: usize) -> Result<Shared>;

    /// Shares of the bit `[x_i >= 0]` (x signed, two's complement), one per element of `len`.
    fn drelu(&mut self, x: &Shared, len: usize) -> Result<Shared>;

    /// Shares of `x_i * b_{map[i]}` where `b` holds shared bits (SelectShare / member times its
    /// group's decision); `map.len()` = length of `x`.
    fn select(&mut self, x: &Shared, b: &Shared, map: &[u32]) -> Result<Shared> {
        let me = self.party();
        let bb: Shared = if me == 2 {
            Vec::new()
        } else {
            map.iter().map(|&g| b[g as usize]).collect()
        };
        self.mul_elem(x, &bb, map.len())
    }

    /// P2 (the dealer) samples `len` secret Bernoulli(`p`) bits and P0/P1 get shares of them.
    fn dealer_bernoulli(&mut self, len: usize, p: f32) -> Result<Shared>;
}

/// Max pooling as a balanced tree of pairwise maxima, `max(a, b) = b + ReLU(a - b)`: at every
/// level each output's candidates are paired in order (an odd last one waits), and all pairs of
/// the batch go through one [`Suite::relu`]. The plaintext reference evaluates the same maxima.
pub fn default_max_pool<S: Suite + ?Sized>(
    this: &mut S,
    x: &Shared,
    g: &MaxPoolGeom,
) -> Result<Shared> {
    g.validate()?;
    let me = this.party();
    if me != 2 {
        crate::ring::check_len("max_pool input", x, g.n * g.in_len())?;
    }
    let wins = g.windows();
    let (il, ol) = (g.in_len(), wins.len());
    // Candidates per batch output (P2 tracks counts only).
    let mut counts: Vec<usize> = Vec::with_capacity(g.n * ol);
    let mut cands: Vec<Vec<u64>> = Vec::new();
    for img in 0..g.n {
        for w in &wins {
            counts.push(w.len());
            if me != 2 {
                cands.push(w.iter().map(|&i| x[img * il + i as usize]).collect());
            }
        }
    }
    while counts.iter().any(|&m| m > 1) {
        let pairs: usize = counts.iter().map(|&m| m / 2).sum();
        let mut diff = Vec::new();
        if me != 2 {
            diff.reserve(pairs);
            for c in &cands {
                for p in c.chunks_exact(2) {
                    diff.push(p[0].wrapping_sub(p[1]));
                }
            }
        }
        let r = this.relu(&diff, pairs)?;
        if me != 2 {
            crate::ring::check_len("max_pool ReLU output", &r, pairs)?;
            let mut j = 0;
            for c in &mut cands {
                let odd = (c.len() % 2 == 1).then(|| c[c.len() - 1]);
                let next: Vec<u64> = c
                    .chunks_exact(2)
                    .map(|p| {
                        j += 1;
                        p[1].wrapping_add(r[j - 1])
                    })
                    .chain(odd)
                    .collect();
                *c = next;
            }
        }
        counts.iter_mut().for_each(|m| *m = m.div_ceil(2));
    }
    if me == 2 {
        return Ok(Vec::new());
    }
    Ok(cands.into_iter().map(|c| c[0]).collect())
}

/// The generic ReLU of a [`Primitives`] suite: `x * DReLU(x)` (drelu, then select).
pub fn default_relu<S: Primitives + ?Sized>(
    this: &mut S,
    x: &Shared,
    len: usize,
) -> Result<Shared> {
    let d = this.drelu(x, len)?;
    let map: Vec<u32> = (0..len as u32).collect();
    this.select(x, &d, &map)
}

/// The average pooling of [`Suite::avg_pool`]: local window sums, the public constant, then
/// [`Suite::truncate`].
pub fn default_avg_pool<S: Suite + ?Sized>(
    this: &mut S,
    x: &Shared,
    g: &PoolGeom,
) -> Result<Shared> {
    if this.party() == 2 {
        return Ok(Vec::new());
    }
    crate::ring::check_len("avg_pool input", x, g.n * g.c * g.h * g.w)?;
    let c = fixed::pool_factor(g.k, this.frac_bits());
    let mut s = kernels::pool_sums(x, g.n, g.c, g.h, g.w, g.k, g.stride);
    for v in &mut s {
        *v = v.wrapping_mul(c);
    }
    let f = this.frac_bits();
    this.truncate(&mut s, f)?;
    Ok(s)
}

/// The generic ReLU-sharing layer of [`Suite::shared_relu`], built from a suite's
/// [`Primitives`] (a suite with its own `shared_relu` can still call this for the cases it does
/// not fuse):
/// group values (`mul_elem` with `v` then local group sums, or the leaders), one `drelu` per
/// group, then either `select` (no noise) or, with noise, `keep_i = nb_i + (1 - 2 nb_i) d_g`
/// (`dealer_bernoulli` + `select`) and `y = mul_elem(x, keep)`.
pub fn default_shared_relu<S: Primitives + ?Sized>(
    this: &mut S,
    x: &Shared,
    n: usize,
    plan: &GroupPlan,
) -> Result<Shared> {
    let me = this.party();
    let total = n * plan.len;
    let groups = n * plan.num_groups;
    if me != 2 {
        crate::ring::check_len("shared ReLU input", x, total)?;
    }
    let z: Shared = match plan.decider {
        DeciderKind::OneHot => {
            if me == 2 {
                Vec::new()
            } else {
                let mut z = Vec::with_capacity(groups);
                for img in 0..n {
                    z.extend(plan.leaders.iter().map(|&l| x[img * plan.len + l as usize]));
                }
                z
            }
        }
        DeciderKind::Learned | DeciderKind::Fc => {
            let vv: Shared = if me == 2 {
                Vec::new()
            } else {
                (0..n).flat_map(|_| plan.v.iter().copied()).collect()
            };
            let prod = this.mul_elem(x, &vv, total)?;
            if me == 2 {
                Vec::new()
            } else {
                let mut z = vec![0u64; groups];
                for img in 0..n {
                    let zi = &mut z[img * plan.num_groups..(img + 1) * plan.num_groups];
                    for (i, &g) in plan.group_of.iter().enumerate() {
                        zi[g as usize] = zi[g as usize].wrapping_add(prod[img * plan.len + i]);
                    }
                    if plan.decider == DeciderKind::Fc {
                        crate::ring::add_assign(zi, &plan.bias);
                    }
                }
                z
            }
        }
    };
    let d = this.drelu(&z, groups)?;
    let map = plan.batch_map(n);
    if plan.noise > 0.0 {
        // keep_i = nb_i + (1 - 2 nb_i) * d_{g(i)}
        let nb = this.dealer_bernoulli(total, plan.noise)?;
        let coef: Shared = if me == 2 {
            Vec::new()
        } else {
            nb.iter()
                .map(|&b| {
                    let m2 = b.wrapping_mul(2).wrapping_neg();
                    if me == 0 {
                        m2.wrapping_add(1)
                    } else {
                        m2
                    }
                })
                .collect()
        };
        let t = this.select(&coef, &d, &map)?;
        let keep: Shared = if me == 2 {
            Vec::new()
        } else {
            crate::ring::add(&nb, &t)
        };
        this.mul_elem(x, &keep, total)
    } else {
        this.select(x, &d, &map)
    }
}
