//! Data-driven grouping of activations (the paper's "adaptive" ReLU sharing).
//!
//! Every activation `p` of a channel gets a binary response vector `y(p)` over the training
//! images (bit `j` set when the pre-activation of image `j` is `>= 0`, i.e. when ReLU keeps
//! it). Activations are clustered by Hamming distance with the paper's agglomerative
//! procedure: start with singletons and repeatedly join the two closest activations that lie
//! in different sets until `k` sets remain. That is single linkage, which a minimum spanning
//! tree gives exactly: build the MST (dense Prim, `O(n^2)` popcount distances) and cut its
//! `k - 1` heaviest edges. Ties are broken by the total order `(distance, min index, max
//! index)`, under which the MST is unique and the result equals the naive procedure exactly
//! (see the tests).
//!
//! With a window `M`, every non-overlapping `M x M` window of the plane (raster order, edge
//! windows may be smaller) is clustered separately into `min(k, window size)` clusters; the
//! channel-local ids are contiguous: a window's ids start after those of the windows before it
//! (`window_index * k + cluster` when every window holds at least `k` activations), as
//! `relushare_model::group` expects. Without a window the whole
//! plane is clustered into exactly `k` clusters. Cluster ids inside a window (or plane) are
//! numbered by their first member in raster order.
//!
//! Cost: for a plane of `n` activations and `N` images one channel costs `n (n - 1) / 2`
//! distances of `ceil(N / 64)` popcounts each; channels run in parallel (rayon). Measured on
//! a shared 2-core machine: one CIFAR-10 layer (64 channels of 32x32, k = 256) over 4,000
//! images takes 3.1 s (8x8 windows: 0.2 s); the whole 50,000-image training set is ~12x that,
//! about 40 s per layer (64 x 523,776 distances x 782 words = 2.6e10 popcounts). Recording the
//! responses is the larger part: the f32 reference network up to `act2` ran at 35-75 ms per
//! image per core here, i.e. roughly 15-30 minutes for the full training set on 2 cores
//! (`relushare cluster --limit N` trades images for time). The response bits take
//! `C*H*W*N/8` bytes per layer (410 MB for a CIFAR-10 layer over 50,000 images).

use crate::AnalysisError;
use rayon::prelude::*;

/// Bit-packed binary responses: `items` rows of `words` u64 each (bit `j % 64` of word
/// `j / 64` is sample `j`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitMatrix {
    items: usize,
    samples: usize,
    words: usize,
    bits: Vec<u64>,
}

impl BitMatrix {
    /// An all-zero matrix for `items` response vectors of `samples` bits each.
    pub fn new(items: usize, samples: usize) -> Self {
        let words = samples.div_ceil(64);
        Self {
            items,
            samples,
            words,
            bits: vec![0; items * words],
        }
    }

    /// Number of response vectors (activations).
    pub fn items(&self) -> usize {
        self.items
    }

    /// Number of samples (images) per vector.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Words per vector.
    pub fn words(&self) -> usize {
        self.words
    }

    /// Sets bit `sample` of vector `item` to `value`.
    pub fn set(&mut self, item: usize, sample: usize, value: bool) {
        assert!(
            item < self.items && sample < self.samples,
            "bit index out of range"
        );
        let w = &mut self.bits[item * self.words + sample / 64];
        let m = 1u64 << (sample % 64);
        if value {
            *w |= m;
        } else {
            *w &= !m;
        }
    }

    /// Bit `sample` of vector `item`.
    pub fn get(&self, item: usize, sample: usize) -> bool {
        assert!(
            item < self.items && sample < self.samples,
            "bit index out of range"
        );
        self.bits[item * self.words + sample / 64] >> (sample % 64) & 1 == 1
    }

    /// Overwrites word `word` (samples `64 * word ..`) of vector `item`.
    pub fn set_word(&mut self, item: usize, word: usize, value: u64) {
        assert!(
            item < self.items && word < self.words,
            "word index out of range"
        );
        self.bits[item * self.words + word] = value;
    }

