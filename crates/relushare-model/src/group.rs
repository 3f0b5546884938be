//! Group maps: which activations of a channel plane (or, for cross-channel sharing, of a block
//! of channels) share one ReLU decision.

use crate::spec::{ActKind, Decider, Dims, EdgePolicy, Grouping, SharedAct};
use crate::ModelError;

/// The partition of a `[C, H, W]` activation tensor into groups. Group ids are local to a
/// channel; [`GroupMap::offset`] turns them into global ids (channel-major). Under
/// cross-channel sharing (`span > 1`) the groups belong to blocks of `span` consecutive
/// channels: every channel of a block holds the block's local ids, and the block's first
/// channel carries its group count and leaders (the other channels have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMap {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Channel-local group id of every activation, `c*h*w` entries in CHW order.
    pub group_of: Vec<u32>,
    /// Number of groups in each channel.
    pub groups: Vec<usize>,
    /// For each channel and group, the plane index (`y*w + x`) of the member that decides
    /// under the one-hot decider: the middle member of the group (across channels: in the
    /// block's middle channel).
    pub leaders: Vec<Vec<u32>>,
    /// Channels per block of shared groups (1 unless the grouping is cross-channel).
    pub span: usize,
    offsets: Vec<usize>,
}

impl GroupMap {
    /// Global id of channel `c`'s group 0 (of its block's group 0 under cross-channel sharing).
    pub fn offset(&self, c: usize) -> usize {
        self.offsets[c - c % self.span]
    }

    /// Channels of the block that starts at channel `first`.
    fn block_len(&self, first: usize) -> usize {
        self.span.min(self.c - first)
    }

    /// Total number of groups (= secure comparisons for this layer).
    pub fn total(&self) -> usize {
        self.offsets[self.c]
    }

    /// Global group id of every activation, CHW order.
    pub fn global_ids(&self) -> Vec<usize> {
        let plane = self.h * self.w;
        self.group_of
            .iter()
            .enumerate()
            .map(|(i, &g)| self.offset(i / plane) + g as usize)
            .collect()
    }

    /// Global index (`c*h*w` order) of every group's leader, in global group order.
    pub fn global_leaders(&self) -> Vec<usize> {
        let plane = self.h * self.w;
        let mut out = Vec::with_capacity(self.total());
        for (c, ls) in self.leaders.iter().enumerate() {
            // a block's leaders (held by its first channel) sit in its middle channel
            let mid = if ls.is_empty() {
                continue;
            } else {
                c + self.block_len(c) / 2
            };
            out.extend(ls.iter().map(|&l| mid * plane + l as usize));
        }
        out
    }

