//! Distributed comparison function with a vector payload over `Z_2^m` and early termination,
//! after Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee, "Function Secret Sharing for
//! Mixed-Mode and Fixed-Point Secure Computation" (Eurocrypt 2021), Fig. 1.
//!
//! `gen(alpha, beta)` gives two keys with `eval(0, k0, x) + eval(1, k1, x) = beta * [x < alpha]`
//! (mod `2^m`, elementwise over the `w` payload elements) for `n`-bit `x, alpha`, compared most
//! significant bit first. The keys share their correction words; only the root seeds differ
//! (and those are derived from the dealer's PRG seeds, so they cost nothing).
//!
//! # Sizes
//! Per key and level: a 127-bit seed correction (bit 0 of every seed is its control bit), two
//! control-bit corrections and `w` payload corrections of `m` bits. **Early termination**: the
//! last `et` levels are replaced by one leaf correction of `2^et * w` payload elements (the leaf
//! seed is expanded to a table indexed by the low `et` bits of `x`). [`Shape::new`] picks the
//! `et` that minimises the key: `(n - et)(129 + w m) + 2^et w m` bits ([`Shape::key_bits`]),
//! e.g. `et = 2` for `w = 2, m = 40`; a batch of keys is bit-packed without padding
//! ([`Shape::bytes`]).
//!
//! # PRG
//! Fixed-key AES-128 in Matyas-Meyer-Oseas mode, `G_i(s) = AES(s ^ i) ^ s ^ i`: blocks 0 and 1
//! are the left and right children (bit 0 = control bit, the rest the seed), blocks
//! `2 .. 2 + q` the left payload, `2 + q .. 2 + 2q` the right payload (`q = ceil(w / 2)`, two
//! 64-bit elements per block, reduced mod `2^m`), and from `2 + 2q` on the leaf table. An
//! evaluation expands only the child and payload it follows. Evaluation is level-synchronous over
//! a batch of keys, so AES runs on long block slices.

use crate::error::{MpcError, Result};
use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::Aes128;

/// The fixed AES key of this DCF's PRG (a public constant).
const FIXED_KEY: [u8; 16] = *b"relushare-vdcf-1";

/// Largest early-termination depth considered.
const MAX_ET: u32 = 10;

/// The public shape of a batch of keys: domain bits, payload elements and payload ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Domain bits `n` (inputs and points in `[0, 2^n)`).
    pub n: u32,
    /// Payload elements `w`.
    pub w: usize,
    /// Payload ring bits `m` (`1..=64`).
    pub m: u32,
    /// Early-terminated levels.
    pub et: u32,
}

/// `2^m - 1` (all ones for `m = 64`).
#[inline]
pub fn ring_mask(m: u32) -> u64 {
    if m >= 64 {
        u64::MAX
    } else {
        (1u64 << m) - 1
    }
}

impl Shape {
    /// The shape with the smallest key for `n`-bit points and `w` payload elements mod `2^m`.
    pub fn new(n: u32, w: usize, m: u32) -> Result<Shape> {
        if !(1..=63).contains(&n) || !(1..=64).contains(&m) || w == 0 {
            return Err(MpcError::Param(format!(
                "DCF shape: {n} domain bits (1..=63), {w} payload elements (>= 1), {m} ring bits \
                 (1..=64)"
            )));
        }
        let best = (0..=MAX_ET.min(n))
            .map(|et| Shape { n, w, m, et })
            .min_by_key(|s| s.key_bits())
            .expect("non-empty range");
        Ok(best)
    }

    /// Tree levels walked (`n - et`).
    pub fn levels(&self) -> u32 {
        self.n - self.et
    }

    /// Bits of one key's correction words.
    pub fn key_bits(&self) -> usize {
        let wm = self.w * self.m as usize;
        self.levels() as usize * (127 + 2 + wm) + (1usize << self.et) * wm
    }

    /// Bytes of the correction words of `keys` keys (bit-packed, one batch).
    pub fn bytes(&self, keys: usize) -> usize {
        (keys * self.key_bits()).div_ceil(8)
    }

    fn q(&self) -> usize {
        self.w.div_ceil(2)
    }

    fn leaf_len(&self) -> usize {
        (1usize << self.et) * self.w
    }
}

/// The PRG.
pub struct Prg {
    aes: Aes128,
}

impl Default for Prg {
    fn default() -> Self {
        Prg::new()
    }
}

