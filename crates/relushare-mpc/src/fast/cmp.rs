//! Comparison (DReLU) of additively shared values against zero, ReLU, and the select gates.
//!
//! # Comparison on a small ring
//! A secret `y` with `|y| < 2^(k-1)` is compared on Z_2^k: reduction mod 2^k of additive shares
//! is a ring homomorphism, so the low `k` bits of the opened `c = y + r` equal
//! `(y + r) mod 2^k`. With `u = y + 2^(k-1)` (in `[0, 2^k)`) and `c_u = c + 2^(k-1) mod 2^k`,
//! `[y >= 0] = MSB(u) = c_u[k-1] XOR r[k-1] XOR [c_u mod 2^(k-1) < r mod 2^(k-1)]`.
//!
//! # Less-than circuit against public `c`
//! The dealer supplies XOR shares of the bits of `r mod 2^k` (an edaBit whose arithmetic part
//! is the seed-derived `r`), and for every pair of adjacent bits the monomial `r_(2p+1) r_(2p)`.
//! With `c` public, the generate/propagate pair of every 2-bit leaf, `G = [c_leaf < r_leaf]`,
//! `P = [c_leaf == r_leaf]`, is then *linear* in the dealt bits (no communication). Leaves are
//! combined in a tree whose nodes take up to [`MAX_WIDTH`] adjacent segments at once (high to
//! low, `S_0 .. S_(w-1)`):
//! `G = G_0 ^ P_0 G_1 ^ P_0 P_1 G_2 ^ ... ^ P_0 .. P_(w-2) G_(w-1)`, `P = P_0 .. P_(w-1)`
//! (the terms are mutually exclusive, so XOR is OR). Every tree level is one round: each
//! variable that is multiplied (`P_0 .. P_(w-2)`, `G_1 .. G_(w-1)`, and `P_(w-1)` where `P` is
//! needed) is opened once under a fresh dealt mask `x^ = x ^ a`, and every monomial is then
//! local, `prod (x^_v ^ a_v) = XOR over subsets S of (prod_(v not in S) x^_v) (prod_(v in S) a_v)`,
//! with the dealer's XOR shares of the mask products `prod_(v in S) a_v` for every subset of two
//! or more variables of a monomial ([`Node::products`]). Width 2 is the classic Beaver AND.
//! The lowest segment never needs `P`. For `k` bits: `L = (k-1)/2` leaves and `ceil(log5 L)`
//! rounds (1 on rings of up to 11 bits, 2 up to 51 bits); among the trees with that many
//! levels, [`Schedule::new`] picks the node widths with the fewest bits in all (dealt products
//! plus opened variables of both parties): wide nodes near the root, where there are few,
//! narrow ones at the leaves. Width 5 costs 52 dealt bits per element against 22 at width 4,
//! but it is only taken where it saves a level or bits: decision values on twice the
//! fractional bits (41-bit rings, 20 leaves) compare in 2 rounds instead of 3.
//!
//! # Costs (bytes sent per party, `n` elements; `pb = ceil(n/8)`)
//! * tree: `pb` per opened variable ([`Node::vars`]: `2 (w - 1)`, plus 1 where `P` is needed),
//!   see [`Schedule::online_bytes`];
//! * dealer material (P1's corrections): `k * pb` (bits of r) + `L * pb` (leaf monomials) +
//!   `pb` per mask product of every node ([`Node::products`]: 1 or 2 at width 2, 5 or 8 at
//!   width 3, 15 or 22 at width 4, 37 or 52 at width 5).

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::fast::bits::{self, Plane};
use crate::fast::deal::Deal;
use crate::fast::CmpMode;

/// Most segments one node of the tree combines (its monomials have up to this degree).
pub const MAX_WIDTH: usize = 5;

/// One combine of the tree: the segments `first .. first + width` of the current level's list
/// (high to low) become one. A node of width 1 passes its segment on unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// Index of the node's highest segment.
    pub first: usize,
    /// Number of segments, 1 to [`MAX_WIDTH`].
    pub width: usize,
    /// Is the combined propagate bit needed (false for the node holding the lowest segment)?
    pub need_p: bool,
}

