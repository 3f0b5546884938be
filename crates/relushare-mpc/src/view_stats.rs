//! The statistic of the view tests (the `fast` and `mimo` suites' unit tests and the crate's
//! integration tests, which include this file): a two-sample chi-square test of two byte
//! histograms, as a z-score. Test-only code, shared so that every view test judges alike.

/// z-score of the two-sample chi-square statistic of two byte histograms. With fewer than 5
/// samples per bin on either side (a short message or opened vector: its 256-bin statistic has
/// heavy tails and fails by chance), the byte's high and low nibbles are compared instead, 16
/// bins each, and the larger z counts.
pub fn chi_z(a: &[u64; 256], b: &[u64; 256]) -> f64 {
    let n = a.iter().sum::<u64>().min(b.iter().sum::<u64>());
    if n >= 5 * 256 {
        return chi_z_bins(a, b);
    }
    // The 16 bins of the high (`shift` 4) or the low (`shift` 0) nibble.
    let fold = |h: &[u64; 256], shift: usize| {
        let mut f = [0u64; 16];
        for (i, &c) in h.iter().enumerate() {
            f[(i >> shift) & 15] += c;
        }
        f
    };
    chi_z_bins(&fold(a, 4), &fold(b, 4)).max(chi_z_bins(&fold(a, 0), &fold(b, 0)))
}

/// The two-sample chi-square z-score over any number of bins.
pub fn chi_z_bins(a: &[u64], b: &[u64]) -> f64 {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let (ka, kb) = ((nb / na).sqrt(), (na / nb).sqrt());
    let mut chi = 0.0;
    let mut bins = 0;
    for (&x, &y) in a.iter().zip(b) {
        let s = (x + y) as f64;
        if s > 0.0 {
            let d = ka * x as f64 - kb * y as f64;
            chi += d * d / s;
            bins += 1;
        }
    }
    let df = (bins - 1).max(1) as f64;
    wilson_hilferty(chi, df)
}

/// The normal z-score of a chi-square statistic `chi` with `df` degrees of freedom, by the
/// Wilson-Hilferty cube-root transform: `(chi/df)^(1/3)` is close to normal with mean
/// `1 - 2/(9 df)` and variance `2/(9 df)`. The plain `(chi - df) / sqrt(2 df)` is far too
/// heavy-tailed at few bins (a top byte that takes 4 values on a 26-bit ring: z >= 6 by chance
/// about once in 2,000 comparisons, so a suite of view tests failed now and then); with the
/// transform one limit means the same tail probability at every number of bins.
pub fn wilson_hilferty(chi: f64, df: f64) -> f64 {
    let v = 2.0 / (9.0 * df);
    ((chi / df).cbrt() - (1.0 - v)) / v.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At the chi-square distribution's upper 0.1% point (from the tables), the transformed
    /// z-score is the normal's (3.09) whatever the degrees of freedom; the plain z-score of few
    /// bins is not (5.4 at 3 degrees).
    #[test]
    fn z_scores_mean_one_tail_probability_at_any_number_of_bins() {
        for (df, q) in [(3.0, 16.266), (15.0, 37.697), (100.0, 149.449)] {
            let z = wilson_hilferty(q, df);
            assert!((z - 3.090).abs() < 0.05, "df {df}: z = {z}");
        }
        // Two equal histograms of 4 bins; then one 50-fold chi-square excess is far off.
        let a = [250u64; 4];
        assert!(chi_z_bins(&a, &a) < -2.0);
        assert!(wilson_hilferty(150.0, 3.0) > 8.0);
    }
}
