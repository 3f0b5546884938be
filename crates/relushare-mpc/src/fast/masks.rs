//! Weight masks fixed across the sessions of one model owner–helper pair (serving).
//!
//! In a one-off run ([`super::FastSuite`]'s `prepare`) the dealer draws each weight mask
//! `B = B_0 + B_1` from the session's seeds and P0 and P1 open `F = W - B`. A served model is
//! instead masked **once per owner–helper pair**:
//!
//! * the model owner draws [`MaskKeys`] `(k0, k1)` and hands them to the helper (once, over
//!   their mutually authenticated TLS link);
//! * for a *context* (protocol and fixed-point bits, [`context_label`]) the masks are
//!   `B_i = PRG(derive(k_i, context))`, drawn tensor by tensor in the order of the suite's
//!   layout (`mask_layout` in `fast` for `fast`/`fss`, `mimo::mask_layout` for
//!   `mimo`, see `layout_for`); the owner, who holds `W`, computes `F = W - B_0 - B_1` once
//!   ([`opening`]) and keeps it;
//! * per session the client (P0) receives `F` and the derived seed of `B_0` one-way from the
//!   owner, the owner (P1) installs `F` and `B_1`, the helper (P2) `B = B_0 + B_1`
//!   ([`FixedMasks`]); nobody opens anything.
//!
//! The online computation is the one of a one-off run (`Y_0 = (F + B_0) E + pre_0`, ...). The
//! session's dealer streams (input masks `A`, corrections `C = B A`, comparison material) are
//! drawn from fresh per-session seeds exactly as before; the mask keys never touch them. Every
//! context has its own masks: one `B` for two encodings of `W` would reveal their difference.
//! Why reuse is secure, and under which assumption, is argued in the crate README (*Serving*).

use super::linear::MaskedWeight;
use super::{mask_layout, MaskedTensor};
use crate::error::{MpcError, Result};
use crate::prg::{self, Prg, Seed};
use crate::suite::{Plan, WeightShare};
use std::sync::Arc;

/// The secret of a pair's weight masks: the keys of `B_0` and `B_1`. Held by the model owner
/// and the helper only (a client gets one context's derived seed of `B_0`).
#[derive(Clone, PartialEq, Eq)]
pub struct MaskKeys {
    k0: Seed,
    k1: Seed,
}

impl std::fmt::Debug for MaskKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskKeys(..)")
    }
}

/// Bytes of [`MaskKeys::to_bytes`].
pub const MASK_KEYS_BYTES: usize = 32;

impl MaskKeys {
    /// Fresh keys from the operating system.
    pub fn fresh() -> Result<MaskKeys> {
        Ok(MaskKeys {
            k0: prg::os_seed()?,
            k1: prg::os_seed()?,
        })
    }

    /// The keys as sent to the helper.
    pub fn to_bytes(&self) -> [u8; MASK_KEYS_BYTES] {
        let mut b = [0u8; MASK_KEYS_BYTES];
        b[..16].copy_from_slice(&self.k0);
        b[16..].copy_from_slice(&self.k1);
        b
    }

    /// Keys received from the owner.
    pub fn from_bytes(b: &[u8]) -> Result<MaskKeys> {
        if b.len() != MASK_KEYS_BYTES {
            return Err(MpcError::Malformed {
                from: 1,
                reason: format!("weight-mask keys of {} bytes", b.len()),
            });
        }
        let mut k0 = [0u8; 16];
        let mut k1 = [0u8; 16];
        k0.copy_from_slice(&b[..16]);
        k1.copy_from_slice(&b[16..]);
        Ok(MaskKeys { k0, k1 })
    }

    /// The seeds of `B_0` and `B_1` for `protocol` with `frac_bits` fractional bits.
    pub fn seeds(&self, protocol: &str, frac_bits: u32) -> Result<(Seed, Seed)> {
        let l = context_label(protocol, frac_bits)?;
        Ok((prg::derive_seed(&self.k0, l), prg::derive_seed(&self.k1, l)))
    }
}

