//! Cryptographic pseudo-random generator: AES-128 in counter mode (AES-NI where the CPU has it),
//! seeded from the operating system (`getrandom`), plus pairwise shared seeds between parties.
//!
//! Two parties holding the same seed generate the same stream, so correlated randomness (e.g. one
//! party's share of a Beaver triple) can be derived locally instead of being sent.

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use std::mem::MaybeUninit;

/// A 128-bit PRG seed.
pub type Seed = [u8; 16];

/// Fresh seed from the operating system.
pub fn os_seed() -> Result<Seed> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| MpcError::Rng(e.to_string()))?;
    Ok(s)
}

/// A seed derived from `key` for purpose `label`: `AES_key(label as 64-bit little-endian ||
/// "relushr" || 0x01)`. AES is a pseudo-random permutation, so seeds derived for distinct labels
/// are independent and pseudo-random to anyone without `key`; the block never equals a counter
/// block of [`Prg`] (whose high 64 bits are zero), so derived seeds are also independent of
/// `Prg::from_seed(key)`'s stream.
pub fn derive_seed(key: &Seed, label: u64) -> Seed {
    let aes = aes::Aes128::new(&(*key).into());
    let mut b = Array::<u8, aes::cipher::consts::U16>::default();
    b[..8].copy_from_slice(&label.to_le_bytes());
    b[8..].copy_from_slice(b"relushr\x01");
    aes.encrypt_block(&mut b);
    let mut s = [0u8; 16];
    s.copy_from_slice(&b);
    s
}

/// Counter blocks encrypted per call of the block cipher (4 KiB, stays in L1).
const CHUNK_BLOCKS: usize = 256;

/// AES-128-CTR keystream generator: block `j` of the stream is `AES_seed(j as 64-bit
/// little-endian || 0^64)` (the "64-bit little-endian counter" flavour with a zero nonce).
/// Counter blocks are written straight into the output and encrypted in place, many blocks per
/// call (the pipelined AES-NI/VAES path of the `aes` crate).
pub struct Prg {
    aes: aes::Aes128,
    /// Index of the next counter block.
    ctr: u64,
    /// The current partially used keystream block and how many of its bytes were used.
    buf: [u8; 16],
    used: usize,
}

impl Prg {
    /// A PRG keyed by `seed` (deterministic).
    pub fn from_seed(seed: Seed) -> Prg {
        Prg {
            aes: aes::Aes128::new(&seed.into()),
            ctr: 0,
            buf: [0; 16],
            used: 16,
        }
    }

