//! The ReLU-sharing layer: one masked opening of the members, the group decision values on
//! shares, one comparison per group, and the member select without a second opening.
//!
//! Per batch the dealer deals a random 64-bit mask `r_i` per member (free). Online:
//! 1. open `e = s + r` (8 bytes per member per party);
//! 2. decision values: `OneHot` uses `e` at the leader directly (its mask is `r_leader`);
//!    `Learned`/`Fc` compute `z_g = sum v_i s_i (+ b_g)` locally from the masked weights
//!    `v = F + B` (opened once per model): `v_i s_i = (F_i + B_i)(e_i - r_i)`, where the dealer
//!    supplies shares of `W_g = sum_{i in g} B_i r_i` (8 bytes per group), then open `z + rho`
//!    on `k` bits (`ceil(k/8)` bytes per group);
//! 3. the comparison tree on the groups ([`crate::fast::cmp`]);
//! 4. open `d_g = keep_g ^ t_g` (one bit per group). Member `i` keeps
//!    `keep_i = d_g ^ tau_i` with `tau_i = t_g ^ noise_i` known to the dealer (`noise_i` are the
//!    dealer's secret Bernoulli(p) bits), so `y_i = keep_i (e_i - r_i)` is local given shares of
//!    `tau_i` (per group without noise, per member with noise) and `tau_i r_i` (per member).
//!
//! Dealer bytes (to P1): comparison material on the groups, 8 per group (`W_g`, Learned/Fc),
//! 8 per group or member (`tau`), 8 per member (`tau r`).

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::fast::bits::{self, Plane};
use crate::fast::cmp::{self, CmpAny};
use crate::fast::deal::Deal;
use crate::fast::linear::MaskedWeight;
use crate::fast::CmpMode;
use crate::prg::Prg;
use crate::suite::{DeciderKind, GroupPlan};

/// Per-batch material of a ReLU-sharing layer.
pub struct GroupMat {
    n: usize,
    r: Vec<u64>,
    wg: Vec<u64>,
    rho: Vec<u64>,
    cmp: CmpAny,
    t: Plane,
    ta: Vec<u64>,
    tr: Vec<u64>,
    per_member_tau: bool,
}

/// Deal the material of a ReLU-sharing layer for `n` images. `mv` is the masked `v`
/// (Learned/Fc); `noise_rng` is the dealer's private randomness for the noise bits.
pub fn deal_group(
    d: &mut Deal,
    n: usize,
    plan: &GroupPlan,
    k: u32,
    mv: Option<&MaskedWeight>,
    noise_rng: Option<&mut Prg>,
    mode: CmpMode,
) -> Result<GroupMat> {
    let total = n * plan.len;
    let groups = n * plan.num_groups;
    let map = plan.batch_map(n);
    let r = d.rand_u64(total);
    let (wg, rho, cmp) = match plan.decider {
        DeciderKind::OneHot => {
            let lead = r.secret.as_ref().map(|rs| leader_values(rs, n, plan));
            (
                Vec::new(),
                Vec::new(),
                cmp::deal_cmp_any(d, groups, k, lead.as_deref(), mode)?,
            )
        }
        DeciderKind::Learned | DeciderKind::Fc => {
            let mv = mv.ok_or_else(|| MpcError::Model("ReLU sharing: v was not masked".into()))?;
            let wsec = match &r.secret {
                Some(rs) => {
                    let mut w = vec![0u64; groups];
                    for (i, &g) in map.iter().enumerate() {
                        let bv = mv.b[i % plan.len];
                        w[g as usize] = w[g as usize].wrapping_add(bv.wrapping_mul(rs[i]));
                    }
                    Some(w)
                }
                None => None,
            };
            let wg = d.corr_u64(groups, wsec.as_deref())?;
            let rho = d.rand_u64(groups);
            let cmp = cmp::deal_cmp_any(d, groups, k, rho.secret.as_deref(), mode)?;
            (wg, rho.mine, cmp)
        }
    };
    let t = d.rand_bits(groups);
    let per_member_tau = plan.noise > 0.0;
    let (tau_sec, tr_sec) = match (&t.secret, &r.secret) {
        (Some(ts), Some(rs)) => {
            let mut tau: Vec<u64> = map.iter().map(|&g| bits::get(ts, g as usize)).collect();
            if per_member_tau {
                let rng = noise_rng
                    .ok_or_else(|| MpcError::Param("dealer noise source missing".into()))?;
                let nb = rng.bernoulli(total, plan.noise as f64);
                for (x, b) in tau.iter_mut().zip(nb) {
                    *x ^= b as u64;
                }
            }
            let tr: Vec<u64> = tau
                .iter()
                .zip(rs)
                .map(|(a, b)| a.wrapping_mul(*b))
                .collect();
            let tau_out = if per_member_tau {
                tau
            } else {
                (0..groups).map(|g| bits::get(ts, g)).collect()
            };
            (Some(tau_out), Some(tr))
        }
        _ => (None, None),
    };
    let ta = d.corr_u64(
        if per_member_tau { total } else { groups },
        tau_sec.as_deref(),
    )?;
    let tr = d.corr_u64(total, tr_sec.as_deref())?;
    Ok(GroupMat {
        n,
        r: r.mine,
        wg,
        rho,
        cmp,
        t: t.mine,
        ta,
        tr,
        per_member_tau,
    })
}