impl Node {
    /// Variables the node opens (per element): `P_0 .. P_(w-2)` (indices `0 .. w-1`),
    /// `G_1 .. G_(w-1)` (indices `w-1 .. 2w-2`) and, where `P` is needed, `P_(w-1)` (index
    /// `2w-2`).
    pub fn vars(&self) -> usize {
        if self.width < 2 {
            0
        } else {
            2 * (self.width - 1) + usize::from(self.need_p)
        }
    }

    /// Variable index of `P_i`.
    fn p_var(&self, i: usize) -> usize {
        if i + 1 < self.width {
            i
        } else {
            2 * (self.width - 1)
        }
    }

    /// Variable index of `G_j`, `j >= 1`.
    fn g_var(&self, j: usize) -> usize {
        self.width - 2 + j
    }

    /// The monomials, as bit sets of variables: `P_0 .. P_(j-1) G_j` for `j = 1 .. w-1`, then
    /// `P_0 .. P_(w-1)` where `P` is needed.
    pub fn monomials(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prefix = 0u32;
        for j in 1..self.width {
            prefix |= 1 << self.p_var(j - 1);
            out.push(prefix | 1 << self.g_var(j));
        }
        if self.need_p && self.width >= 2 {
            out.push(prefix | 1 << self.p_var(self.width - 1));
        }
        out
    }

    /// The mask products the dealer supplies: every subset of two or more variables of a
    /// monomial, ascending.
    pub fn products(&self) -> Vec<u32> {
        let mut set = std::collections::BTreeSet::new();
        for m in self.monomials() {
            let mut sub = m;
            while sub != 0 {
                if sub.count_ones() >= 2 {
                    set.insert(sub);
                }
                sub = (sub - 1) & m;
            }
        }
        set.into_iter().collect()
    }

    /// Bits per element in all: dealt products, and opened variables sent by both parties.
    fn bits(&self) -> usize {
        self.products().len() + 2 * self.vars()
    }
}

/// The tree schedule for a `k`-bit comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Comparison ring bits (odd, >= 3).
    pub k: u32,
    /// Number of 2-bit leaves, `(k-1)/2`.
    pub leaves: usize,
    /// Levels of combines (one round each).
    pub levels: Vec<Vec<Node>>,
}

/// `table[d][s]`: for `s` segments reduced to one in at most `d` levels, the fewest bits per
/// element and the widths of the first level of that tree (ascending, so that the widest node
/// holds the lowest segment and needs no `P`); `None` where `d` levels cannot.
type Plans = Vec<Vec<Option<(usize, Vec<usize>)>>>;

/// The cheapest trees for up to `max_s` segments and `max_d` levels, by dynamic programming
/// over the levels (`cost[w][need_p]`: a node's bits).
fn cheapest_trees(max_s: usize, max_d: usize, cost: &[[usize; 2]; MAX_WIDTH + 1]) -> Plans {
    let mut table: Plans = vec![vec![None; max_s + 1]; max_d + 1];
    for row in table.iter_mut() {
        row[1] = Some((0, Vec::new()));
    }
    for d in 1..=max_d {
        for s in 2..=max_s {
            let mut best: Option<(usize, Vec<usize>)> = None;
            for widths in level_widths(s) {
                let next = widths.len();
                if next == s {
                    continue;
                }
                let Some((rest, _)) = &table[d - 1][next] else {
                    continue;
                };
                let here: usize = widths
                    .iter()
                    .enumerate()
                    .map(|(i, &w)| cost[w][usize::from(i + 1 < widths.len())])
                    .sum();
                if best.as_ref().is_none_or(|b| here + rest < b.0) {
                    best = Some((here + rest, widths));
                }
            }
            table[d][s] = best;
        }
    }
    table
}