/// The context of a set of masks: the suite and the fixed-point encoding (each gets its own
/// masks, so `mimo`'s are never `fast`'s or `fss`'s). The suites that mask weights: `fast`,
/// `fss` and `mimo`.
pub fn context_label(protocol: &str, frac_bits: u32) -> Result<u64> {
    let p: u64 = match protocol {
        "fast" => 1,
        "fss" => 2,
        "mimo" => 3,
        p => {
            return Err(MpcError::Param(format!(
                "protocol {p:?} has no masked weights (only fast, fss and mimo)"
            )))
        }
    };
    Ok((p << 32) | u64::from(frac_bits))
}

/// The tensors `protocol` masks for `plan`, in the order their masks are drawn (`fast`'s
/// `mask_layout` for `fast` and `fss`, `mimo::mask_layout` for `mimo`).
pub(crate) fn layout_for<'a>(
    protocol: &str,
    plan: &'a Plan,
    weights: &'a [WeightShare],
) -> Result<Vec<MaskedTensor<'a>>> {
    context_label(protocol, 0)?;
    if protocol == "mimo" {
        crate::mimo::mask_layout(plan, weights)
    } else {
        mask_layout(plan, weights)
    }
}

/// Number of ring elements the `fast` suites' one-time setup masks for `plan` (the length of
/// `F`).
pub fn masked_len(plan: &Plan, weights: &[WeightShare]) -> Result<usize> {
    masked_len_for("fast", plan, weights)
}

/// Number of ring elements `protocol`'s one-time setup masks for `plan` (the length of `F`).
pub fn masked_len_for(protocol: &str, plan: &Plan, weights: &[WeightShare]) -> Result<usize> {
    Ok(layout_for(protocol, plan, weights)?
        .iter()
        .map(|m| m.len)
        .sum())
}

/// `F = W - B_0 - B_1` for every tensor the `fast` suites mask ([`opening_for`]).
pub fn opening(plan: &Plan, weights: &[WeightShare], seeds: (Seed, Seed)) -> Result<Vec<u64>> {
    opening_for("fast", plan, weights, seeds)
}

/// `F = W - B_0 - B_1` for every tensor `protocol` masks for `plan`, concatenated in layout
/// order, where `weights` and the plan's decider and gate vectors hold the **plaintext** (the
/// model owner's computation) and `(seed0, seed1)` are one context's seeds
/// ([`MaskKeys::seeds`]).
pub fn opening_for(
    protocol: &str,
    plan: &Plan,
    weights: &[WeightShare],
    seeds: (Seed, Seed),
) -> Result<Vec<u64>> {
    let layout = layout_for(protocol, plan, weights)?;
    let total = layout.iter().map(|m| m.len).sum();
    let (mut p0, mut p1) = (Prg::from_seed(seeds.0), Prg::from_seed(seeds.1));
    let mut f = Vec::with_capacity(total);
    for m in &layout {
        crate::ring::check_len(&m.key, m.w, m.len)?;
        let b0 = p0.gen_u64s(m.len);
        let b1 = p1.gen_u64s(m.len);
        f.extend(
            m.w.iter()
                .zip(b0.iter().zip(&b1))
                .map(|(w, (x, y))| w.wrapping_sub(*x).wrapping_sub(*y)),
        );
    }
    Ok(f)
}

/// What one party installs instead of the masked opening (one context of a pair's masks).
#[derive(Clone)]
pub enum FixedMasks {
    /// P0 (the client): `F` and the seed of `B_0`.
    Client { f: Arc<Vec<u64>>, seed0: Seed },
    /// P1 (the model owner): `F` and the seed of `B_1`.
    Owner { f: Arc<Vec<u64>>, seed1: Seed },
    /// P2 (the helper): the seeds of `B_0` and `B_1`.
    Dealer { seed0: Seed, seed1: Seed },
}

impl std::fmt::Debug for FixedMasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (who, n) = match self {
            FixedMasks::Client { f, .. } => ("client", f.len()),
            FixedMasks::Owner { f, .. } => ("owner", f.len()),
            FixedMasks::Dealer { .. } => ("dealer", 0),
        };
        write!(f, "FixedMasks::{who}(F of {n} elements)")
    }
}