    /// The packed words of vector `item`.
    pub fn row(&self, item: usize) -> &[u64] {
        &self.bits[item * self.words..(item + 1) * self.words]
    }

    /// Hamming distance between vectors `a` and `b` (popcount of the XOR).
    pub fn hamming(&self, a: usize, b: usize) -> u32 {
        hamming(self.row(a), self.row(b))
    }
}

/// Popcount of `a XOR b`.
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// An MST edge with its total-order key `(dist, lo, hi)` (`lo < hi`, local indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    dist: u32,
    lo: u32,
    hi: u32,
}

fn edge(dist: u32, a: usize, b: usize) -> Edge {
    Edge {
        dist,
        lo: a.min(b) as u32,
        hi: a.max(b) as u32,
    }
}

struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
        }
    }
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }
    fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        // keep the smaller root so labels are deterministic
        if ra < rb {
            self.parent[rb as usize] = ra;
        } else {
            self.parent[ra as usize] = rb;
        }
        true
    }
}

/// Labels `0..` numbered by first member (index order) from a union-find forest.
fn labels_from(uf: &mut UnionFind, n: usize) -> Vec<u32> {
    let mut root_label = vec![u32::MAX; n];
    let mut next = 0u32;
    (0..n)
        .map(|i| {
            let r = uf.find(i as u32) as usize;
            if root_label[r] == u32::MAX {
                root_label[r] = next;
                next += 1;
            }
            root_label[r]
        })
        .collect()
}

/// Single-linkage clustering of the vectors `rows` (given by the item indices in `members`
/// of `m`) into exactly `k` clusters (`1 <= k <= members.len()`), via Prim's dense MST.
/// Returns one label per member, numbered by first member.
pub fn single_linkage(m: &BitMatrix, members: &[usize], k: usize) -> Vec<u32> {
    let n = members.len();
    assert!(k >= 1 && k <= n, "k must be in 1..=n");
    if n == 1 {
        return vec![0];
    }
    // Prim: best[v] = lightest edge from the tree to v (under the total order).
    let inf = Edge {
        dist: u32::MAX,
        lo: u32::MAX,
        hi: u32::MAX,
    };
    let mut best = vec![inf; n];
    let mut in_tree = vec![false; n];
    let mut mst: Vec<Edge> = Vec::with_capacity(n - 1);
    let mut cur = 0usize;
    in_tree[0] = true;
    for _ in 1..n {
        let row = m.row(members[cur]);
        let mut next = usize::MAX;
        let mut next_edge = inf;
        for v in 0..n {
            if in_tree[v] {
                continue;
            }
            let e = edge(hamming(row, m.row(members[v])), cur, v);
            if e < best[v] {
                best[v] = e;
            }
            if best[v] < next_edge {
                next_edge = best[v];
                next = v;
            }
        }
        in_tree[next] = true;
        mst.push(next_edge);
        cur = next;
    }
    mst.sort_unstable();
    let mut uf = UnionFind::new(n);
    for e in &mst[..n - k] {
        uf.union(e.lo, e.hi);
    }
    labels_from(&mut uf, n)
}

/// The paper's procedure verbatim, `O(n^3)`: repeatedly join the closest pair of activations in
/// different sets (ties by index order) until `k` sets remain. For tests and small inputs.
pub fn naive_agglomerative(m: &BitMatrix, members: &[usize], k: usize) -> Vec<u32> {
    let n = members.len();
    assert!(k >= 1 && k <= n, "k must be in 1..=n");
    let mut uf = UnionFind::new(n);
    let mut sets = n;
    while sets > k {
        let mut best: Option<Edge> = None;
        for a in 0..n {
            for b in a + 1..n {
                if uf.find(a as u32) == uf.find(b as u32) {
                    continue;
                }
                let e = edge(m.hamming(members[a], members[b]), a, b);
                if best.is_none_or(|x| e < x) {
                    best = Some(e);
                }
            }
        }
        let e = best.expect("more than k sets implies a cross pair");
        uf.union(e.lo, e.hi);
        sets -= 1;
    }
    labels_from(&mut uf, n)
}