/// Every way to cover `s` segments with nodes of width 1 to [`MAX_WIDTH`], each as its widths in
/// ascending order (one list per multiset of widths).
fn level_widths(s: usize) -> Vec<Vec<usize>> {
    // Counts of widths MAX_WIDTH down to 2 (the rest pass), by depth-first enumeration.
    fn go(rest: usize, w: usize, acc: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if w < 2 {
            let mut widths = vec![1; rest];
            widths.extend(acc.iter().rev());
            out.push(widths);
            return;
        }
        for c in 0..=rest / w {
            acc.extend(std::iter::repeat_n(w, c));
            go(rest - c * w, w - 1, acc, out);
            acc.truncate(acc.len() - c);
        }
    }
    let mut out = Vec::new();
    go(s, MAX_WIDTH, &mut Vec::new(), &mut out);
    out
}

/// The fewest levels that reduce `leaves` segments to one: `ceil(log_MAX_WIDTH(leaves))`.
fn tree_depth(leaves: usize) -> usize {
    let mut depth = 0;
    while MAX_WIDTH.pow(depth as u32) < leaves {
        depth += 1;
    }
    depth
}

/// The schedules of every odd `k` in 3..=63, computed once.
fn schedules() -> &'static [Schedule] {
    static ALL: std::sync::OnceLock<Vec<Schedule>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut cost = [[0usize; 2]; MAX_WIDTH + 1];
        for (width, c) in cost.iter_mut().enumerate().skip(2) {
            for need_p in [false, true] {
                c[usize::from(need_p)] = Node {
                    first: 0,
                    width,
                    need_p,
                }
                .bits();
            }
        }
        // Leaves of k = 63, the largest ring.
        let max_s = 31;
        let table = cheapest_trees(max_s, tree_depth(max_s), &cost);
        (3..=63u32)
            .step_by(2)
            .map(|k| {
                let leaves = ((k - 1) / 2) as usize;
                let depth = tree_depth(leaves);
                let mut levels = Vec::new();
                let mut segs = leaves;
                for d in (1..=depth).rev() {
                    if segs == 1 {
                        break;
                    }
                    let (_, ws) = table[d][segs].clone().expect("MAX_WIDTH^depth >= leaves");
                    let last = ws.len() - 1;
                    let mut first = 0;
                    levels.push(
                        ws.iter()
                            .enumerate()
                            .map(|(i, &width)| {
                                let node = Node {
                                    first,
                                    width,
                                    need_p: i != last,
                                };
                                first += width;
                                node
                            })
                            .collect::<Vec<_>>(),
                    );
                    segs = ws.len();
                }
                Schedule { k, leaves, levels }
            })
            .collect()
    })
}

impl Schedule {
    /// Schedule for `k` bits; `k` must be odd and in 3..=63.
    pub fn new(k: u32) -> Result<Schedule> {
        if !(3..=63).contains(&k) || k.is_multiple_of(2) {
            return Err(MpcError::Param(format!(
                "comparison ring bits must be odd in 3..=63, got {k}"
            )));
        }
        Ok(schedules()[(k as usize - 3) / 2].clone())
    }

    /// Rounds of the tree.
    pub fn rounds(&self) -> usize {
        self.levels.len()
    }

    /// Planes opened per party per element over the whole tree.
    pub fn open_planes(&self) -> usize {
        self.levels.iter().flatten().map(Node::vars).sum()
    }

    /// Dealt mask products (corrections) per element.
    pub fn and_gates(&self) -> usize {
        self.levels
            .iter()
            .flatten()
            .map(|n| n.products().len())
            .sum()
    }

    /// Online bytes sent by one party for `n` comparisons (tree only).
    pub fn online_bytes(&self, n: usize) -> usize {
        self.open_planes() * bits::plane_bytes(n)
    }

    /// Dealer bytes (P1's corrections) for `n` comparisons.
    pub fn offline_bytes(&self, n: usize) -> usize {
        (self.k as usize + self.leaves + self.and_gates()) * bits::plane_bytes(n)
    }
}

/// Mask material of one node: this party's shares of the variables' masks and of the mask
/// products (in [`Node::products`] order).
pub struct NodeMat {
    a: Vec<Plane>,
    prods: Vec<Plane>,
}