impl Prg {
    /// The fixed-key PRG.
    pub fn new() -> Prg {
        Prg {
            aes: Aes128::new(&FIXED_KEY.into()),
        }
    }

    /// `G_{tweak(j) + i}(seeds[j])` for `i in 0..count`, into `out[j * count + i]`.
    fn blocks(
        &self,
        seeds: &[u128],
        count: usize,
        tweak: impl Fn(usize) -> u128,
        scratch: &mut Vec<u128>,
        out: &mut Vec<u128>,
    ) {
        scratch.clear();
        scratch.reserve(seeds.len() * count);
        for (j, s) in seeds.iter().enumerate() {
            let t = tweak(j);
            for i in 0..count as u128 {
                scratch.push(s ^ (t + i));
            }
        }
        self.mmo(scratch, out);
    }

    /// `out[i] = AES(inp[i]) ^ inp[i]` (Matyas-Meyer-Oseas), blocks as little-endian `u128`.
    fn mmo(&self, inp: &[u128], out: &mut Vec<u128>) {
        out.clear();
        out.extend_from_slice(inp);
        #[cfg(target_endian = "little")]
        {
            // SAFETY: `aes::Block` is a `repr(transparent)` array of 16 bytes (alignment 1), and
            // on a little-endian target a `u128`'s memory is its `to_le_bytes`.
            let blocks = unsafe {
                std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut aes::Block, out.len())
            };
            self.aes.encrypt_blocks(blocks);
        }
        #[cfg(not(target_endian = "little"))]
        {
            let mut blocks: Vec<aes::Block> = out
                .iter()
                .map(|v| aes::Block::from(v.to_le_bytes()))
                .collect();
            self.aes.encrypt_blocks(&mut blocks);
            for (o, b) in out.iter_mut().zip(&blocks) {
                *o = u128::from_le_bytes((*b).into());
            }
        }
        for (o, i) in out.iter_mut().zip(inp) {
            *o ^= i;
        }
    }
}

/// Payload elements from `q` PRG blocks (two per block), reduced mod `2^m`.
#[inline]
fn payload_from(blocks: &[u128], w: usize, mask: u64, out: &mut [u64]) {
    for (c, o) in out.iter_mut().enumerate().take(w) {
        let b = blocks[c / 2];
        *o = (if c % 2 == 0 {
            b as u64
        } else {
            (b >> 64) as u64
        }) & mask;
    }
}

/// The correction words of a batch of keys (shared by both parties' keys), level-major, so that
/// a level-synchronous evaluation streams through them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cws {
    /// Seed corrections (bit 0 clear): `scw[level * keys + j]`.
    pub scw: Vec<u128>,
    /// Control-bit corrections (bit 0 = left, bit 1 = right): `tcw[level * keys + j]`.
    pub tcw: Vec<u8>,
    /// Payload corrections: `vcw[(level * keys + j) * w + c]`.
    pub vcw: Vec<u64>,
    /// Leaf corrections: `leaf[(j * 2^et + slot) * w + c]`.
    pub leaf: Vec<u64>,
}

/// Bit writer (little-endian bit order).
struct BitWriter {
    out: Vec<u8>,
    acc: u128,
    nb: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> BitWriter {
        BitWriter {
            out: Vec::with_capacity(bytes),
            acc: 0,
            nb: 0,
        }
    }
    #[inline]
    fn put(&mut self, v: u64, bits: u32) {
        if bits == 0 {
            return;
        }
        let v = v & ring_mask(bits);
        self.acc |= (v as u128) << self.nb;
        self.nb += bits;
        if self.nb >= 64 {
            self.out.extend_from_slice(&(self.acc as u64).to_le_bytes());
            self.acc >>= 64;
            self.nb -= 64;
        }
    }
    fn finish(mut self) -> Vec<u8> {
        while self.nb > 0 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.nb = self.nb.saturating_sub(8);
        }
        self.out
    }
}

/// Bit reader matching [`BitWriter`].
struct BitReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    #[inline]
    fn get(&mut self, bits: u32) -> u64 {
        if bits == 0 {
            return 0;
        }
        let byte = self.pos / 8;
        let off = (self.pos % 8) as u32;
        let v = if byte + 16 <= self.b.len() {
            u128::from_le_bytes(self.b[byte..byte + 16].try_into().expect("16 bytes"))
        } else {
            let mut buf = [0u8; 16];
            let end = self.b.len();
            buf[..end - byte].copy_from_slice(&self.b[byte..end]);
            u128::from_le_bytes(buf)
        };
        self.pos += bits as usize;
        (v >> off) as u64 & ring_mask(bits)
    }
}