    /// Write the next `out.len()` keystream bytes into `out`.
    fn keystream(&mut self, out: &mut [u8]) {
        // SAFETY: initialised bytes viewed as possibly-uninitialised ones; `keystream_uninit`
        // only writes initialised values into them.
        let out = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut MaybeUninit<u8>, out.len())
        };
        self.keystream_uninit(out);
    }

    /// Write the next `out.len()` keystream bytes into `out` (which need not be initialised;
    /// every byte is written): counter blocks are written in place, then encrypted in place.
    fn keystream_uninit(&mut self, out: &mut [MaybeUninit<u8>]) {
        let mut o = 0;
        if self.used < 16 {
            let t = (16 - self.used).min(out.len());
            for (d, s) in out[..t].iter_mut().zip(&self.buf[self.used..]) {
                d.write(*s);
            }
            self.used += t;
            o = t;
        }
        let rest = &mut out[o..];
        let full = rest.len() / 16 * 16;
        let (blocks, tail) = rest.split_at_mut(full);
        for chunk in blocks.chunks_mut(16 * CHUNK_BLOCKS) {
            for b in chunk.chunks_exact_mut(16) {
                let mut block = [0u8; 16];
                block[..8].copy_from_slice(&self.ctr.to_le_bytes());
                for (d, s) in b.iter_mut().zip(&block) {
                    d.write(*s);
                }
                self.ctr = self.ctr.wrapping_add(1);
            }
            // SAFETY: every byte of `chunk` was initialised just above.
            let init = unsafe { &mut *(chunk as *mut [MaybeUninit<u8>] as *mut [u8]) };
            let (blocks, _) = Array::<u8, aes::cipher::consts::U16>::slice_as_chunks_mut(init);
            self.aes.encrypt_blocks(blocks);
        }
        if !tail.is_empty() {
            let mut b = Array::<u8, aes::cipher::consts::U16>::default();
            b[..8].copy_from_slice(&self.ctr.to_le_bytes());
            self.ctr = self.ctr.wrapping_add(1);
            self.aes.encrypt_block(&mut b);
            self.buf.copy_from_slice(&b);
            for (d, s) in tail.iter_mut().zip(&self.buf) {
                d.write(*s);
            }
            self.used = tail.len();
        }
    }

    /// A PRG keyed from the operating system's randomness.
    pub fn from_os() -> Result<Prg> {
        Ok(Prg::from_seed(os_seed()?))
    }

    /// Fill a byte buffer with pseudo-random bytes.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        self.keystream(buf);
    }

    /// Fill a `u64` slice with uniform ring elements (no per-element work beyond AES).
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        // SAFETY: u8 has alignment 1 and every bit pattern is a valid u64; the byte view covers
        // exactly the memory of `out`.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(out))
        };
        self.keystream(bytes);
    }

    /// `n` uniform ring elements.
    pub fn gen_u64s(&mut self, n: usize) -> Vec<u64> {
        let mut v: Vec<u64> = Vec::with_capacity(n);
        let spare = v.spare_capacity_mut();
        // SAFETY: the byte view covers exactly the `n` spare elements (alignment 1).
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(spare.as_mut_ptr() as *mut MaybeUninit<u8>, 8 * n)
        };
        self.keystream_uninit(bytes); // no zeroing pass: every byte is written
                                      // SAFETY: all 8n bytes were written, and any bytes are a valid u64.
        unsafe { v.set_len(n) };
        v
    }

    /// One uniform ring element.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    /// A fresh seed drawn from this PRG.
    pub fn gen_seed(&mut self) -> Seed {
        let mut s = [0u8; 16];
        self.fill_bytes(&mut s);
        s
    }

    /// `n` uniform elements of Z_p (`p` < 256) by rejection sampling on bytes.
    pub fn gen_zp(&mut self, p: u8, n: usize) -> Vec<u8> {
        if p <= 1 {
            return vec![0; n];
        }
        // accept bytes below the largest multiple of p, reduce by table lookup
        let limit = (256 / p as u16) * p as u16;
        let mut table = [0u8; 256];
        for (b, t) in table.iter_mut().enumerate() {
            *t = (b as u16 % p as u16) as u8;
        }
        // branch-free: always write, advance only on acceptance
        let chunk = n + n / 4 + 16;
        let mut out = vec![0u8; n + chunk];
        let mut filled = 0;
        let mut buf = vec![0u8; chunk];
        while filled < n {
            let want = (n - filled) + (n - filled) / 4 + 16;
            let buf = &mut buf[..want.min(chunk)];
            self.fill_bytes(buf);
            for &b in buf.iter() {
                out[filled] = table[b as usize];
                filled += usize::from((b as u16) < limit);
            }
        }
        out.truncate(n);
        out
    }

    /// `n` uniform bits (0/1 as bytes).
    pub fn gen_bits(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.fill_bytes(&mut buf);
        for b in &mut buf {
            *b &= 1;
        }
        buf
    }

    /// `n` independent Bernoulli(`prob`) bits (0/1 as bytes); `prob` is clamped to [0, 1].
    pub fn bernoulli(&mut self, n: usize, prob: f64) -> Vec<u8> {
        let prob = prob.clamp(0.0, 1.0);
        let thr = if prob >= 1.0 {
            u64::MAX
        } else {
            (prob * 18446744073709551616.0) as u64
        };
        let r = self.gen_u64s(n);
        r.into_iter()
            .map(|x| u8::from(x < thr || prob >= 1.0))
            .collect()
    }
}

/// A party's PRGs: a private one and one shared with each other party (`with[j]`, None for self).
pub struct PartyPrgs {
    /// Private randomness of this party.
    pub own: Prg,
    /// PRG keyed by the seed this party shares with party `j`.
    pub with: [Option<Prg>; 3],
}