/// Dealer material of `n` comparisons on `k` bits (this party's shares).
pub struct CmpMat {
    /// Schedule.
    pub sched: Schedule,
    /// Number of elements.
    pub n: usize,
    /// Shares of bit `j` of `r mod 2^k`, `j = 0..k`.
    pub r: Vec<Plane>,
    /// Shares of `r_(2p+1) r_(2p)`.
    pub m: Vec<Plane>,
    levels: Vec<Vec<NodeMat>>,
}

/// Deal comparison material for `n` values whose mask (mod 2^k) the dealer passes in `r_secret`.
pub fn deal_cmp(d: &mut Deal, n: usize, k: u32, r_secret: Option<&[u64]>) -> Result<CmpMat> {
    let sched = Schedule::new(k)?;
    let mut r = Vec::with_capacity(k as usize);
    let sec_planes: Option<Vec<Plane>> = r_secret.map(|rs| bits::bit_planes(rs, k));
    for j in 0..k as usize {
        r.push(d.corr_bits(n, sec_planes.as_ref().map(|p| p[j].as_slice()))?);
    }
    let mut m = Vec::with_capacity(sched.leaves);
    for p in 0..sched.leaves {
        let s = sec_planes
            .as_ref()
            .map(|sp| bits::and(&sp[2 * p + 1], &sp[2 * p]));
        m.push(d.corr_bits(n, s.as_deref())?);
    }
    let mut levels = Vec::with_capacity(sched.levels.len());
    for lv in &sched.levels {
        let mut mats = Vec::with_capacity(lv.len());
        for node in lv {
            let masks: Vec<_> = (0..node.vars()).map(|_| d.rand_bits(n)).collect();
            let mut prods = Vec::new();
            for set in node.products() {
                // The dealer's product of the masks of `set`.
                let secret = d.is_dealer().then(|| {
                    let mut vars = (0..masks.len()).filter(|v| set & (1 << v) != 0);
                    let mask = |v: usize| masks[v].secret.as_deref().expect("dealer");
                    let first = mask(vars.next().expect("two or more variables")).to_vec();
                    vars.fold(first, |acc, v| bits::and(&acc, mask(v)))
                });
                prods.push(d.corr_bits(n, secret.as_deref())?);
            }
            mats.push(NodeMat {
                a: masks.into_iter().map(|m| m.mine).collect(),
                prods,
            });
        }
        levels.push(mats);
    }
    Ok(CmpMat {
        sched,
        n,
        r,
        m,
        levels,
    })
}

/// Open XOR-shared planes between P0 and P1 (one round, `ceil(n/8)` bytes per plane each way).
pub fn open_planes(comm: &mut Comm, planes: &[&[u64]], n: usize) -> Result<Vec<Plane>> {
    let me = comm.party();
    let peer = 1 - me;
    let msg = bits::pack_planes(planes, n);
    let got = comm.round(vec![(peer, msg)], &[peer])?;
    let theirs = bits::unpack_planes(&got[0], planes.len(), n, peer)?;
    let opened: Vec<Plane> = planes
        .iter()
        .zip(theirs)
        .map(|(a, mut b)| {
            bits::xor_assign(&mut b, a);
            bits::mask_tail(&mut b, n);
            b
        })
        .collect();
    #[cfg(test)]
    opened
        .iter()
        .for_each(|p| crate::view_harness::record_opened(p));
    Ok(opened)
}

/// Open an additively shared ring vector between P0 and P1 (one round, 8 bytes per element).
pub fn open_u64(comm: &mut Comm, mine: &[u64]) -> Result<Vec<u64>> {
    let peer = 1 - comm.party();
    let theirs = comm.exchange_u64(peer, mine)?;
    let opened: Vec<u64> = mine
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect();
    #[cfg(test)]
    crate::view_harness::record_opened(&opened);
    Ok(opened)
}

