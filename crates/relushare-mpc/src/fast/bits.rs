//! Bit-sliced boolean vectors: `n` bits packed into `ceil(n/64)` little-endian `u64` words, plus
//! the byte encodings that go on the wire (exactly `ceil(n/8)` bytes per plane) and dense
//! packing of `k`-bit ring elements (exactly `ceil(n*k/8)` bytes).

use crate::error::{MpcError, Result};

/// A packed bit vector ("plane"): bit `i` is `(w[i / 64] >> (i % 64)) & 1`.
pub type Plane = Vec<u64>;

/// Words needed for `n` bits.
#[inline]
pub fn words(n: usize) -> usize {
    n.div_ceil(64)
}

/// Bytes on the wire for one plane of `n` bits.
#[inline]
pub fn plane_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// Bit `i` of a plane (0 or 1).
#[inline]
pub fn get(p: &[u64], i: usize) -> u64 {
    (p[i >> 6] >> (i & 63)) & 1
}

/// A plane whose bit `i` is `f(i)`.
pub fn from_fn(n: usize, mut f: impl FnMut(usize) -> bool) -> Plane {
    let mut p = vec![0u64; words(n)];
    for i in 0..n {
        if f(i) {
            p[i >> 6] |= 1 << (i & 63);
        }
    }
    p
}

/// Bit `j` of every element of `v` as a plane.
pub fn bit_plane(v: &[u64], j: u32) -> Plane {
    let mut p = vec![0u64; words(v.len())];
    for (wi, chunk) in v.chunks(64).enumerate() {
        let mut w = 0u64;
        for (b, x) in chunk.iter().enumerate() {
            w |= ((x >> j) & 1) << b;
        }
        p[wi] = w;
    }
    p
}

/// Bits `0..k` of every element of `v` as `k` planes (`bit_planes(v, k)[j] == bit_plane(v, j)`),
/// by 64 x 64 bit-matrix transposes: about 20 operations per element for all planes instead
/// of a pass over `v` per plane.
pub fn bit_planes(v: &[u64], k: u32) -> Vec<Plane> {
    let k = k.min(64) as usize;
    let wn = words(v.len());
    let mut out: Vec<Plane> = (0..k).map(|_| vec![0u64; wn]).collect();
    let mut blk = [0u64; 64];
    for (wi, chunk) in v.chunks(64).enumerate() {
        blk[..chunk.len()].copy_from_slice(chunk);
        blk[chunk.len()..].fill(0);
        transpose64(&mut blk);
        for (j, plane) in out.iter_mut().enumerate() {
            plane[wi] = blk[j];
        }
    }
    out
}

/// In-place transpose of a 64 x 64 bit matrix (row `i` = word `i`, column `j` = bit `j`):
/// afterwards bit `i` of word `j` is the former bit `j` of word `i`.
#[inline]
pub fn transpose64(a: &mut [u64; 64]) {
    let mut j = 32usize;
    let mut m: u64 = 0x0000_0000_FFFF_FFFF;
    while j != 0 {
        let mut r = 0usize;
        while r < 64 {
            for i in r..r + j {
                let t = ((a[i] >> j) ^ a[i + j]) & m;
                a[i] ^= t << j;
                a[i + j] ^= t;
            }
            r += 2 * j;
        }
        j >>= 1;
        m ^= m << j;
    }
}

