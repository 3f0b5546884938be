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
    (chi - df) / (2.0 * df).sqrt()
}