/// Options for clustering one activation layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterParams {
    /// Clusters per channel (no window) or per window.
    pub k: usize,
    /// Non-overlapping `M x M` windows, or the whole plane.
    pub window: Option<usize>,
}

/// Channel-local group ids of one layer: `ids[c*h*w + y*w + x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerClustering {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub params: ClusterParams,
    pub ids: Vec<u32>,
    /// Number of distinct clusters in each channel.
    pub clusters_per_channel: Vec<usize>,
}

impl LayerClustering {
    /// The model crate's cluster-map entry for this layer (validated by the caller through
    /// `ClusterMaps::insert`).
    pub fn to_model(&self) -> relushare_model::LayerClusters {
        relushare_model::LayerClusters {
            k: self.params.k,
            window: self.params.window,
            dims: relushare_model::Dims::new(self.c, self.h, self.w),
            map: self.ids.clone(),
        }
    }

    /// Total number of groups (shared ReLU decisions) of the layer.
    pub fn total_groups(&self) -> usize {
        self.clusters_per_channel.iter().sum()
    }
}

/// Raster-order windows of an `h x w` plane: each is the list of plane indices it holds.
pub fn windows(h: usize, w: usize, window: Option<usize>) -> Vec<Vec<usize>> {
    match window {
        None => vec![(0..h * w).collect()],
        Some(m) => {
            let (wy, wx) = (h.div_ceil(m), w.div_ceil(m));
            let mut out = Vec::with_capacity(wy * wx);
            for by in 0..wy {
                for bx in 0..wx {
                    let mut v = Vec::new();
                    for y in by * m..((by + 1) * m).min(h) {
                        for x in bx * m..((bx + 1) * m).min(w) {
                            v.push(y * w + x);
                        }
                    }
                    out.push(v);
                }
            }
            out
        }
    }
}