fn leader_values(v: &[u64], n: usize, plan: &GroupPlan) -> Vec<u64> {
    let mut out = Vec::with_capacity(n * plan.num_groups);
    for img in 0..n {
        out.extend(plan.leaders.iter().map(|&l| v[img * plan.len + l as usize]));
    }
    out
}

/// Online ReLU sharing on shares `x` of `n` images (P0/P1 only).
pub fn group_online(
    comm: &mut Comm,
    mat: &GroupMat,
    plan: &GroupPlan,
    mv: Option<&MaskedWeight>,
    x: &[u64],
) -> Result<Vec<u64>> {
    let me = comm.party();
    let n = mat.n;
    let total = n * plan.len;
    let groups = n * plan.num_groups;
    crate::ring::check_len("shared ReLU input", x, total)?;
    let map = plan.batch_map(n);
    let masked: Vec<u64> = x
        .iter()
        .zip(&mat.r)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect();
    let e = cmp::open_u64(comm, &masked)?;
    let k = mat.cmp.k();
    let b = match plan.decider {
        DeciderKind::OneHot => cmp::drelu_any(comm, &mat.cmp, &leader_values(&e, n, plan))?,
        DeciderKind::Learned | DeciderKind::Fc => {
            let mv = mv.ok_or_else(|| MpcError::Model("ReLU sharing: v was not masked".into()))?;
            let mut z: Vec<u64> = mat.wg.iter().map(|w| w.wrapping_neg()).collect();
            for (i, &g) in map.iter().enumerate() {
                let j = i % plan.len;
                let term = mv.online[j]
                    .wrapping_mul(e[i])
                    .wrapping_sub(mv.f[j].wrapping_mul(mat.r[i]));
                z[g as usize] = z[g as usize].wrapping_add(term);
            }
            if plan.decider == DeciderKind::Fc {
                crate::ring::check_len("Fc decider bias", &plan.bias, plan.num_groups)?;
                for (gi, zv) in z.iter_mut().enumerate() {
                    *zv = zv.wrapping_add(plan.bias[gi % plan.num_groups]);
                }
            }
            let mask = (1u64 << k) - 1;
            let zm: Vec<u64> = z
                .iter()
                .zip(&mat.rho)
                .map(|(a, b)| a.wrapping_add(*b) & mask)
                .collect();
            let c = cmp::open_kbit(comm, &zm, k)?;
            cmp::drelu_any(comm, &mat.cmp, &c)?
        }
    };
    let d = cmp::open_planes(comm, &[&bits::xor(&b, &mat.t)], groups)?
        .pop()
        .unwrap_or_default();
    // Expand the group decisions (and, without noise, tau) to the members.
    let dm = bits::from_fn(total, |i| bits::get(&d, map[i] as usize) == 1);
    let ta: Vec<u64> = if mat.per_member_tau {
        mat.ta.clone()
    } else {
        map.iter().map(|&g| mat.ta[g as usize]).collect()
    };
    Ok(cmp::select_from_open(me, &dm, &e, &mat.r, &ta, &mat.tr))
}