/// Open a vector shared mod 2^k (one round, `ceil(n*k/8)` bytes each way); result mod 2^k.
pub fn open_kbit(comm: &mut Comm, mine: &[u64], k: u32) -> Result<Vec<u64>> {
    let me = comm.party();
    let peer = 1 - me;
    let got = comm.round(vec![(peer, bits::pack_kbit(mine, k))], &[peer])?;
    let theirs = bits::unpack_kbit(&got[0], mine.len(), k, peer)?;
    let mask = (1u64 << k) - 1;
    let opened: Vec<u64> = mine
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.wrapping_add(*b) & mask)
        .collect();
    #[cfg(test)]
    crate::view_harness::record_opened(&opened);
    Ok(opened)
}

/// XOR shares of `[y >= 0]` given the public `c = y + r` (only its low `k` bits are used) and
/// the material dealt for `r`. Requires `|y| < 2^(k-1)`. `ceil(log5((k-1)/2))` rounds.
pub fn drelu_bits(comm: &mut Comm, mat: &CmpMat, c: &[u64]) -> Result<Plane> {
    let me = comm.party();
    let n = mat.n;
    if c.len() != n {
        return Err(MpcError::Shape(format!(
            "comparison of {} values, material for {n}",
            c.len()
        )));
    }
    let k = mat.sched.k;
    let half = 1u64 << (k - 1);
    let cu: Vec<u64> = c.iter().map(|x| x.wrapping_add(half)).collect();
    let wn = bits::words(n);
    // e_j = NOT c_j (public).
    let mut e: Vec<Plane> = bits::bit_planes(&cu, k);
    for p in e.iter_mut() {
        for w in p.iter_mut() {
            *w = !*w;
        }
        bits::mask_tail(p, n);
    }
    // Leaves, high to low.
    let nl = mat.sched.leaves;
    let mut g: Vec<Plane> = Vec::with_capacity(nl);
    let mut p: Vec<Plane> = Vec::with_capacity(nl);
    for i in 0..nl {
        let leaf = nl - 1 - i;
        let (h, l) = (2 * leaf + 1, 2 * leaf);
        let (eh, el, rh, rl, m) = (&e[h], &e[l], &mat.r[h], &mat.r[l], &mat.m[leaf]);
        let mut gp = vec![0u64; wn];
        let mut pp = vec![0u64; wn];
        for w in 0..wn {
            let ehrl = eh[w] & rl[w];
            gp[w] = (eh[w] & rh[w]) ^ (el[w] & (ehrl ^ m[w]));
            pp[w] = ehrl ^ (el[w] & rh[w]) ^ m[w] ^ if me == 0 { eh[w] & el[w] } else { 0 };
        }
        g.push(gp);
        p.push(pp);
    }
    for (lv, mats) in mat.sched.levels.iter().zip(&mat.levels) {
        // The masked variables of this level's nodes, opened in one round.
        let mut out: Vec<Plane> = Vec::new();
        for (node, nm) in lv.iter().zip(mats) {
            for (v, a) in nm.a.iter().enumerate() {
                out.push(bits::xor(node_var(node, v, &g, &p), a));
            }
        }
        let refs: Vec<&[u64]> = out.iter().map(|v| v.as_slice()).collect();
        let opened = open_planes(comm, &refs, n)?;
        let mut ng = Vec::with_capacity(lv.len());
        let mut np = Vec::with_capacity(lv.len());
        let mut idx = 0;
        for (node, nm) in lv.iter().zip(mats) {
            let (f, w) = (node.first, node.width);
            if w == 1 {
                ng.push(std::mem::take(&mut g[f]));
                np.push(std::mem::take(&mut p[f]));
                continue;
            }
            let xs = &opened[idx..idx + node.vars()];
            idx += node.vars();
            let products = node.products();
            let monomials = node.monomials();
            let mut gn = std::mem::take(&mut g[f]);
            let mut pn = Vec::new();
            for (i, &m) in monomials.iter().enumerate() {
                let v = monomial(me, m, xs, nm, &products, wn);
                if node.need_p && i + 1 == monomials.len() {
                    pn = v;
                } else {
                    bits::xor_assign(&mut gn, &v);
                }
            }
            ng.push(gn);
            np.push(pn);
        }
        g = ng;
        p = np;
    }
    let mut b = g
        .pop()
        .ok_or_else(|| MpcError::Param("empty comparison".into()))?;
    bits::xor_assign(&mut b, &mat.r[k as usize - 1]);
    if me == 0 {
        // c_u[k-1] = NOT e[k-1]
        for (w, x) in b.iter_mut().zip(&e[k as usize - 1]) {
            *w ^= !*x;
        }
    }
    bits::mask_tail(&mut b, n);
    Ok(b)
}