    /// Build the map for a sharing layer on input `d`. `explicit` is the per-channel cluster
    /// map (required for `Grouping::Cluster`, ignored otherwise).
    pub fn build(act: &SharedAct, d: Dims, explicit: Option<&[u32]>) -> Result<Self, ModelError> {
        let plane = d.plane();
        let span = match &act.grouping {
            Grouping::CrossChannel { channels, .. } => (*channels).max(1),
            _ => 1,
        };
        let (group_of, groups): (Vec<u32>, Vec<usize>) = match &act.grouping {
            Grouping::Patch { k, edge } => {
                let (one, n) = patch_plane(d.h, d.w, *k, *edge);
                (repeat(&one, d.c), vec![n; d.c])
            }
            Grouping::CrossChannel { k, edge, .. } => {
                let (one, n) = patch_plane(d.h, d.w, *k, *edge);
                let groups = (0..d.c)
                    .map(|c| if c % span == 0 { n } else { 0 })
                    .collect();
                (repeat(&one, d.c), groups)
            }
            Grouping::Channel => (vec![0; d.len()], vec![1; d.c]),
            Grouping::Cluster { window, k } => {
                let map = explicit.ok_or_else(|| {
                    ModelError::Spec(format!(
                        "cluster grouping ({k} clusters{}) needs a cluster map: run `relushare cluster` and pass --cluster-map",
                        window.map(|m| format!(" per {m}x{m} window")).unwrap_or_default()
                    ))
                })?;
                if map.len() != d.len() {
                    return Err(ModelError::Shape(format!(
                        "cluster map has {} entries, the layer has {} activations ({d})",
                        map.len(),
                        d.len()
                    )));
                }
                let expected = cluster_groups(d.h, d.w, *window, *k);
                let mut groups = Vec::with_capacity(d.c);
                for c in 0..d.c {
                    let ch = &map[c * plane..(c + 1) * plane];
                    let mut seen = vec![false; expected];
                    for &g in ch {
                        let g = g as usize;
                        if g >= expected {
                            return Err(ModelError::Shape(format!(
                                "cluster map channel {c}: group id {g} out of range (expected < {expected})"
                            )));
                        }
                        seen[g] = true;
                    }
                    if let Some(missing) = seen.iter().position(|s| !s) {
                        return Err(ModelError::Shape(format!(
                            "cluster map channel {c}: group {missing} has no member (expected {expected} groups)"
                        )));
                    }
                    if let Some(m) = window {
                        check_windows(ch, d.h, d.w, *m, *k, c)?;
                    }
                    groups.push(expected);
                }
                (map.to_vec(), groups)
            }
        };
        let mut offsets = Vec::with_capacity(d.c + 1);
        let mut acc = 0;
        for &g in &groups {
            offsets.push(acc);
            acc += g;
        }
        offsets.push(acc);
        let leaders = (0..d.c)
            .map(|c| {
                if groups[c] == 0 {
                    return Vec::new();
                }
                leaders_of(
                    &group_of[c * plane..(c + 1) * plane],
                    groups[c],
                    d.w,
                    &act.grouping,
                )
            })
            .collect();
        Ok(GroupMap {
            c: d.c,
            h: d.h,
            w: d.w,
            group_of,
            groups,
            leaders,
            span,
            offsets,
        })
    }
}

fn repeat(one: &[u32], c: usize) -> Vec<u32> {
    let mut v = Vec::with_capacity(one.len() * c);
    for _ in 0..c {
        v.extend_from_slice(one);
    }
    v
}

/// Patches per side for a side of length `n`.
pub fn patches_per_side(n: usize, k: usize, edge: EdgePolicy) -> usize {
    match edge {
        EdgePolicy::Partial => n.div_ceil(k),
        EdgePolicy::Merge => (n / k).max(1),
    }
}

fn patch_plane(h: usize, w: usize, k: usize, edge: EdgePolicy) -> (Vec<u32>, usize) {
    let (ny, nx) = (patches_per_side(h, k, edge), patches_per_side(w, k, edge));
    let mut v = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let py = (y / k).min(ny - 1);
            let px = (x / k).min(nx - 1);
            v.push((py * nx + px) as u32);
        }
    }
    (v, ny * nx)
}

/// Number of groups per channel of a cluster grouping on an `h x w` plane.
pub fn cluster_groups(h: usize, w: usize, window: Option<usize>, k: usize) -> usize {
    match window {
        None => k.min(h * w),
        Some(m) => {
            let mut n = 0;
            for wy in 0..h.div_ceil(m) {
                for wx in 0..w.div_ceil(m) {
                    let rows = m.min(h - wy * m);
                    let cols = m.min(w - wx * m);
                    n += k.min(rows * cols);
                }
            }
            n
        }
    }
}