impl Cws {
    /// Serialise `keys` keys of shape `s` (exactly [`Shape::bytes`] bytes).
    pub fn to_bytes(&self, s: &Shape, keys: usize) -> Vec<u8> {
        let (w, m, lv) = (s.w, s.m, s.levels() as usize);
        let mut bw = BitWriter::with_capacity(s.bytes(keys) + 16);
        for l in 0..lv {
            for j in 0..keys {
                let c = self.scw[l * keys + j] >> 1;
                bw.put(c as u64, 64);
                bw.put((c >> 64) as u64, 63);
                bw.put(self.tcw[l * keys + j] as u64, 2);
                for c in 0..w {
                    bw.put(self.vcw[(l * keys + j) * w + c], m);
                }
            }
        }
        for v in &self.leaf {
            bw.put(*v, m);
        }
        let mut out = bw.finish();
        out.truncate(s.bytes(keys));
        out
    }

    /// Parse `keys` keys of shape `s`; `None` if the length is wrong.
    pub fn from_bytes(b: &[u8], s: &Shape, keys: usize) -> Option<Cws> {
        if b.len() != s.bytes(keys) {
            return None;
        }
        let (w, m, lv) = (s.w, s.m, s.levels() as usize);
        let mut c = Cws {
            scw: vec![0; lv * keys],
            tcw: vec![0; lv * keys],
            vcw: vec![0; lv * keys * w],
            leaf: vec![0; keys * s.leaf_len()],
        };
        let mut br = BitReader { b, pos: 0 };
        for l in 0..lv {
            for j in 0..keys {
                let lo = br.get(64) as u128;
                let hi = br.get(63) as u128;
                c.scw[l * keys + j] = (lo | hi << 64) << 1;
                c.tcw[l * keys + j] = br.get(2) as u8;
                for e in 0..w {
                    c.vcw[(l * keys + j) * w + e] = br.get(m);
                }
            }
        }
        for v in &mut c.leaf {
            *v = br.get(m);
        }
        Some(c)
    }
}

/// Keys per parallel chunk.
const CHUNK: usize = 256;

/// Generate the correction words of `alpha.len()` keys with points `alpha[j]` (low `n` bits)
/// and payloads `beta[j * w .. (j + 1) * w]` from the parties' root seeds.
pub fn gen(
    prg: &Prg,
    s: &Shape,
    alpha: &[u64],
    beta: &[u64],
    root0: &[u128],
    root1: &[u128],
) -> Result<Cws> {
    use rayon::prelude::*;
    let keys = alpha.len();
    let w = s.w;
    if beta.len() != keys * w || root0.len() != keys || root1.len() != keys {
        return Err(MpcError::Shape(format!(
            "DCF gen: {keys} points, {} payload elements (expected {}), {}/{} roots",
            beta.len(),
            keys * w,
            root0.len(),
            root1.len()
        )));
    }
    let lv = s.levels() as usize;
    let ll = s.leaf_len();
    // Chunks in parallel, each level-major over its own keys, then merged level by level.
    let parts: Vec<Cws> = (0..keys.div_ceil(CHUNK))
        .into_par_iter()
        .map(|ci| {
            let j0 = ci * CHUNK;
            let j1 = (j0 + CHUNK).min(keys);
            let ck = j1 - j0;
            let mut c = Cws {
                scw: vec![0; lv * ck],
                tcw: vec![0; lv * ck],
                vcw: vec![0; lv * ck * w],
                leaf: vec![0; ck * ll],
            };
            gen_chunk(
                prg,
                s,
                &alpha[j0..j1],
                &beta[j0 * w..j1 * w],
                &root0[j0..j1],
                &root1[j0..j1],
                &mut c,
            );
            c
        })
        .collect();
    let mut cw = Cws {
        scw: vec![0; lv * keys],
        tcw: vec![0; lv * keys],
        vcw: vec![0; lv * keys * w],
        leaf: Vec::with_capacity(keys * ll),
    };
    for (ci, p) in parts.into_iter().enumerate() {
        let j0 = ci * CHUNK;
        let ck = p.leaf.len() / ll;
        for l in 0..lv {
            let (a, b) = (l * keys + j0, l * ck);
            cw.scw[a..a + ck].copy_from_slice(&p.scw[b..b + ck]);
            cw.tcw[a..a + ck].copy_from_slice(&p.tcw[b..b + ck]);
            cw.vcw[a * w..(a + ck) * w].copy_from_slice(&p.vcw[b * w..(b + ck) * w]);
        }
        cw.leaf.extend_from_slice(&p.leaf);
    }
    Ok(cw)
}