/// Variable `v` of `node` (see [`Node::vars`]) from the level's segments.
fn node_var<'a>(node: &Node, v: usize, g: &'a [Plane], p: &'a [Plane]) -> &'a [u64] {
    let (f, w) = (node.first, node.width);
    if v + 1 < w {
        &p[f + v]
    } else if v < 2 * (w - 1) {
        &g[f + v - (w - 1) + 1]
    } else {
        &p[f + w - 1]
    }
}

/// This party's XOR share of the monomial `m` (a set of the node's variables) from the opened
/// `xs = x ^ a`: the XOR over subsets `S` of `m` of `(prod_(v in m \ S) xs_v) (prod_(v in S) a_v)`,
/// where the empty product of masks is P0's 1, a single mask is this party's share `a_v`, and
/// larger ones are the dealt products.
fn monomial(me: usize, m: u32, xs: &[Plane], nm: &NodeMat, products: &[u32], wn: usize) -> Plane {
    let mut out = vec![0u64; wn];
    let mut sub = m;
    loop {
        let share: Option<&[u64]> = match sub.count_ones() {
            0 => None,
            1 => Some(&nm.a[sub.trailing_zeros() as usize]),
            _ => {
                let i = products
                    .binary_search(&sub)
                    .expect("every subset of a monomial is dealt");
                Some(&nm.prods[i])
            }
        };
        let public: Vec<usize> = (0..xs.len())
            .filter(|&v| (m & !sub) & (1 << v) != 0)
            .collect();
        if sub != 0 || me == 0 {
            for (w, o) in out.iter_mut().enumerate() {
                let mut t = share.map_or(u64::MAX, |s| s[w]);
                for &v in &public {
                    t &= xs[v][w];
                }
                *o ^= t;
            }
        }
        if sub == 0 {
            break;
        }
        sub = (sub - 1) & m;
    }
    out
}

/// Comparison material of either mode.
pub enum CmpAny {
    /// Tree circuit.
    Tree(CmpMat),
    /// Distributed comparison functions.
    Fss(crate::fss::FssCmpMat),
}

impl CmpAny {
    /// Comparison ring bits.
    pub fn k(&self) -> u32 {
        match self {
            CmpAny::Tree(m) => m.sched.k,
            CmpAny::Fss(m) => m.k,
        }
    }
}

/// Deal comparison material in `mode`.
pub fn deal_cmp_any(
    d: &mut Deal,
    n: usize,
    k: u32,
    r_secret: Option<&[u64]>,
    mode: CmpMode,
) -> Result<CmpAny> {
    Ok(match mode {
        CmpMode::Tree => CmpAny::Tree(deal_cmp(d, n, k, r_secret)?),
        CmpMode::Fss => CmpAny::Fss(crate::fss::deal_fss_cmp(d, n, k, r_secret)?),
    })
}

/// XOR shares of `[y >= 0]` from the public `c = y + r` in either mode.
pub fn drelu_any(comm: &mut Comm, mat: &CmpAny, c: &[u64]) -> Result<Plane> {
    match mat {
        CmpAny::Tree(m) => drelu_bits(comm, m, c),
        CmpAny::Fss(m) => crate::fss::drelu_bits(comm.party(), m, c),
    }
}

/// Dealer bytes of `n` comparisons: (to P1, to P0).
pub fn cmp_offline_bytes(n: usize, k: u32, mode: CmpMode) -> Result<(usize, usize)> {
    Ok(match mode {
        CmpMode::Tree => (Schedule::new(k)?.offline_bytes(n), 0),
        CmpMode::Fss => crate::fss::offline_bytes(n, k),
    })
}