/// Windowed cluster ids must be `window_index * k + cluster`, with every window's activations
/// in that window's id range.
fn check_windows(
    ch: &[u32],
    h: usize,
    w: usize,
    m: usize,
    k: usize,
    c: usize,
) -> Result<(), ModelError> {
    let nx = w.div_ceil(m);
    // First id of each window, with edge windows holding fewer clusters when smaller than k.
    let mut start = Vec::new();
    let mut acc = 0usize;
    for wy in 0..h.div_ceil(m) {
        for wx in 0..nx {
            start.push(acc);
            acc += k.min(m.min(h - wy * m) * m.min(w - wx * m));
        }
    }
    start.push(acc);
    for y in 0..h {
        for x in 0..w {
            let win = (y / m) * nx + x / m;
            let g = ch[y * w + x] as usize;
            if g < start[win] || g >= start[win + 1] {
                return Err(ModelError::Shape(format!(
                    "cluster map channel {c}: activation ({y},{x}) has group {g}, outside its {m}x{m} window's ids {}..{}",
                    start[win],
                    start[win + 1]
                )));
            }
        }
    }
    Ok(())
}

fn leaders_of(plane: &[u32], n: usize, w: usize, grouping: &Grouping) -> Vec<u32> {
    match grouping {
        // Middle of the bounding box: centre pixel of a patch / of the channel.
        Grouping::Patch { .. } | Grouping::Channel | Grouping::CrossChannel { .. } => {
            let mut lo = vec![(usize::MAX, usize::MAX); n];
            let mut hi = vec![(0usize, 0usize); n];
            for (i, &g) in plane.iter().enumerate() {
                let (y, x) = (i / w, i % w);
                let g = g as usize;
                lo[g] = (lo[g].0.min(y), lo[g].1.min(x));
                hi[g] = (hi[g].0.max(y), hi[g].1.max(x));
            }
            (0..n)
                .map(|g| {
                    let y = (lo[g].0 + hi[g].0 + 1) / 2;
                    let x = (lo[g].1 + hi[g].1 + 1) / 2;
                    (y * w + x) as u32
                })
                .collect()
        }
        // Irregular clusters: the middle member in raster order.
        Grouping::Cluster { .. } => {
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); n];
            for (i, &g) in plane.iter().enumerate() {
                members[g as usize].push(i as u32);
            }
            members.iter().map(|m| m[m.len() / 2]).collect()
        }
    }
}