impl PartyPrgs {
    /// The PRG shared with party `j`.
    pub fn pair(&mut self, j: usize) -> Result<&mut Prg> {
        self.with
            .get_mut(j)
            .and_then(|p| p.as_mut())
            .ok_or(MpcError::BadParty(j))
    }

    /// Agree on pairwise seeds: for each pair i < j, party i draws a seed from the OS and sends it
    /// to j (one round, 32 + 16 bytes in all; counted under the caller's current label). In a
    /// deployment these travel over the authenticated, encrypted links.
    pub fn setup(comm: &mut Comm) -> Result<PartyPrgs> {
        let me = comm.party();
        let mut own = Prg::from_os()?;
        let mut with: [Option<Prg>; 3] = [None, None, None];
        let mut out = Vec::new();
        for (j, slot) in with.iter_mut().enumerate().skip(me + 1) {
            let s = own.gen_seed();
            *slot = Some(Prg::from_seed(s));
            out.push((j, s.to_vec()));
        }
        let from: Vec<usize> = (0..me).collect();
        let got = comm.round(out, &from)?;
        for (i, msg) in from.iter().zip(got) {
            let s: Seed = msg.as_slice().try_into().map_err(|_| MpcError::Malformed {
                from: *i,
                reason: format!("seed of {} bytes, expected 16", msg.len()),
            })?;
            with[*i] = Some(Prg::from_seed(s));
        }
        Ok(PartyPrgs { own, with })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_are_deterministic_and_separated() {
        let k = [9u8; 16];
        assert_eq!(derive_seed(&k, 3), derive_seed(&k, 3));
        assert_ne!(derive_seed(&k, 3), derive_seed(&k, 4));
        assert_ne!(derive_seed(&k, 3), derive_seed(&[8u8; 16], 3));
        // never a block of the key's own stream
        let mut p = Prg::from_seed(k);
        let first: Vec<Seed> = (0..8).map(|_| p.gen_seed()).collect();
        assert!((0..8).all(|l| !first.contains(&derive_seed(&k, l))));
    }

    #[test]
    fn deterministic_and_distinct() {
        let mut a = Prg::from_seed([7; 16]);
        let mut b = Prg::from_seed([7; 16]);
        assert_eq!(a.gen_u64s(100), b.gen_u64s(100));
        let mut c = Prg::from_os().unwrap();
        let mut d = Prg::from_os().unwrap();
        assert_ne!(c.gen_u64s(4), d.gen_u64s(4));
    }

    #[test]
    fn same_stream_as_the_ctr_mode_of_the_cipher_crates() {
        use ctr::cipher::{KeyIvInit, StreamCipher};
        let seed = [9u8; 16];
        let mut reference = ctr::Ctr64LE::<aes::Aes128>::new(&seed.into(), &[0u8; 16].into());
        let mut p = Prg::from_seed(seed);
        // Odd request sizes cross block boundaries and chunk boundaries.
        for len in [0usize, 1, 5, 16, 17, 31, 4096, 4099, 10_000, 3] {
            let mut want = vec![0u8; len];
            reference.apply_keystream(&mut want);
            let mut got = vec![0u8; len];
            p.fill_bytes(&mut got);
            assert_eq!(got, want, "len {len}");
        }
        let mut want = vec![0u8; 8 * 1001];
        reference.apply_keystream(&mut want);
        let got = p.gen_u64s(1001);
        let got: Vec<u8> = got.iter().flat_map(|x| x.to_ne_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn zp_uniformish_and_bernoulli() {
        let mut a = Prg::from_seed([1; 16]);
        let v = a.gen_zp(67, 67_000);
        assert!(v.iter().all(|&x| x < 67));
        let mut hist = [0u32; 67];
        for x in v {
            hist[x as usize] += 1;
        }
        assert!(hist.iter().all(|&h| (800..1200).contains(&h)));
        let b = a.bernoulli(100_000, 0.1);
        let ones: u32 = b.iter().map(|&x| x as u32).sum();
        assert!((9_000..11_000).contains(&ones), "{ones}");
        assert!(a.bernoulli(100, 0.0).iter().all(|&x| x == 0));
        assert!(a.bernoulli(100, 1.0).iter().all(|&x| x == 1));
    }
}