/// Online bytes one party sends in `n` comparisons after the opening of `c`.
pub fn cmp_online_bytes(n: usize, k: u32, mode: CmpMode) -> Result<usize> {
    Ok(match mode {
        CmpMode::Tree => Schedule::new(k)?.online_bytes(n),
        CmpMode::Fss => 0,
    })
}

/// Online rounds of a comparison after the opening of `c`.
pub fn cmp_rounds(k: u32, mode: CmpMode) -> Result<usize> {
    Ok(match mode {
        CmpMode::Tree => Schedule::new(k)?.rounds(),
        CmpMode::Fss => 0,
    })
}

/// Dealer material of a ReLU on `n` elements with comparisons on `k` bits.
pub struct ReluMat {
    /// Share of the 64-bit mask `r` (seed-derived, free).
    pub r: Vec<u64>,
    /// Comparison material for `r mod 2^k`.
    pub cmp: CmpAny,
    /// Elements.
    pub n: usize,
    /// Share of the select mask bit `t` (free).
    pub t: Plane,
    /// Arithmetic share of `t` (correction).
    pub ta: Vec<u64>,
    /// Arithmetic share of `t * r` (correction).
    pub tr: Vec<u64>,
}

/// Deal a ReLU: `r` free, bits of `r mod 2^k` and comparison triples, `t` free, `t` and `t r`
/// arithmetic (16 bytes per element of P1 corrections plus [`Schedule::offline_bytes`]).
pub fn deal_relu(d: &mut Deal, n: usize, k: u32, mode: CmpMode) -> Result<ReluMat> {
    d.reserve_corrections(relu_offline_bytes(n, k, mode)?.0);
    let r = d.rand_u64(n);
    let cmp = deal_cmp_any(d, n, k, r.secret.as_deref(), mode)?;
    let t = d.rand_bits(n);
    let (tas, trs) = match (&t.secret, &r.secret) {
        (Some(ts), Some(rs)) => {
            let ta: Vec<u64> = (0..n).map(|i| bits::get(ts, i)).collect();
            let tr: Vec<u64> = ta.iter().zip(rs).map(|(a, b)| a.wrapping_mul(*b)).collect();
            (Some(ta), Some(tr))
        }
        _ => (None, None),
    };
    let ta = d.corr_u64(n, tas.as_deref())?;
    let tr = d.corr_u64(n, trs.as_deref())?;
    Ok(ReluMat {
        r: r.mine,
        cmp,
        n,
        t: t.mine,
        ta,
        tr,
    })
}