/// Clusters every channel of a layer. `responses` holds one vector per activation in
/// `[C, H, W]` order (item `c*h*w + p`).
pub fn cluster_layer(
    responses: &BitMatrix,
    (c, h, w): (usize, usize, usize),
    params: ClusterParams,
) -> Result<LayerClustering, AnalysisError> {
    if responses.items() != c * h * w {
        return Err(AnalysisError::Shape(format!(
            "response matrix has {} vectors, layer has {c}x{h}x{w}",
            responses.items()
        )));
    }
    if params.k == 0 {
        return Err(AnalysisError::Invalid("k must be at least 1".into()));
    }
    match params.window {
        Some(0) => return Err(AnalysisError::Invalid("window must be at least 1".into())),
        None if params.k > h * w => {
            return Err(AnalysisError::Invalid(format!(
                "k = {} exceeds the {} activations of a {h}x{w} channel",
                params.k,
                h * w
            )))
        }
        _ => {}
    }
    if responses.samples() == 0 {
        return Err(AnalysisError::Invalid("no images to cluster on".into()));
    }
    let wins = windows(h, w, params.window);
    let plane = h * w;
    let per_channel: Vec<(Vec<u32>, usize)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut ids = vec![0u32; plane];
            let mut count = 0usize;
            for win in &wins {
                let members: Vec<usize> = win.iter().map(|p| ch * plane + p).collect();
                let k = params.k.min(members.len());
                let labels = single_linkage(responses, &members, k);
                for (p, l) in win.iter().zip(labels) {
                    ids[*p] = count as u32 + l;
                }
                count += k;
            }
            (ids, count)
        })
        .collect();
    let mut ids = Vec::with_capacity(c * plane);
    let mut clusters_per_channel = Vec::with_capacity(c);
    for (v, n) in per_channel {
        ids.extend(v);
        clusters_per_channel.push(n);
    }
    Ok(LayerClustering {
        c,
        h,
        w,
        params,
        ids,
        clusters_per_channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test randomness (not for secrets).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn random_matrix(rng: &mut Rng, items: usize, samples: usize, p_one: u64) -> BitMatrix {
        let mut m = BitMatrix::new(items, samples);
        for i in 0..items {
            for s in 0..samples {
                m.set(i, s, rng.below(100) < p_one);
            }
        }
        m
    }

    /// Partition equality up to relabelling, plus our first-member numbering.
    fn canonical(labels: &[u32]) -> Vec<u32> {
        let mut map = std::collections::HashMap::new();
        labels
            .iter()
            .map(|l| {
                let n = map.len() as u32;
                *map.entry(*l).or_insert(n)
            })
            .collect()
    }

    #[test]
    fn bits_and_hamming() {
        let mut m = BitMatrix::new(2, 130);
        m.set(0, 0, true);
        m.set(0, 129, true);
        m.set(1, 129, true);
        m.set(1, 64, true);
        assert!(m.get(0, 129) && !m.get(0, 64));
        assert_eq!(m.words(), 3);
        assert_eq!(m.hamming(0, 1), 2);
        assert_eq!(m.hamming(1, 1), 0);
        m.set(0, 0, false);
        assert_eq!(m.hamming(0, 1), 1);
    }

    #[test]
    fn mst_cut_equals_naive_agglomerative() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for trial in 0..300 {
            let n = 1 + rng.below(24) as usize;
            // few samples -> many ties, which exercises the tie-breaking order
            let samples = 1 + rng.below(if trial % 2 == 0 { 6 } else { 150 }) as usize;
            let p_one = 20 + rng.below(60);
            let m = random_matrix(&mut rng, n, samples, p_one);
            let members: Vec<usize> = (0..n).collect();
            for k in 1..=n {
                let fast = single_linkage(&m, &members, k);
                let slow = naive_agglomerative(&m, &members, k);
                assert_eq!(fast, slow, "trial {trial} n {n} k {k}");
                assert_eq!(fast, canonical(&fast));
                let distinct: std::collections::HashSet<_> = fast.iter().collect();
                assert_eq!(distinct.len(), k, "exactly k clusters");
            }
        }
    }

    #[test]
    fn identical_vectors_merge_first() {
        // items 0,2 identical; 1,3 identical; the two pairs far apart
        let mut m = BitMatrix::new(4, 64);
        for s in 0..32 {
            m.set(0, s, true);
            m.set(2, s, true);
        }
        for s in 32..64 {
            m.set(1, s, true);
            m.set(3, s, true);
        }
        let labels = single_linkage(&m, &[0, 1, 2, 3], 2);
        assert_eq!(labels, vec![0, 1, 0, 1]);
    }

    #[test]
    fn layer_exact_k_per_channel() {
        let mut rng = Rng(42);
        let (c, h, w) = (3, 6, 5);
        let m = random_matrix(&mut rng, c * h * w, 70, 50);
        let out = cluster_layer(&m, (c, h, w), ClusterParams { k: 7, window: None }).unwrap();
        assert_eq!(out.clusters_per_channel, vec![7, 7, 7]);
        for ch in 0..c {
            let s: std::collections::BTreeSet<u32> = out.ids[ch * h * w..(ch + 1) * h * w]
                .iter()
                .copied()
                .collect();
            assert_eq!(s, (0..7).collect());
            // channel clusters equal the naive procedure on that channel alone
            let members: Vec<usize> = (ch * h * w..(ch + 1) * h * w).collect();
            assert_eq!(
                out.ids[ch * h * w..(ch + 1) * h * w].to_vec(),
                naive_agglomerative(&m, &members, 7)
            );
        }
        assert_eq!(out.total_groups(), 21);
    }

    #[test]
    fn window_ids() {
        let mut rng = Rng(7);
        let (c, h, w, mm, k) = (2, 10, 9, 4, 3);
        let m = random_matrix(&mut rng, c * h * w, 100, 40);
        let out = cluster_layer(
            &m,
            (c, h, w),
            ClusterParams {
                k,
                window: Some(mm),
            },
        )
        .unwrap();
        let wx = w.div_ceil(mm);
        let n_windows = h.div_ceil(mm) * wx; // 3 x 3
        assert_eq!(n_windows, 9);
        // window sizes 16,16,8 / 16,16,8 / 8,8,2 -> clusters 3,3,3 / 3,3,3 / 3,3,2
        let starts = [0usize, 3, 6, 9, 12, 15, 18, 21, 24, 26];
        for ch in 0..c {
            let mut per_window = vec![std::collections::BTreeSet::new(); n_windows];
            for y in 0..h {
                for x in 0..w {
                    let id = out.ids[ch * h * w + y * w + x] as usize;
                    let wi = (y / mm) * wx + x / mm;
                    assert!(
                        id >= starts[wi] && id < starts[wi + 1],
                        "id {id} at ({y},{x}) outside window {wi}"
                    );
                    per_window[wi].insert(id);
                }
            }
            for (wi, s) in per_window.iter().enumerate() {
                let want: std::collections::BTreeSet<usize> =
                    (starts[wi]..starts[wi + 1]).collect();
                assert_eq!(s, &want, "window {wi}");
            }
        }
        // bottom-right window is 2 rows x 1 col = 2 members -> 2 clusters
        assert_eq!(windows(h, w, Some(mm))[8], vec![8 * 9 + 8, 9 * 9 + 8]);
        let per: usize = windows(h, w, Some(mm)).iter().map(|v| k.min(v.len())).sum();
        assert_eq!(out.clusters_per_channel, vec![per; c]);
    }

    #[test]
    fn model_crate_accepts_our_maps() {
        let mut rng = Rng(11);
        for (c, h, w, k, win) in [
            (2, 29, 29, 8, Some(8)),
            (3, 10, 9, 3, Some(4)),
            (2, 12, 12, 20, None),
        ] {
            let m = random_matrix(&mut rng, c * h * w, 40, 50);
            let out = cluster_layer(&m, (c, h, w), ClusterParams { k, window: win }).unwrap();
            let g = out.to_model().validate().unwrap();
            assert_eq!(g.total(), out.total_groups());
            assert_eq!(
                out.clusters_per_channel[0],
                relushare_model::group::cluster_groups(h, w, win, k)
            );
            let mut maps = relushare_model::ClusterMaps::default();
            maps.insert("act1", out.to_model()).unwrap();
        }
    }

    #[test]
    fn bad_params_are_errors() {
        let m = BitMatrix::new(2 * 4 * 4, 10);
        let dims = (2, 4, 4);
        assert!(cluster_layer(&m, dims, ClusterParams { k: 0, window: None }).is_err());
        assert!(cluster_layer(
            &m,
            dims,
            ClusterParams {
                k: 17,
                window: None
            }
        )
        .is_err());
        assert!(cluster_layer(
            &m,
            dims,
            ClusterParams {
                k: 2,
                window: Some(0)
            }
        )
        .is_err());
        // a window larger than the plane is one window
        let one = cluster_layer(
            &m,
            dims,
            ClusterParams {
                k: 2,
                window: Some(9),
            },
        )
        .unwrap();
        assert_eq!(one.clusters_per_channel, vec![2, 2]);
        assert!(cluster_layer(&m, (2, 4, 3), ClusterParams { k: 2, window: None }).is_err());
        assert!(cluster_layer(
            &BitMatrix::new(32, 0),
            dims,
            ClusterParams { k: 2, window: None }
        )
        .is_err());
        assert!(cluster_layer(
            &m,
            dims,
            ClusterParams {
                k: 16,
                window: None
            }
        )
        .is_ok());
    }
}