/// [`gen`] on one chunk of keys into `out` (level-major over the chunk's keys).
fn gen_chunk(
    prg: &Prg,
    s: &Shape,
    alpha: &[u64],
    beta: &[u64],
    root0: &[u128],
    root1: &[u128],
    out: &mut Cws,
) {
    let Cws {
        scw: scw_out,
        tcw: tcw_out,
        vcw: vcw_out,
        leaf: leaf_out,
    } = out;
    let keys = alpha.len();
    let (w, q) = (s.w, s.q());
    let mask = ring_mask(s.m);
    let lv = s.levels() as usize;
    let mut s0: Vec<u128> = root0.iter().map(|v| v & !1).collect();
    let mut s1: Vec<u128> = root1.iter().map(|v| v & !1).collect();
    let mut t0 = vec![0u8; keys];
    let mut t1 = vec![1u8; keys];
    let mut va = vec![0u64; keys * w];
    let (mut e0, mut e1, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
    let per = 2 + 2 * q;
    let (mut v0, mut v1) = (vec![0u64; 2 * w], vec![0u64; 2 * w]);
    for l in 0..lv {
        let bitpos = s.n - 1 - l as u32;
        prg.blocks(&s0, per, |_| 0, &mut scratch, &mut e0);
        prg.blocks(&s1, per, |_| 0, &mut scratch, &mut e1);
        for j in 0..keys {
            let a = ((alpha[j] >> bitpos) & 1) as u8;
            let b0 = &e0[j * per..(j + 1) * per];
            let b1 = &e1[j * per..(j + 1) * per];
            // v?[0..w] = left payload, v?[w..2w] = right payload.
            payload_from(&b0[2..2 + q], w, mask, &mut v0[..w]);
            payload_from(&b0[2 + q..2 + 2 * q], w, mask, &mut v0[w..2 * w]);
            payload_from(&b1[2..2 + q], w, mask, &mut v1[..w]);
            payload_from(&b1[2 + q..2 + 2 * q], w, mask, &mut v1[w..2 * w]);
            let (keep, lose) = if a == 0 { (0, 1) } else { (1, 0) };
            let (sk0, tk0) = (b0[keep] & !1, (b0[keep] & 1) as u8);
            let (sk1, tk1) = (b1[keep] & !1, (b1[keep] & 1) as u8);
            let scw = (b0[lose] ^ b1[lose]) & !1;
            let (tl0, tr0) = ((b0[0] & 1) as u8, (b0[1] & 1) as u8);
            let (tl1, tr1) = ((b1[0] & 1) as u8, (b1[1] & 1) as u8);
            let neg = t1[j] == 1;
            let sign = |v: u64| if neg { v.wrapping_neg() } else { v };
            for c in 0..w {
                let (vlo0, vlo1) = (v0[lose * w + c], v1[lose * w + c]);
                let (vk0, vk1) = (v0[keep * w + c], v1[keep * w + c]);
                let mut inner = vlo1.wrapping_sub(vlo0).wrapping_sub(va[j * w + c]);
                if lose == 0 {
                    // Inputs that leave the path to the left here are below alpha.
                    inner = inner.wrapping_add(beta[j * w + c]);
                }
                let vcw = sign(inner) & mask;
                vcw_out[(l * keys + j) * w + c] = vcw;
                va[j * w + c] = va[j * w + c]
                    .wrapping_sub(vk1)
                    .wrapping_add(vk0)
                    .wrapping_add(sign(vcw));
            }
            let tcwl = tl0 ^ tl1 ^ a ^ 1;
            let tcwr = tr0 ^ tr1 ^ a;
            let tcwk = if a == 0 { tcwl } else { tcwr };
            scw_out[l * keys + j] = scw;
            tcw_out[l * keys + j] = tcwl | (tcwr << 1);
            s0[j] = sk0 ^ if t0[j] == 1 { scw } else { 0 };
            s1[j] = sk1 ^ if t1[j] == 1 { scw } else { 0 };
            t0[j] = tk0 ^ (t0[j] & tcwk);
            t1[j] = tk1 ^ (t1[j] & tcwk);
        }
    }
    // Leaf tables.
    let ll = s.leaf_len();
    let lb = ll.div_ceil(2);
    prg.blocks(&s0, lb, |_| per as u128, &mut scratch, &mut e0);
    prg.blocks(&s1, lb, |_| per as u128, &mut scratch, &mut e1);
    let low_mask = (1u64 << s.et) - 1;
    let mut c0 = vec![0u64; ll];
    let mut c1 = vec![0u64; ll];
    for j in 0..keys {
        payload_from(&e0[j * lb..(j + 1) * lb], ll, mask, &mut c0);
        payload_from(&e1[j * lb..(j + 1) * lb], ll, mask, &mut c1);
        let alow = alpha[j] & low_mask;
        let neg = t1[j] == 1;
        for slot in 0..(1usize << s.et) {
            for c in 0..w {
                let i = slot * w + c;
                let mut inner = c1[i].wrapping_sub(c0[i]).wrapping_sub(va[j * w + c]);
                if (slot as u64) < alow {
                    inner = inner.wrapping_add(beta[j * w + c]);
                }
                leaf_out[j * ll + i] = if neg { inner.wrapping_neg() } else { inner } & mask;
            }
        }
    }
}

/// Evaluate party `b`'s keys (root seeds `root`, shared corrections `cw`) at the points `x`;
/// returns `w` payload shares per key (`out[j * w + c]`, mod `2^m`).
pub fn eval(prg: &Prg, s: &Shape, b: u8, root: &[u128], cw: &Cws, x: &[u64]) -> Result<Vec<u64>> {
    use rayon::prelude::*;
    let keys = x.len();
    let w = s.w;
    let lv = s.levels() as usize;
    let ll = s.leaf_len();
    if root.len() != keys
        || cw.scw.len() != lv * keys
        || cw.vcw.len() != lv * keys * w
        || cw.leaf.len() != keys * ll
    {
        return Err(MpcError::Shape(format!(
            "DCF eval: {keys} points, {} roots, correction words for {} keys",
            root.len(),
            cw.leaf.len() / ll.max(1)
        )));
    }
    let mut out = vec![0u64; keys * w];
    out.par_chunks_mut(CHUNK * w)
        .enumerate()
        .for_each(|(ci, o)| {
            let j0 = ci * CHUNK;
            let j1 = (j0 + CHUNK).min(keys);
            eval_chunk(prg, s, b, &root[j0..j1], cw, keys, j0, &x[j0..j1], o)
        });
    Ok(out)
}

/// [`eval`] on the chunk of keys `j0 .. j0 + x.len()` of a batch of `total` keys.
#[allow(clippy::too_many_arguments)]
fn eval_chunk(
    prg: &Prg,
    s: &Shape,
    b: u8,
    root: &[u128],
    cw: &Cws,
    total: usize,
    j0: usize,
    x: &[u64],
    acc: &mut [u64],
) {
    let keys = x.len();
    let ll = s.leaf_len();
    let leafcw = &cw.leaf[j0 * ll..(j0 + keys) * ll];
    let (w, q) = (s.w, s.q());
    let lv = s.levels() as usize;
    let mask = ring_mask(s.m);
    let mut seed: Vec<u128> = root.iter().map(|v| v & !1).collect();
    let mut t = vec![b; keys];
    let (mut e, mut scratch) = (Vec::new(), Vec::new());
    let mut v = vec![0u64; w];
    let per = 1 + q;
    for l in 0..lv {
        let bitpos = s.n - 1 - l as u32;
        // Per key: the followed child (block `side`) and its payload (blocks 2 + side q ..).
        scratch.clear();
        for j in 0..keys {
            let sd = ((x[j] >> bitpos) & 1) as u128;
            let sj = seed[j];
            scratch.push(sj ^ sd);
            for i in 0..q as u128 {
                scratch.push(sj ^ (2 + sd * q as u128 + i));
            }
        }
        prg.mmo(&scratch, &mut e);
        let base = l * total + j0;
        let scw = &cw.scw[base..base + keys];
        let tcw = &cw.tcw[base..base + keys];
        let vcw = &cw.vcw[base * w..(base + keys) * w];
        for j in 0..keys {
            let sd = ((x[j] >> bitpos) & 1) as usize;
            let h = e[j * per];
            let mut sx = h & !1;
            let mut tx = (h & 1) as u8;
            let tj = t[j];
            payload_from(&e[j * per + 1..(j + 1) * per], w, mask, &mut v);
            if tj == 1 {
                sx ^= scw[j];
                tx ^= (tcw[j] >> sd) & 1;
            }
            for c in 0..w {
                let mut add = v[c];
                if tj == 1 {
                    add = add.wrapping_add(vcw[j * w + c]);
                }
                acc[j * w + c] = acc[j * w + c].wrapping_add(add);
            }
            seed[j] = sx;
            t[j] = tx;
        }
    }
    let lb = ll.div_ceil(2);
    let per = (2 + 2 * q) as u128;
    prg.blocks(&seed, lb, |_| per, &mut scratch, &mut e);
    let low_mask = (1u64 << s.et) - 1;
    let mut leaf = vec![0u64; ll];
    for j in 0..keys {
        payload_from(&e[j * lb..(j + 1) * lb], ll, mask, &mut leaf);
        let slot = (x[j] & low_mask) as usize;
        for c in 0..w {
            let mut add = leaf[slot * w + c];
            if t[j] == 1 {
                add = add.wrapping_add(leafcw[j * ll + slot * w + c]);
            }
            let a = acc[j * w + c].wrapping_add(add);
            acc[j * w + c] = if b == 1 { a.wrapping_neg() } else { a } & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Prg as Rng;

    fn roots(r: &mut Rng, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| (r.next_u64() as u128) << 64 | r.next_u64() as u128)
            .collect()
    }

    /// `eval(0) + eval(1) = beta * [x < alpha]` at, below, above and away from alpha, for
    /// several domains, payload widths and rings (early termination included), and the
    /// correction words survive serialisation at exactly `Shape::bytes`.
    #[test]
    fn vdcf_is_weighted_less_than() {
        let prg = Prg::new();
        let mut r = Rng::from_seed([7; 16]);
        for (n, w, m) in [
            (1u32, 1usize, 1u32),
            (2, 2, 64),
            (5, 2, 20),
            (12, 3, 37),
            (21, 2, 36),
            (9, 17, 30),
        ] {
            let s = Shape::new(n, w, m).unwrap();
            let keys = 40;
            let dm = (1u64 << n) - 1;
            let mm = ring_mask(m);
            let alphas: Vec<u64> = (0..keys)
                .map(|i| match i {
                    0 => 0,
                    1 => dm,
                    2 => 1,
                    _ => r.next_u64() & dm,
                })
                .collect();
            let beta: Vec<u64> = (0..keys * w).map(|_| r.next_u64() & mm).collect();
            let (r0, r1) = (roots(&mut r, keys), roots(&mut r, keys));
            let cw = gen(&prg, &s, &alphas, &beta, &r0, &r1).unwrap();
            let bytes = cw.to_bytes(&s, keys);
            assert_eq!(bytes.len(), s.bytes(keys));
            let cw = Cws::from_bytes(&bytes, &s, keys).unwrap();
            for kind in 0..5 {
                let xs: Vec<u64> = alphas
                    .iter()
                    .map(|&a| match kind {
                        0 => a,
                        1 => a.wrapping_sub(1) & dm,
                        2 => (a + 1) & dm,
                        3 => a ^ 1,
                        _ => r.next_u64() & dm,
                    })
                    .collect();
                let y0 = eval(&prg, &s, 0, &r0, &cw, &xs).unwrap();
                let y1 = eval(&prg, &s, 1, &r1, &cw, &xs).unwrap();
                for j in 0..keys {
                    for c in 0..w {
                        let want = if xs[j] < alphas[j] {
                            beta[j * w + c]
                        } else {
                            0
                        };
                        assert_eq!(
                            y0[j * w + c].wrapping_add(y1[j * w + c]) & mm,
                            want,
                            "n={n} w={w} m={m} et={} a={} x={}",
                            s.et,
                            alphas[j],
                            xs[j]
                        );
                    }
                }
            }
        }
    }

    /// The early-termination depth is the one with the smallest key: a two-element payload of
    /// 40 bits on 20 levels terminates two levels early.
    #[test]
    fn shape_minimises_key_bits() {
        let s = Shape::new(20, 2, 40).unwrap();
        assert_eq!(s.et, 2);
        assert_eq!(s.key_bits(), 18 * (129 + 80) + 4 * 80);
        for et in 0..=10 {
            let o = Shape { et, ..s };
            assert!(o.key_bits() >= s.key_bits());
        }
    }
}