/// Clear the unused high bits of the last word.
pub fn mask_tail(p: &mut [u64], n: usize) {
    if !n.is_multiple_of(64) {
        if let Some(last) = p.get_mut(n / 64) {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
}

/// `a ^= b`.
#[inline]
pub fn xor_assign(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= *y;
    }
}

/// `a ^ b`.
#[inline]
pub fn xor(a: &[u64], b: &[u64]) -> Plane {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// `a & b`.
#[inline]
pub fn and(a: &[u64], b: &[u64]) -> Plane {
    a.iter().zip(b).map(|(x, y)| x & y).collect()
}

/// Serialise planes of `n` bits each: `ceil(n/8)` bytes per plane, tails cleared.
pub fn pack_planes(planes: &[&[u64]], n: usize) -> Vec<u8> {
    let pb = plane_bytes(n);
    let mut out = Vec::with_capacity(pb * planes.len());
    for p in planes {
        let start = out.len();
        out.extend(p.iter().take(words(n)).flat_map(|w| w.to_le_bytes()));
        out.truncate(start + pb);
        if !n.is_multiple_of(8) {
            if let Some(last) = out.last_mut() {
                *last &= (1u8 << (n % 8)) - 1;
            }
        }
    }
    out
}

/// Inverse of [`pack_planes`]; checks the length (`from` names the sender).
pub fn unpack_planes(b: &[u8], count: usize, n: usize, from: usize) -> Result<Vec<Plane>> {
    let pb = plane_bytes(n);
    if b.len() != pb * count {
        return Err(MpcError::Malformed {
            from,
            reason: format!(
                "expected {} bytes ({count} bit vectors of {n} bits), got {}",
                pb * count,
                b.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(count);
    for chunk in b.chunks(pb.max(1)).take(count) {
        let mut p = vec![0u64; words(n)];
        let whole = chunk.len() / 8;
        for (w, c) in p.iter_mut().zip(chunk.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        for (i, byte) in chunk.iter().enumerate().skip(whole * 8) {
            p[i / 8] |= (*byte as u64) << (8 * (i % 8));
        }
        out.push(p);
    }
    while out.len() < count {
        out.push(vec![0u64; words(n)]);
    }
    Ok(out)
}

/// Dense packing of the low `k` bits of every element (`ceil(n*k/8)` bytes).
pub fn pack_kbit(v: &[u64], k: u32) -> Vec<u8> {
    let total = (v.len() * k as usize).div_ceil(8);
    let mut out = vec![0u8; total];
    let mask = if k == 64 { u64::MAX } else { (1u64 << k) - 1 };
    let mut bitpos = 0usize;
    for x in v {
        let mut val = x & mask;
        let mut left = k as usize;
        while left > 0 {
            let byte = bitpos / 8;
            let off = bitpos % 8;
            let take = (8 - off).min(left);
            out[byte] |= ((val & ((1u64 << take) - 1)) as u8) << off;
            val >>= take;
            left -= take;
            bitpos += take;
        }
    }
    out
}

/// Inverse of [`pack_kbit`] for `n` elements; checks the length.
pub fn unpack_kbit(b: &[u8], n: usize, k: u32, from: usize) -> Result<Vec<u64>> {
    let total = (n * k as usize).div_ceil(8);
    if b.len() != total {
        return Err(MpcError::Malformed {
            from,
            reason: format!(
                "expected {total} bytes ({n} values of {k} bits), got {}",
                b.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(n);
    let mut bitpos = 0usize;
    for _ in 0..n {
        let mut val = 0u64;
        let mut got = 0usize;
        while got < k as usize {
            let byte = bitpos / 8;
            let off = bitpos % 8;
            let take = (8 - off).min(k as usize - got);
            let bits = ((b[byte] >> off) as u64) & ((1u64 << take) - 1);
            val |= bits << got;
            got += take;
            bitpos += take;
        }
        out.push(val);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_roundtrip() {
        for n in [0usize, 1, 7, 8, 63, 64, 65, 200] {
            let a = from_fn(n, |i| i % 3 == 0);
            let b = from_fn(n, |i| i % 5 == 1);
            let bytes = pack_planes(&[&a, &b], n);
            assert_eq!(bytes.len(), 2 * plane_bytes(n));
            let back = unpack_planes(&bytes, 2, n, 0).unwrap();
            assert_eq!(back, vec![a, b]);
        }
        assert!(unpack_planes(&[0u8; 3], 1, 8, 1).is_err());
    }

    #[test]
    fn kbit_roundtrip() {
        let v: Vec<u64> = (0..100u64)
            .map(|i| i.wrapping_mul(0x9e3779b97f4a7c15))
            .collect();
        for k in [1u32, 5, 8, 13, 31, 33, 64] {
            let b = pack_kbit(&v, k);
            assert_eq!(b.len(), (100 * k as usize).div_ceil(8));
            let back = unpack_kbit(&b, 100, k, 0).unwrap();
            let mask = if k == 64 { u64::MAX } else { (1u64 << k) - 1 };
            assert_eq!(back, v.iter().map(|x| x & mask).collect::<Vec<_>>());
        }
    }

    #[test]
    fn bit_planes() {
        let v = vec![5u64, 2, 7, 0];
        assert_eq!(bit_plane(&v, 0), vec![0b0101]);
        assert_eq!(bit_plane(&v, 1), vec![0b0110]);
        let w: Vec<u64> = (0..200u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 60))
            .collect();
        for len in [0usize, 1, 63, 64, 65, 200] {
            for k in [1u32, 33, 64] {
                let all = super::bit_planes(&w[..len], k);
                assert_eq!(all.len(), k as usize);
                for (j, p) in all.iter().enumerate() {
                    assert_eq!(*p, bit_plane(&w[..len], j as u32), "len {len} bit {j}");
                }
            }
        }
        let mut p = vec![u64::MAX];
        mask_tail(&mut p, 3);
        assert_eq!(p, vec![7]);
    }
}
