//! Power of two choices: two distinct random candidates, the cheaper one wins. Pure functions
//! over indices so the choice can be tested with a seeded random source.
//! `sample_two` draws the pair straight from the whole endpoint list, rejecting unusable
//! endpoints, so a pick costs O(1) however many endpoints a service has (as long as a constant
//! share of them is usable); `two` + `avoiding` choose from an explicit candidate list, the
//! fallback when sampling gives up.

use rand::Rng;

/// Two distinct random indices below `n` (the same one twice when `n == 1`); `None` when `n == 0`.
pub fn two<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    let i = rng.random_range(0..n);
    let j = if n > 1 {
        (i + rng.random_range(1..n)) % n
    } else {
        i
    };
    Some((i, j))
}

/// Two distinct random indices below `n` for which `usable` holds (the same one twice when
/// `n == 1`), drawn by rejection: at most `tries` draws for each of the two. Uniform over the
/// pairs of usable indices, like `two` over a list of only the usable ones. `None` when `n == 0`
/// or when a draw found nothing usable in `tries` attempts (few usable, or only one): the
/// caller then builds the candidate list.
pub fn sample_two<R: Rng + ?Sized>(
    rng: &mut R,
    n: usize,
    tries: usize,
    mut usable: impl FnMut(usize) -> bool,
) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    let mut first = None;
    for _ in 0..tries {
        let k = rng.random_range(0..n);
        if usable(k) {
            first = Some(k);
            break;
        }
    }
    let i = first?;
    if n == 1 {
        return Some((i, i));
    }
    for _ in 0..tries {
        let k = (i + rng.random_range(1..n)) % n;
        if usable(k) {
            return Some((i, k));
        }
    }
    None
}

/// `(winner, runner_up)` of `a` and `b` by `cost`; a tie goes to `a`.
pub fn cheaper(a: usize, b: usize, cost: impl Fn(usize) -> f64) -> (usize, usize) {
    if cost(b) < cost(a) { (b, a) } else { (a, b) }
}

/// Drops the candidates `avoid` matches, unless that would leave none.
pub fn avoiding<T>(candidates: &mut Vec<T>, avoid: impl Fn(&T) -> bool) {
    if candidates.iter().any(|c| !avoid(c)) {
        candidates.retain(|c| !avoid(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn two_is_distinct_and_in_range() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(two(&mut rng, 0), None);
        assert_eq!(two(&mut rng, 1), Some((0, 0)));
        for n in 2..10 {
            for _ in 0..200 {
                let (i, j) = two(&mut rng, n).unwrap();
                assert!(i < n && j < n && i != j, "{n}: {i} {j}");
            }
        }
    }

    #[test]
    fn the_cheaper_candidate_wins_and_the_dearest_never_does() {
        let costs = [5.0, 1.0, 9.0, 3.0];
        let cost = |i: usize| costs[i];
        assert_eq!(cheaper(0, 1, cost), (1, 0));
        assert_eq!(cheaper(1, 0, cost), (1, 0));
        assert_eq!(cheaper(3, 3, cost), (3, 3));
        let mut rng = StdRng::seed_from_u64(42);
        let mut wins = [0usize; 4];
        for _ in 0..4000 {
            let (a, b) = two(&mut rng, costs.len()).unwrap();
            wins[cheaper(a, b, cost).0] += 1;
        }
        assert_eq!(wins[2], 0, "the most loaded endpoint never wins a pair");
        // The cheapest wins every pair it is in (half of all pairs with 4 candidates).
        assert!(wins[1] > wins[3] && wins[3] > wins[0], "{wins:?}");
    }

    #[test]
    fn sampling_looks_at_a_bounded_number_of_endpoints_however_many_there_are() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 100_000;
        for _ in 0..1000 {
            let mut looked = 0;
            // Every tenth endpoint is unusable.
            let pair = sample_two(&mut rng, n, 8, |k| {
                looked += 1;
                k % 10 != 0
            });
            let (i, j) = pair.unwrap();
            assert!(i != j && i % 10 != 0 && j % 10 != 0 && i < n && j < n);
            assert!(looked <= 16, "{looked}");
        }
    }

    #[test]
    fn sampling_is_uniform_over_usable_pairs_and_gives_up_when_few_are_usable() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            let (i, j) = sample_two(&mut rng, 6, 64, |k| k != 2).unwrap();
            assert!(i != j && i != 2 && j != 2);
            seen[i] += 1;
            seen[j] += 1;
        }
        assert_eq!(seen[2], 0);
        for (k, &c) in seen.iter().enumerate().filter(|(k, _)| *k != 2) {
            assert!((2100..2700).contains(&c), "{k}: {c} of 12000 draws");
        }
        assert_eq!(sample_two(&mut rng, 0, 8, |_| true), None);
        assert_eq!(sample_two(&mut rng, 1, 8, |_| true), Some((0, 0)));
        assert_eq!(sample_two(&mut rng, 1, 8, |_| false), None);
        // Only one usable of many: no distinct second one, so the caller must fall back.
        assert_eq!(sample_two(&mut rng, 1000, 8, |k| k == 7), None);
        assert_eq!(sample_two(&mut rng, 1000, 8, |_| false), None);
    }

    #[test]
    fn avoiding_keeps_at_least_one() {
        let mut v = vec!["a", "b"];
        avoiding(&mut v, |e| *e == "a");
        assert_eq!(v, ["b"]);
        // Duplicates of the avoided endpoint only: keep them rather than choose from nothing.
        let mut v = vec!["a", "a"];
        avoiding(&mut v, |e| *e == "a");
        assert_eq!(v, ["a", "a"]);
    }
}
