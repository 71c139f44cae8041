//! Power of two choices: two distinct random candidates, the cheaper one wins. Pure functions
//! over indices so the choice can be tested with a seeded random source.

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