impl FixedMasks {
    /// This party's masked weights for tensors of lengths `lens` (layout order).
    pub(crate) fn install(self, me: usize, lens: &[usize]) -> Result<Vec<MaskedWeight>> {
        let total: usize = lens.iter().sum();
        let check = |f: &[u64]| {
            if f.len() == total {
                Ok(())
            } else {
                Err(MpcError::Shape(format!(
                    "fixed weight masks: F has {} elements, the model masks {total}",
                    f.len()
                )))
            }
        };
        let mut out = Vec::with_capacity(lens.len());
        match (self, me) {
            (FixedMasks::Dealer { seed0, seed1 }, 2) => {
                let (mut p0, mut p1) = (Prg::from_seed(seed0), Prg::from_seed(seed1));
                for &l in lens {
                    let mut b = p0.gen_u64s(l);
                    crate::ring::add_assign(&mut b, &p1.gen_u64s(l));
                    out.push(MaskedWeight {
                        f: Vec::new(),
                        online: Vec::new(),
                        b,
                    });
                }
            }
            (FixedMasks::Owner { f, seed1: seed }, 1)
            | (FixedMasks::Client { f, seed0: seed }, 0) => {
                check(&f)?;
                let mut p = Prg::from_seed(seed);
                let mut off = 0;
                for &l in lens {
                    let b = p.gen_u64s(l);
                    let fi = f[off..off + l].to_vec();
                    off += l;
                    let online = if me == 0 {
                        crate::ring::add(&fi, &b)
                    } else {
                        b.clone()
                    };
                    out.push(MaskedWeight { f: fi, online, b });
                }
            }
            (m, me) => {
                return Err(MpcError::Param(format!(
                    "internal: {m:?} handed to party {me}"
                )))
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{config_for_model, CmpMode, FastSuite};
    use super::*;
    use crate::cost::{Comm, PartyCosts, Phase};
    use crate::plain::{FixedLayer, FixedModel};
    use crate::runner::{build_plan, exec_op};
    use crate::suite::{GroupShares, Shared, Suite};
    use crate::transport::{MemTransport, Recording, RecvLog};
    use relushare_model::{presets, Arch, Model};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// The three parties' fixed masks of one context (the client's and the owner's `F`, the
    /// dealer's two seeds).
    fn trio(f: &Arc<Vec<u64>>, seeds: (Seed, Seed)) -> [FixedMasks; 3] {
        [
            FixedMasks::Client {
                f: f.clone(),
                seed0: seeds.0,
            },
            FixedMasks::Owner {
                f: f.clone(),
                seed1: seeds.1,
            },
            FixedMasks::Dealer {
                seed0: seeds.0,
                seed1: seeds.1,
            },
        ]
    }

    /// A fixed test image of `fm` (encoded) and its plaintext fixed-point logits.
    fn image_and_logits(fm: &FixedModel) -> (Vec<u64>, Vec<f32>) {
        let img: Vec<f32> = (0..fm.input_len)
            .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
            .collect();
        let x = fm.encode_input(&img).unwrap();
        let want = crate::plain::forward_fixed_trace(fm, &x, &mut |_| false).unwrap();
        let want = fm.fp.decode_vec(want.last().unwrap());
        (x, want)
    }

    /// `arch`/`preset` (optionally its first `layers` layers), fused as the fast suites run it.
    fn fixed_model(
        arch: Arch,
        preset: &str,
        free: Option<&str>,
        layers: Option<usize>,
    ) -> (FixedModel, Model) {
        let mut spec = presets::build(arch, preset).unwrap();
        if let Some(f) = free {
            presets::apply_freeform(&mut spec, f).unwrap();
        }
        let m = Model::random(spec, None, 11).unwrap();
        let mut fm = FixedModel::from_model(&m, 13).unwrap();
        super::super::gate::fuse(&mut fm).unwrap();
        if let Some(l) = layers {
            fm.truncate(l);
        }
        (fm, m)
    }

    /// Party `p`'s weights and sharing-layer parameters: shares of the biases (`beta`, group
    /// biases) only, nothing of the masked tensors, as a served session hands them out.
    fn session_shares(
        fm: &FixedModel,
        prg: &mut Prg,
    ) -> [(Vec<WeightShare>, Vec<Option<GroupShares>>); 3] {
        let mut out: [(Vec<WeightShare>, Vec<Option<GroupShares>>); 3] = Default::default();
        let mut split = |v: &[u64]| {
            let s0 = prg.gen_u64s(v.len());
            let s1 = crate::ring::sub(v, &s0);
            [s0, s1, Vec::new()]
        };
        for l in &fm.layers {
            let mut g: [Option<GroupShares>; 3] = Default::default();
            match l {
                FixedLayer::Conv { name, b, .. } | FixedLayer::Linear { name, b, .. } => {
                    for (p, bias) in split(b).into_iter().enumerate() {
                        out[p].0.push(WeightShare {
                            name: name.clone(),
                            w: Vec::new(),
                            bias,
                        });
                    }
                }
                FixedLayer::Shared { s, .. } => {
                    let bs = split(&s.bias);
                    let cs = split(s.fused.as_ref().map_or(&[][..], |fg| &fg.beta));
                    for p in 0..3 {
                        g[p] = Some(GroupShares {
                            v: Vec::new(),
                            bias: bs[p].clone(),
                            u: Vec::new(),
                            beta: cs[p].clone(),
                        });
                    }
                }
                _ => {}
            }
            for (p, gi) in g.into_iter().enumerate() {
                out[p].1.push(gi);
            }
        }
        out
    }

    /// The owner's plaintext plan and weights (for computing `F`).
    fn plaintext(fm: &FixedModel) -> (Plan, Vec<WeightShare>) {
        let mut ws = Vec::new();
        let mut gp = Vec::new();
        for l in &fm.layers {
            match l {
                FixedLayer::Conv { name, w, b, .. } | FixedLayer::Linear { name, w, b, .. } => {
                    ws.push(WeightShare {
                        name: name.clone(),
                        w: w.clone(),
                        bias: b.clone(),
                    });
                    gp.push(None);
                }
                FixedLayer::Shared { s, .. } => gp.push(Some(GroupShares {
                    v: s.v.clone(),
                    bias: s.bias.clone(),
                    u: s.fused.as_ref().map(|f| f.u.clone()).unwrap_or_default(),
                    beta: s.fused.as_ref().map(|f| f.beta.clone()).unwrap_or_default(),
                })),
                _ => gp.push(None),
            }
        }
        (build_plan(fm, 1, &gp), ws)
    }

    struct Run {
        /// The reconstructed output.
        out: Vec<u64>,
        /// What each party received, with the sender.
        views: [Vec<(usize, Vec<u8>)>; 3],
        /// Each party's model-setup costs.
        setup: [PartyCosts; 3],
        /// Each party's installed masked weights.
        weights: [BTreeMap<String, MaskedWeight>; 3],
    }

    /// The suite a session runs.
    enum Kind {
        Fast(super::super::FastConfig, CmpMode),
        Mimo(crate::mimo::MimoConfig),
    }

    /// Runs the one-time setup (returning its costs and the installed masked weights), the
    /// offline phase and the plan on this party's input shares `x`.
    fn drive<S: Suite>(
        sn: &mut S,
        plan: &Plan,
        w: &[WeightShare],
        x: Shared,
        installed: impl Fn(&S) -> BTreeMap<String, MaskedWeight>,
    ) -> (Shared, PartyCosts, BTreeMap<String, MaskedWeight>) {
        sn.comm().set_phase(Phase::Offline);
        sn.comm().set_label("model-setup");
        sn.prepare(plan, w).unwrap();
        let setup = sn.comm().take_costs();
        let ws = installed(sn);
        sn.offline(plan, w).unwrap();
        sn.comm().set_phase(Phase::Online);
        let mut x = x;
        for op in &plan.ops {
            x = exec_op(sn, op, &x, 1, w).unwrap();
        }
        (x, setup, ws)
    }

    /// One session of `fm` on the encoded image `x` with the fixed masks `fixed` (per party),
    /// fresh OS-seeded dealer seeds and fresh shares.
    fn session(fm: &FixedModel, kind: &Kind, fixed: &[FixedMasks; 3], x: &[u64]) -> Run {
        let mut prg = Prg::from_os().unwrap();
        let shares = session_shares(fm, &mut prg);
        let x0 = prg.gen_u64s(x.len());
        let xs = [x0.clone(), crate::ring::sub(x, &x0), Vec::new()];
        let logs: Vec<RecvLog> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let results: Vec<(Shared, PartyCosts, BTreeMap<String, MaskedWeight>)> =
            std::thread::scope(|s| {
                let hs: Vec<_> = MemTransport::trio()
                    .into_iter()
                    .enumerate()
                    .map(|(p, t)| {
                        let (log, sh, x, fx) =
                            (logs[p].clone(), &shares[p], xs[p].clone(), fixed[p].clone());
                        s.spawn(move || {
                            let comm = Comm::new(Box::new(Recording { inner: t, log }));
                            let plan = build_plan(fm, 1, &sh.1);
                            match kind {
                                Kind::Fast(cfg, mode) => {
                                    let mut sn = FastSuite::new(comm, 13, cfg.clone(), *mode)
                                        .with_fixed_masks(fx);
                                    drive(&mut sn, &plan, &sh.0, x, |s| (*s.weights).clone())
                                }
                                Kind::Mimo(cfg) => {
                                    let mut sn = crate::mimo::MimoSuite::new(comm, 13, cfg.clone())
                                        .with_fixed_masks(fx);
                                    drive(&mut sn, &plan, &sh.0, x, |s| s.installed_weights())
                                }
                            }
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
        let mut it = results.into_iter();
        let (r0, r1, r2) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        Run {
            out: crate::ring::add(&r0.0, &r1.0),
            views: std::array::from_fn(|p| std::mem::take(&mut *logs[p].lock().unwrap())),
            setup: [r0.1, r1.1, r2.1],
            weights: [r0.2, r1.2, r2.2],
        }
    }

    fn sent(c: &PartyCosts) -> u64 {
        c.values().map(|k| k.bytes).sum()
    }

    /// One session on fixed masks: its output is the plaintext fixed point's within the
    /// truncation error, no party opened anything (P0 and P1 send nothing in the setup, the
    /// dealer only its two seeds), and every tensor of `layout` is installed with the owner's
    /// `F` (the same at P0 and P1), `B = B_0 + B_1` at the dealer and `F + B = W`.
    fn check_fixed_session(
        what: &str,
        fm: &FixedModel,
        r: &Run,
        want: &[f32],
        layout: &[MaskedTensor],
        f: &[u64],
    ) {
        let got = fm.fp.decode_vec(&r.out);
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() < 0.01 + 0.01 * b.abs(),
                "{what}: {got:?} vs {want:?}"
            );
        }
        assert_eq!(sent(&r.setup[0]), 0, "{what}: P0 opened something");
        assert_eq!(sent(&r.setup[1]), 0, "{what}: P1 opened something");
        assert_eq!(
            sent(&r.setup[2]),
            32,
            "{what}: the dealer sends its two seeds"
        );
        let mut off = 0;
        for t in layout {
            let (w0, w1, w2) = (
                &r.weights[0][&t.key],
                &r.weights[1][&t.key],
                &r.weights[2][&t.key],
            );
            assert_eq!(w0.f, f[off..off + t.len], "{what} {}", t.key);
            assert_eq!(w1.f, w0.f);
            assert_eq!(w2.b, crate::ring::add(&w0.b, &w1.b));
            assert_eq!(
                crate::ring::add(&w0.f, &w2.b),
                t.w,
                "{what}: F + B = W for {}",
                t.key
            );
            off += t.len;
        }
    }

    /// Two sessions on one fixed mask state: both equal the plaintext fixed point, nothing is
    /// opened (P0 and P1 send nothing in the setup, the dealer only its two fresh seeds), the
    /// installed `F` is the owner's and `F + B = W`, and the dealer's per-session material
    /// (seeds, corrections) differs between the sessions. Fused Pool gates (Fashion-MNIST
    /// `uniform32`), a fused Fold block (CIFAR-10 `uniform32`'s first block) and an unfused FC
    /// decider (`act1=channel:fc`), in both comparison modes.
    /// Two sessions of the same pair: P`p` gets the same pattern of dealer messages, the first
    /// the 16-byte session seed, and no message of 8 bytes or more repeats across them.
    fn assert_fresh_dealer_messages(runs: &[Run], p: usize, what: &str) {
        let from_dealer = |r: &Run| -> Vec<Vec<u8>> {
            r.views[p]
                .iter()
                .filter(|(s, _)| *s == 2)
                .map(|(_, m)| m.clone())
                .collect()
        };
        let (a, b) = (from_dealer(&runs[0]), from_dealer(&runs[1]));
        assert_eq!(a.len(), b.len(), "{what}: same message pattern");
        assert_eq!(a[0].len(), 16, "{what}: the first is the session seed");
        for (i, (ma, mb)) in a.iter().zip(&b).enumerate() {
            if ma.len() >= 8 {
                assert_ne!(
                    ma, mb,
                    "{what}: P{p}'s dealer message {i} repeated across sessions"
                );
            }
        }
    }

    #[test]
    fn fixed_masks_serve_two_sessions_with_fresh_dealer_material() {
        let cases = [
            (Arch::Fmnist, "uniform32", None, None, CmpMode::Tree, "fast"),
            (
                Arch::Cifar10,
                "uniform32",
                None,
                Some(2),
                CmpMode::Tree,
                "fast",
            ),
            (
                Arch::Svhn,
                "original",
                Some("act1=channel:fc"),
                None,
                CmpMode::Fss,
                "fss",
            ),
        ];
        for (arch, preset, free, layers, mode, proto) in cases {
            let what = format!("{arch} {preset} {free:?} {proto}");
            let (fm, m) = fixed_model(arch, preset, free, layers);
            let cfg = config_for_model(&fm, &m).unwrap();
            let keys = MaskKeys::fresh().unwrap();
            let seeds = keys.seeds(proto, 13).unwrap();
            let (pplan, pw) = plaintext(&fm);
            let f = Arc::new(opening(&pplan, &pw, seeds).unwrap());
            assert_eq!(f.len(), masked_len(&pplan, &pw).unwrap());
            let fixed = trio(&f, seeds);
            let (x, want) = image_and_logits(&fm);
            let runs: Vec<Run> = (0..2)
                .map(|_| session(&fm, &Kind::Fast(cfg.clone(), mode), &fixed, &x))
                .collect();
            let layout = mask_layout(&pplan, &pw).unwrap();
            for r in &runs {
                check_fixed_session(&what, &fm, r, &want, &layout, &f);
                for t in &layout {
                    let w0 = &r.weights[0][&t.key];
                    assert_eq!(
                        w0.online,
                        crate::ring::add(&w0.f, &w0.b),
                        "{what} {}",
                        t.key
                    );
                }
            }
            // The masks are the pair's; the dealer's material is the session's.
            assert_eq!(runs[0].weights[2].len(), layout.len());
            for p in 0..2 {
                assert_fresh_dealer_messages(&runs, p, &what);
                // nothing from the dealer in the setup is derived from the pair's keys
                for (_, m) in runs[0].views[p].iter().filter(|(s, _)| *s == 2) {
                    assert_ne!(m.as_slice(), &seeds.0[..]);
                    assert_ne!(m.as_slice(), &seeds.1[..]);
                }
            }
            // P1 receives dealer corrections in the offline phase (more than the seed).
            assert!(
                runs[0].views[1].iter().filter(|(s, _)| *s == 2).count() > 1,
                "{what}"
            );
        }
    }

    /// Whether `hay` contains `needle`.
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// `mimo` on a pair's fixed masks (its own context and layout): two sessions equal the
    /// plaintext fixed point of the model prepared for `mimo`, nothing is opened in the setup,
    /// `F + B = W` for every tensor of `mimo`'s layout (no fused convolution's bias: `mimo`
    /// does not mask it), the dealer's material is fresh per session, and no message the
    /// client receives contains a run of the plaintext weights. Fused whole-channel gates
    /// (Fashion-MNIST `uniform32`, dense `U`), fused patch gates (CIFAR-10 `uniform3`'s first
    /// block, sparse `U`) and an unfused FC decider `v` (SVHN `act1=channel:fc`, not fused).
    #[test]
    fn mimo_takes_fixed_masks() {
        let cases = [
            (Arch::Fmnist, "uniform32", None, None, true),
            (Arch::Cifar10, "uniform3", None, Some(2), true),
            (Arch::Svhn, "original", Some("act1=channel:fc"), None, false),
        ];
        for (arch, preset, free, layers, prepare) in cases {
            let what = format!("{arch} {preset} {free:?} mimo");
            let mut spec = presets::build(arch, preset).unwrap();
            if let Some(f) = free {
                presets::apply_freeform(&mut spec, f).unwrap();
            }
            let m = Model::random(spec, None, 11).unwrap();
            let mut fm = FixedModel::from_model(&m, 13).unwrap();
            if prepare {
                let fused =
                    crate::protocol::prepare_model(crate::protocol::Protocol::Mimo, &mut fm)
                        .unwrap();
                assert!(!fused.is_empty(), "{what}");
            }
            if let Some(l) = layers {
                fm.truncate(l);
            }
            let cfg = crate::mimo::config_for_model(&fm, &m).unwrap();
            let keys = MaskKeys::fresh().unwrap();
            let seeds = keys.seeds("mimo", 13).unwrap();
            assert_ne!(seeds, keys.seeds("fast", 13).unwrap());
            let (pplan, pw) = plaintext(&fm);
            let layout = layout_for("mimo", &pplan, &pw).unwrap();
            let f = Arc::new(opening_for("mimo", &pplan, &pw, seeds).unwrap());
            assert_eq!(f.len(), masked_len_for("mimo", &pplan, &pw).unwrap());
            // mimo masks no fused convolution's bias; fast does (Fold mode).
            assert!(layout.iter().all(|t| !t.key.ends_with(".bias")), "{what}");
            if prepare {
                assert!(
                    layout.len() < mask_layout(&pplan, &pw).unwrap().len(),
                    "{what}"
                );
            } else {
                assert!(layout.iter().any(|t| t.key == "act1.v"), "{what}");
            }
            let fixed = trio(&f, seeds);
            let (x, want) = image_and_logits(&fm);
            let kind = Kind::Mimo(cfg);
            let runs: Vec<Run> = (0..2).map(|_| session(&fm, &kind, &fixed, &x)).collect();
            for r in &runs {
                check_fixed_session(&what, &fm, r, &want, &layout, &f);
                assert_eq!(r.weights[0].len(), layout.len(), "{what}");
                // The client's view: no run of 4 plaintext weights of any masked tensor.
                for t in &layout {
                    for run in t.w.chunks_exact(4).take(64) {
                        if run.iter().all(|&v| v == 0) {
                            continue;
                        }
                        let needle = crate::ring::u64s_to_bytes(run);
                        for (from, msg) in &r.views[0] {
                            assert!(
                                !contains(msg, &needle),
                                "{what}: a message from P{from} holds weights of {}",
                                t.key
                            );
                        }
                    }
                }
            }
            for p in 0..2 {
                assert_fresh_dealer_messages(&runs, p, &what);
            }
        }
    }

    #[test]
    fn contexts_have_their_own_masks_and_parties_their_own_variant() {
        let k = MaskKeys::fresh().unwrap();
        let a = k.seeds("fast", 13).unwrap();
        assert_ne!(a, k.seeds("fast", 12).unwrap());
        assert_ne!(a, k.seeds("fss", 13).unwrap());
        assert_ne!(a, k.seeds("mimo", 13).unwrap());
        assert_ne!(k.seeds("fss", 13).unwrap(), k.seeds("mimo", 13).unwrap());
        assert_eq!(a, k.seeds("fast", 13).unwrap());
        assert_ne!(a.0, a.1);
        assert!(k.seeds("securenn", 13).is_err());
        assert_eq!(MaskKeys::from_bytes(&k.to_bytes()).unwrap(), k);
        assert!(MaskKeys::from_bytes(&[0; 31]).is_err());
        assert_eq!(format!("{k:?}"), "MaskKeys(..)");
        let f = Arc::new(vec![1u64, 2, 3]);
        let c = FixedMasks::Client {
            f: f.clone(),
            seed0: a.0,
        };
        assert!(c.clone().install(1, &[3]).is_err());
        assert!(c.clone().install(0, &[4]).is_err());
        let w = c.install(0, &[1, 2]).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].f, vec![2, 3]);
        assert!(FixedMasks::Dealer {
            seed0: a.0,
            seed1: a.1
        }
        .install(0, &[3])
        .is_err());
    }
}
