//! Arithmetic helpers over the ring Z_2^64 (wrapping `u64`) and Z_p for small primes, plus
//! (de)serialisation of share vectors.
//!
//! Every secret value is additively shared: `x = x0 + x1 (mod 2^64)`. Signed values use two's
//! complement, i.e. `x as i64` is the signed interpretation.

use crate::error::{MpcError, Result};

/// Bits in a ring element (l in the SecureNN paper).
pub const L_BITS: u32 = 64;

/// `a += b` elementwise (wrapping). Panics never; lengths must match (checked by callers).
#[inline]
pub fn add_assign(a: &mut [u64], b: &[u64]) {
    debug_assert_eq!(a.len(), b.len());
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(*y);
    }
}

/// `a -= b` elementwise (wrapping).
#[inline]
pub fn sub_assign(a: &mut [u64], b: &[u64]) {
    debug_assert_eq!(a.len(), b.len());
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_sub(*y);
    }
}

/// Elementwise `a + b`.
pub fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// Elementwise `a - b`.
pub fn sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// Elementwise `a * b` (wrapping).
pub fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_mul(*y)).collect()
}

/// Elementwise negation.
pub fn neg(a: &[u64]) -> Vec<u64> {
    a.iter().map(|x| x.wrapping_neg()).collect()
}

/// Most significant bit (the sign bit of the two's-complement interpretation).
#[inline]
pub fn msb(x: u64) -> u64 {
    x >> 63
}

/// Does `a + b` wrap around 2^64? (`wrap(a, b, L)` in SecureNN.)
#[inline]
pub fn wraps(a: u64, b: u64) -> bool {
    a.checked_add(b).is_none()
}

/// Check that `v` has length `n`, naming the thing in the error.
pub fn check_len(what: &str, v: &[u64], n: usize) -> Result<()> {
    if v.len() != n {
        return Err(MpcError::Shape(format!(
            "{what}: expected {n} elements, got {}",
            v.len()
        )));
    }
    Ok(())
}

/// Serialise ring elements (8 bytes each, little endian).
pub fn u64s_to_bytes(v: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 8);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Deserialise ring elements; `from` names the sender for the error message.
pub fn bytes_to_u64s(b: &[u8], from: usize) -> Result<Vec<u64>> {
    if !b.len().is_multiple_of(8) {
        return Err(MpcError::Malformed {
            from,
            reason: format!("{} bytes is not a whole number of 64-bit elements", b.len()),
        });
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunk of 8")))
        .collect())
}

/// Deserialise exactly `n` ring elements.
pub fn bytes_to_u64s_n(b: &[u8], n: usize, from: usize) -> Result<Vec<u64>> {
    if b.len() != n * 8 {
        return Err(MpcError::Malformed {
            from,
            reason: format!(
                "expected {} bytes ({n} ring elements), got {}",
                n * 8,
                b.len()
            ),
        });
    }
    bytes_to_u64s(b, from)
}

/// Arithmetic modulo a small prime `p` (< 256, so one element fits in a byte). SecureNN uses
/// p = 67 for PrivateCompare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Zp {
    /// The modulus.
    pub p: u8,
}

impl Zp {
    /// SecureNN's field Z_67.
    pub const P67: Zp = Zp { p: 67 };

    /// `(a + b) mod p`.
    #[inline]
    pub fn add(self, a: u8, b: u8) -> u8 {
        ((a as u16 + b as u16) % self.p as u16) as u8
    }
    /// `(a - b) mod p`.
    #[inline]
    pub fn sub(self, a: u8, b: u8) -> u8 {
        ((a as u16 + self.p as u16 - (b as u16 % self.p as u16)) % self.p as u16) as u8
    }
    /// `(a * b) mod p`.
    #[inline]
    pub fn mul(self, a: u8, b: u8) -> u8 {
        ((a as u16 * b as u16) % self.p as u16) as u8
    }
    /// `-a mod p`.
    #[inline]
    pub fn neg(self, a: u8) -> u8 {
        self.sub(0, a)
    }
    /// Reduce any small integer mod p.
    #[inline]
    pub fn reduce(self, a: u64) -> u8 {
        (a % self.p as u64) as u8
    }
    /// Check that every byte is a valid element (< p).
    pub fn check(self, v: &[u8], from: usize) -> Result<()> {
        if let Some(bad) = v.iter().find(|&&x| x >= self.p) {
            return Err(MpcError::Malformed {
                from,
                reason: format!("{bad} is not an element of Z_{}", self.p),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_bytes() {
        let v = vec![0, 1, u64::MAX, 1 << 63, 12345];
        assert_eq!(bytes_to_u64s(&u64s_to_bytes(&v), 0).unwrap(), v);
        assert!(bytes_to_u64s(&[1, 2, 3], 1).is_err());
        assert!(bytes_to_u64s_n(&u64s_to_bytes(&v), 4, 1).is_err());
    }

    #[test]
    fn zp_ops() {
        let z = Zp::P67;
        assert_eq!(z.add(66, 1), 0);
        assert_eq!(z.sub(0, 1), 66);
        assert_eq!(z.mul(66, 66), 1);
        assert_eq!(z.neg(0), 0);
        assert!(z.check(&[0, 66], 0).is_ok());
        assert!(z.check(&[67], 0).is_err());
    }

    #[test]
    fn wrap_and_msb() {
        assert!(wraps(u64::MAX, 1));
        assert!(!wraps(u64::MAX, 0));
        assert_eq!(msb((-1i64) as u64), 1);
        assert_eq!(msb(5), 0);
    }
}
