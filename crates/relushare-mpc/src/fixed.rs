//! Fixed-point encoding of reals in Z_2^64 and the truncation used after every multiplication.
//!
//! A real `v` is encoded as `round(v * 2^f)` in two's complement (`f` fractional bits, default
//! [`DEFAULT_FRAC_BITS`] = 13). A product of two encoded values carries `2f` fractional bits and
//! is brought back to `f` bits by truncation (a right shift by `f`).
//!
//! # Truncation
//! *Plaintext* ([`trunc_plain`]): arithmetic shift, i.e. `floor(x / 2^f)` of the signed value.
//!
//! *Shares* ([`trunc_share`]): SecureNN / SecureML local truncation, no communication. P0
//! computes `floor(x0 / 2^f)` and P1 computes `2^64 - floor((2^64 - x1) / 2^f)` (unsigned
//! divisions). If the signed secret satisfies `|x| < 2^e`, then with probability at least
//! `1 - 2^(e + 1 - 64)` the reconstructed result is `floor(x / 2^f)` or `floor(x / 2^f) + 1`,
//! i.e. it differs from [`trunc_plain`] by at most one unit in the last place (2^-f). With the
//! remaining probability (the shares wrapped around 2^64) the result is garbage. Nothing here
//! checks `e`: the fast suites prove a bound on every truncated value from the model and refuse
//! a model whose per-inference failure bound is too large ([`crate::fast::bounds`]).
//!
//! # Average pooling
//! `avgpool_k(x) = trunc( (sum of the k*k window) * c_k , f)` with the public constant
//! `c_k = round(2^f / k^2)` ([`pool_factor`]). For k = 2 this is exact (c_2 = 2^(f-2)); for k = 3 the
//! relative error of the constant is below 2^-f * 9 / 2.

use crate::error::{MpcError, Result};

/// Default number of fractional bits.
pub const DEFAULT_FRAC_BITS: u32 = 13;

/// A fixed-point format: `frac_bits` fractional bits in a 64-bit two's-complement ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedPoint {
    /// Number of fractional bits `f`.
    pub frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: DEFAULT_FRAC_BITS,
        }
    }
}

impl FixedPoint {
    /// A format with `frac_bits` fractional bits; 1..=24 are accepted (products need `2f` bits
    /// plus headroom in 64).
    pub fn new(frac_bits: u32) -> Result<Self> {
        if !(1..=24).contains(&frac_bits) {
            return Err(MpcError::Param(format!(
                "fractional bits must be in 1..=24, got {frac_bits}"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// Encode a real with `f` fractional bits (round to nearest).
    #[inline]
    pub fn encode(&self, v: f32) -> u64 {
        encode_scaled(v as f64, self.frac_bits)
    }

    /// Encode a real with `2f` fractional bits (biases added to a product before truncation).
    #[inline]
    pub fn encode_double(&self, v: f32) -> u64 {
        encode_scaled(v as f64, 2 * self.frac_bits)
    }

    /// Encode a slice with `f` fractional bits.
    pub fn encode_vec(&self, v: &[f32]) -> Vec<u64> {
        v.iter().map(|&x| self.encode(x)).collect()
    }

    /// Decode a value with `f` fractional bits.
    #[inline]
    pub fn decode(&self, x: u64) -> f64 {
        (x as i64) as f64 / (1u64 << self.frac_bits) as f64
    }

    /// Decode a slice with `f` fractional bits.
    pub fn decode_vec(&self, x: &[u64]) -> Vec<f32> {
        x.iter().map(|&v| self.decode(v) as f32).collect()
    }

    /// One unit in the last place, as a real.
    pub fn ulp(&self) -> f64 {
        1.0 / (1u64 << self.frac_bits) as f64
    }
}

/// Encode `v * 2^bits`, rounded to nearest and saturated to the i64 range.
#[inline]
pub fn encode_scaled(v: f64, bits: u32) -> u64 {
    let s = (v * (1u64 << bits) as f64).round();
    let s = s.clamp(i64::MIN as f64, i64::MAX as f64);
    (s as i64) as u64
}

/// Plaintext truncation: arithmetic right shift of the signed value (`floor(x / 2^bits)`).
#[inline]
pub fn trunc_plain(x: u64, bits: u32) -> u64 {
    ((x as i64) >> bits) as u64
}

/// Local truncation of one party's share (see the module docs for the error bound). Party 2
/// holds no share and must not call this.
#[inline]
pub fn trunc_share(x: u64, bits: u32, party: usize) -> u64 {
    if party == 0 {
        x >> bits
    } else {
        (x.wrapping_neg() >> bits).wrapping_neg()
    }
}

/// Truncate a whole share vector in place.
pub fn trunc_share_vec(x: &mut [u64], bits: u32, party: usize) {
    for v in x {
        *v = trunc_share(*v, bits, party);
    }
}

/// The public average-pooling constant `round(2^f / k^2)`.
pub fn pool_factor(kernel: usize, frac_bits: u32) -> u64 {
    let area = (kernel * kernel) as f64;
    ((1u64 << frac_bits) as f64 / area).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let fp = FixedPoint::default();
        for v in [0.0f32, 1.0, -1.0, 0.5, -3.25, 100.125] {
            assert_eq!(fp.decode(fp.encode(v)), v as f64);
        }
        assert!(FixedPoint::new(0).is_err());
        assert!(FixedPoint::new(40).is_err());
    }

    #[test]
    fn share_truncation_within_one_ulp() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..10_000i64 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = ((i - 5000) * 977) as u64;
            let x0 = s;
            let x1 = x.wrapping_sub(x0);
            let t = trunc_share(x0, 13, 0).wrapping_add(trunc_share(x1, 13, 1));
            let d = (t as i64) - (trunc_plain(x, 13) as i64);
            assert!(d == 0 || d == 1, "x={} diff {d}", x as i64);
        }
    }

    #[test]
    fn pool_constant() {
        assert_eq!(pool_factor(2, 13), 2048);
        assert_eq!(pool_factor(3, 13), 910);
    }
}