#[cfg(test)]
thread_local! {
    /// Test only: plant the raw-share bug in [`relu_online`] on this thread's party (it opens
    /// its share of `y` instead of `y + r`), for the view tests' control.
    pub(crate) static PLANT_RAW_SHARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Test only: [`relu_online`] opens the decision bits `b` instead of `b ^ t` on this
    /// thread's party (each message alone is still masked by the receiver's share of `b`; the
    /// opened value is the sign of `y`).
    pub(crate) static PLANT_UNMASKED_BIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Online ReLU on shares `y` (`|y| < 2^(k-1)` required): opens `y + r` (8 bytes per element),
/// the comparison tree, then `b ^ t` (one bit); the output `b * y = b * (c - r)` is local.
/// Rounds: `2 + ceil(log5((k-1)/2))`.
pub fn relu_online(comm: &mut Comm, mat: &ReluMat, y: &[u64]) -> Result<Vec<u64>> {
    let me = comm.party();
    let n = mat.n;
    if y.len() != n {
        return Err(MpcError::Shape(format!(
            "ReLU of {} values, material for {n}",
            y.len()
        )));
    }
    let masked: Vec<u64> = y
        .iter()
        .zip(&mat.r)
        .map(|(a, b)| a.wrapping_add(*b))
        .collect();
    #[cfg(test)]
    let masked = if PLANT_RAW_SHARE.with(|p| p.get()) {
        y.to_vec()
    } else {
        masked
    };
    let c = open_u64(comm, &masked)?;
    let b = drelu_any(comm, &mat.cmp, &c)?;
    let masked_b = bits::xor(&b, &mat.t);
    #[cfg(test)]
    let masked_b = if PLANT_UNMASKED_BIT.with(|p| p.get()) {
        b
    } else {
        masked_b
    };
    let d = open_planes(comm, &[&masked_b], n)?
        .pop()
        .unwrap_or_default();
    Ok(select_from_open(me, &d, &c, &mat.r, &mat.ta, &mat.tr))
}

/// Local select: shares of `b * (c - r)` where `b = d ^ t`, `d` public, from shares of `r`,
/// `t` (arithmetic) and `t r`. With `b = d + (1 - 2d) t`:
/// `b (c - r) = b c - d r - (1 - 2d) t r`.
pub fn select_from_open(
    me: usize,
    d: &[u64],
    c: &[u64],
    r: &[u64],
    ta: &[u64],
    tr: &[u64],
) -> Vec<u64> {
    let n = c.len();
    let mut out = vec![0u64; n];
    let p0 = u64::from(me == 0);
    // 64 elements per word of `d` (branch-free; the slices are cut to equal lengths so the
    // inner loop has no bounds checks).
    for (wi, o) in out.chunks_mut(64).enumerate() {
        let base = wi * 64;
        let len = o.len();
        let (cw, rw, taw, trw) = (
            &c[base..base + len],
            &r[base..base + len],
            &ta[base..base + len],
            &tr[base..base + len],
        );
        let word = d[wi];
        for (j, v) in o.iter_mut().enumerate() {
            let di = (word >> j) & 1;
            // (1 - 2d) * x is x or -x: (x ^ neg) - neg with neg = -d (all ones when d = 1).
            let neg = di.wrapping_neg();
            let ba = (taw[j] ^ neg).wrapping_sub(neg).wrapping_add(p0 & di);
            *v = ba
                .wrapping_mul(cw[j])
                .wrapping_sub(rw[j] & neg)
                .wrapping_sub((trw[j] ^ neg).wrapping_sub(neg));
        }
    }
    out
}

/// Online bytes sent by one party for a ReLU on `n` elements.
pub fn relu_online_bytes(n: usize, k: u32, mode: CmpMode) -> Result<usize> {
    Ok(8 * n + cmp_online_bytes(n, k, mode)? + bits::plane_bytes(n))
}

/// Dealer bytes for a ReLU on `n` elements: (to P1, to P0).
pub fn relu_offline_bytes(n: usize, k: u32, mode: CmpMode) -> Result<(usize, usize)> {
    let (a, b) = cmp_offline_bytes(n, k, mode)?;
    Ok((a + 16 * n, b))
}

/// Online rounds of a ReLU.
pub fn relu_rounds(k: u32, mode: CmpMode) -> Result<usize> {
    Ok(2 + cmp_rounds(k, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-wise select equals the per-element formula, for both parties and a length
    /// that ends inside a word.
    #[test]
    fn select_matches_per_element_formula() {
        let n = 130;
        let mut s = 0x1234_5678u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s
        };
        let c: Vec<u64> = (0..n).map(|_| next()).collect();
        let r: Vec<u64> = (0..n).map(|_| next()).collect();
        let ta: Vec<u64> = (0..n).map(|_| next()).collect();
        let tr: Vec<u64> = (0..n).map(|_| next()).collect();
        let mut d = bits::from_fn(n, |i| i % 3 == 1 || i == 129);
        bits::mask_tail(&mut d, n);
        for me in 0..2 {
            let want: Vec<u64> = (0..n)
                .map(|i| {
                    let di = bits::get(&d, i);
                    let sign = 1u64.wrapping_sub(2 * di);
                    let ba = sign
                        .wrapping_mul(ta[i])
                        .wrapping_add(if me == 0 { di } else { 0 });
                    ba.wrapping_mul(c[i])
                        .wrapping_sub(di.wrapping_mul(r[i]))
                        .wrapping_sub(sign.wrapping_mul(tr[i]))
                })
                .collect();
            assert_eq!(
                select_from_open(me, &d, &c, &r, &ta, &tr),
                want,
                "party {me}"
            );
        }
    }
}