/// Check that an activation kind fits a layer with input `d`.
pub fn validate_act(name: &str, kind: &ActKind, d: Dims) -> Result<(), ModelError> {
    let err = |m: String| Err(ModelError::Spec(format!("{name}: {m}")));
    match kind {
        ActKind::Relu | ActKind::Identity => Ok(()),
        ActKind::Partial { relu_channels } if *relu_channels > d.c => err(format!(
            "partial activation with {relu_channels} ReLU channels, layer has {}",
            d.c
        )),
        ActKind::Partial { .. } => Ok(()),
        ActKind::Shared(s) => {
            if !(0.0..1.0).contains(&s.noise) {
                return err(format!("noise must be in [0, 1), got {}", s.noise));
            }
            match &s.grouping {
                Grouping::Patch { k: 0, .. } | Grouping::CrossChannel { k: 0, .. } => {
                    return err("patch size 0".into())
                }
                Grouping::CrossChannel { channels: 0, .. } => {
                    return err("cross-channel groups need at least one channel".into())
                }
                Grouping::Cluster { k: 0, .. }
                | Grouping::Cluster {
                    window: Some(0), ..
                } => return err("cluster k and window must be positive".into()),
                _ => {}
            }
            if s.decider == Decider::Fc && s.grouping != Grouping::Channel {
                return err("the FC decider needs whole-channel groups".into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(grouping: Grouping) -> SharedAct {
        SharedAct {
            grouping,
            decider: Decider::Learned,
            noise: 0.0,
        }
    }

    #[test]
    fn patch_counts_match_tables_5_and_6() {
        let d = Dims::new(2, 32, 32);
        let m = GroupMap::build(
            &act(Grouping::Patch {
                k: 3,
                edge: EdgePolicy::Partial,
            }),
            d,
            None,
        )
        .unwrap();
        assert_eq!(m.groups, vec![121, 121]);
        assert_eq!(m.total(), 242);
        for (k, side) in [(29, 9), (28, 9)] {
            let m = GroupMap::build(
                &act(Grouping::Patch {
                    k: 3,
                    edge: EdgePolicy::Merge,
                }),
                Dims::new(1, k, k),
                None,
            )
            .unwrap();
            assert_eq!(m.total(), side * side);
            // The last patch absorbs the remainder: 29 = 8*3 + 5.
            assert_eq!(*m.group_of.last().unwrap() as usize, side * side - 1);
        }
    }

    #[test]
    fn leaders_are_patch_centres() {
        let m = GroupMap::build(
            &act(Grouping::Patch {
                k: 3,
                edge: EdgePolicy::Partial,
            }),
            Dims::new(1, 6, 6),
            None,
        )
        .unwrap();
        assert_eq!(m.leaders[0], vec![7, 10, 25, 28]);
        let m = GroupMap::build(&act(Grouping::Channel), Dims::new(3, 32, 32), None).unwrap();
        assert_eq!(
            m.global_leaders(),
            vec![16 * 32 + 16, 1024 + 528, 2048 + 528]
        );
    }

    #[test]
    fn cluster_map_validation() {
        let g = act(Grouping::Cluster {
            window: Some(2),
            k: 2,
        });
        let d = Dims::new(1, 4, 4);
        assert!(GroupMap::build(&g, d, None).is_err());
        // windows: 4 windows of 2x2, 2 clusters each -> ids 0..8
        let mut map = vec![0u32; 16];
        for y in 0..4 {
            for x in 0..4 {
                let win = (y / 2) * 2 + x / 2;
                map[y * 4 + x] = (win * 2 + (x % 2)) as u32;
            }
        }
        let m = GroupMap::build(&g, d, Some(&map)).unwrap();
        assert_eq!(m.total(), 8);
        let mut bad = map.clone();
        bad[0] = 7; // an id of another window
        assert!(GroupMap::build(&g, d, Some(&bad)).is_err());
        let mut bad = map.clone();
        bad[1] = 0; // cluster 1 of window 0 empty
        bad[5] = 0;
        assert!(GroupMap::build(&g, d, Some(&bad)).is_err());
        assert!(GroupMap::build(&g, d, Some(&map[..15])).is_err());
    }

    #[test]
    fn cross_channel_groups_span_blocks_of_channels() {
        // 5 channels of 4x4 in blocks of 2 (the last block has 1 channel), 2x2 patches
        let g = act(Grouping::CrossChannel {
            k: 2,
            edge: EdgePolicy::Partial,
            channels: 2,
        });
        let m = GroupMap::build(&g, Dims::new(5, 4, 4), None).unwrap();
        assert_eq!(m.total(), 3 * 4);
        let ids = m.global_ids();
        // same patch, channels 0 and 1: one group; channel 2 starts the next block
        assert_eq!(ids[0], ids[16]);
        assert_eq!(ids[16 + 5], ids[5]);
        assert_eq!(ids[32], 4);
        assert_eq!(ids[4 * 16 + 15], 11);
        // every group has members in every channel of its block, and ids are dense
        let mut count = vec![0; m.total()];
        for &i in &ids {
            count[i] += 1;
        }
        assert_eq!(count, [8, 8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4]);
        // leaders: the patch centre in the block's middle channel, one per group, in order
        let leaders = m.global_leaders();
        assert_eq!(leaders.len(), 12);
        assert_eq!(leaders[0], 16 + 5);
        assert_eq!(leaders[8], 4 * 16 + 5);
        for (gid, &l) in leaders.iter().enumerate() {
            assert_eq!(ids[l], gid, "leader of group {gid} is a member");
        }
        assert!(validate_act(
            "a",
            &ActKind::Shared(act(Grouping::CrossChannel {
                k: 2,
                edge: EdgePolicy::Partial,
                channels: 0
            })),
            Dims::new(1, 4, 4)
        )
        .is_err());
    }
}
