//! [`choose`] on a partial sort against the full sort it replaced.

use std::time::Instant;

use proptest::prelude::*;
use shoal_proto::tracker::ChunkBitmap;

use super::super::holders::{Holders, Holding};
use super::super::peers::Slot;
use super::{Ranked, best_first, choose};

/// The choice as made before the partial sort: every candidate sorted by key, the
/// better half, the best holder of each uncovered chunk, the rest by rank.
fn choose_fully_sorted(
    ranked: &[&Holding],
    have: &ChunkBitmap,
    count: u32,
    max: usize,
) -> Vec<usize> {
    let mut chosen = vec![false; ranked.len()];
    let mut covered = have.clone();
    let mut n = 0;
    let take = |k: usize, chosen: &mut Vec<bool>, covered: &mut ChunkBitmap, n: &mut usize| {
        chosen[k] = true;
        *n += 1;
        if ranked[k].complete {
            *covered = ChunkBitmap::full(count);
        } else {
            covered.union_with(&ranked[k].have);
        }
    };
    for k in 0..ranked.len().min(max.div_ceil(2)) {
        take(k, &mut chosen, &mut covered, &mut n);
    }
    let mut offered = ChunkBitmap::new();
    for h in ranked {
        if h.complete {
            offered = ChunkBitmap::full(count);
            break;
        }
        offered.union_with(&h.have);
    }
    let wanted: Vec<u32> = covered
        .missing(count)
        .filter(|&i| offered.contains(i))
        .collect();
    for i in wanted {
        if n >= max {
            break;
        }
        if covered.contains(i) {
            continue;
        }
        let best = (0..ranked.len())
            .find(|&k| !chosen[k] && (ranked[k].complete || ranked[k].have.contains(i)));
        if let Some(k) = best {
            take(k, &mut chosen, &mut covered, &mut n);
        }
    }
    for k in 0..ranked.len() {
        if n >= max {
            break;
        }
        if !chosen[k] {
            take(k, &mut chosen, &mut covered, &mut n);
        }
    }
    (0..ranked.len()).filter(|&k| chosen[k]).collect()
}

/// A holder table of `count` chunks: holder `i` holds the chunks `have[i]` selects
/// (bit `j` of the seed: chunk `j × 7 % count`, so some chunks are rare), or all.
fn table(count: u32, seeds: &[(u64, bool, bool)]) -> Holders {
    let mut t = Holders::new(count);
    let now = Instant::now();
    for (i, &(bits, complete, sparse)) in seeds.iter().enumerate() {
        let have: ChunkBitmap = (0..count)
            .filter(|&c| {
                let j = (u64::from(c) * 7 + i as u64) % 64;
                let b = bits >> j & 1 == 1;
                // Sparse holders hold about one chunk in 16.
                if sparse {
                    b && (bits >> ((j + 5) % 64)) & 7 == 0
                } else {
                    b
                }
            })
            .collect();
        t.set(now, Slot::for_test(i as u32), &have, complete && i % 5 == 0);
    }
    t
}

proptest! {
    /// Same hints, same order, as sorting every candidate: for swarms below and above
    /// `max`, requesters holding much or little, rare chunks held only by candidates
    /// ranked far down, and complete holders.
    #[test]
    fn partial_sort_chooses_as_the_full_sort(
        count in 1u32..200,
        seeds in prop::collection::vec((any::<u64>(), any::<bool>(), any::<bool>()), 0..300),
        mine in any::<u64>(),
        salt in any::<u64>(),
        max in 1usize..48,
    ) {
        let t = table(count, &seeds);
        let holdings: Vec<&Holding> = t.iter().collect();
        let have: ChunkBitmap = (0..count).filter(|&c| mine >> (c % 64) & 1 == 1 && c % 3 == 0).collect();
        // Distinct keys in a scrambled order, the index in the low bits as in `rank`.
        let mut keys: Vec<u128> = (0..holdings.len())
            .map(|i| {
                let mix = Slot::for_test(i as u32).mix(salt) >> 40;
                u128::from(mix) << 32 | i as u128
            })
            .collect();
        let mut all = keys.clone();
        all.sort_unstable();
        let by_rank: Vec<&Holding> = all.iter().map(|&k| holdings[(k & 0xFFFF_FFFF) as usize]).collect();
        let want: Vec<u128> = choose_fully_sorted(&by_rank, &have, count, max)
            .into_iter()
            .map(|k| all[k])
            .collect();

        let sorted = best_first(&mut keys, max);
        prop_assert_eq!(sorted, max.min(keys.len()));
        prop_assert!(keys[..sorted].windows(2).all(|w| w[0] < w[1]));
        let part: Vec<&Holding> = keys.iter().map(|&k| holdings[(k & 0xFFFF_FFFF) as usize]).collect();
        let ranked = Ranked { holdings: &part, keys: &keys, sorted };
        let got: Vec<u128> = choose(&ranked, &have, count, max)
            .into_iter()
            .map(|k| keys[k])
            .collect();
        prop_assert_eq!(got, want);
    }
}
