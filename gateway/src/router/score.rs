//! The score: `w_cost·cost + w_quality·quality + w_latency·latency`, each part normalised to
//! [0, 1] across the candidates (cheapest = 1, best quality = 1, fastest = 1; all 1 when every
//! candidate is equal). Prices and latencies span orders of magnitude (free local models next
//! to $45/Mtok ones; 100 ms next to 4 s), so both are compared on a log scale: halving the
//! price moves a model the same distance wherever it sits.

use llm_gateway_crds::Weights;
use serde::Serialize;

/// What scoring needs of a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// Mean of input and output price, USD per 1M tokens (0 for local models).
    pub price: f64,
    /// Quality for the request's tier, in [0, 1].
    pub quality: f64,
    /// Latency estimate in ms.
    pub latency_ms: f64,
    /// Runs locally (Ollama).
    pub local: bool,
}

/// One candidate's score and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scored {
    /// Index into the candidate list.
    #[serde(skip)]
    pub idx: usize,
    /// Weighted total.
    pub score: f64,
    /// Cost part in [0, 1].
    pub cost: f64,
    /// Quality part in [0, 1].
    pub quality: f64,
    /// Latency part in [0, 1].
    pub latency: f64,
}

/// Min-max normalisation where `higher_is_better` says which end scores 1.
fn normalise(values: &[f64], higher_is_better: bool) -> impl Fn(f64) -> f64 {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    move |v| {
        // All equal (or no finite spread): everyone is the best.
        if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
            return 1.0;
        }
        let x = (v - lo) / (hi - lo);
        if higher_is_better {
            x
        } else {
            1.0 - x
        }
    }
}

/// Weights scaled to sum to 1 (all-zero weights count as equal weights).
pub fn normalised(w: Weights) -> Weights {
    let sum = w.cost + w.quality + w.latency;
    if sum <= 0.0 {
        return Weights {
            cost: 1.0 / 3.0,
            quality: 1.0 / 3.0,
            latency: 1.0 / 3.0,
        };
    }
    Weights {
        cost: w.cost / sum,
        quality: w.quality / sum,
        latency: w.latency / sum,
    }
}

/// Scores and ranks candidates, best first. Ties go to higher quality, then lower latency,
/// then lower price, then the earlier candidate (config order).
pub fn rank(cands: &[Inputs], w: Weights) -> Vec<Scored> {
    let w = normalised(w);
    let prices: Vec<f64> = cands.iter().map(|c| c.price.max(0.0).ln_1p()).collect();
    let lats: Vec<f64> = cands
        .iter()
        .map(|c| c.latency_ms.max(0.0).ln_1p())
        .collect();
    let quals: Vec<f64> = cands.iter().map(|c| c.quality).collect();
    let (nc, nl, nq) = (
        normalise(&prices, false),
        normalise(&lats, false),
        normalise(&quals, true),
    );
    let mut out: Vec<Scored> = (0..cands.len())
        .map(|i| {
            let (cost, latency, quality) = (nc(prices[i]), nl(lats[i]), nq(quals[i]));
            Scored {
                idx: i,
                score: w.cost * cost + w.quality * quality + w.latency * latency,
                cost,
                quality,
                latency,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        let (ca, cb) = (&cands[a.idx], &cands[b.idx]);
        b.score
            .total_cmp(&a.score)
            .then(cb.quality.total_cmp(&ca.quality))
            .then(ca.latency_ms.total_cmp(&cb.latency_ms))
            .then(ca.price.total_cmp(&cb.price))
            .then(a.idx.cmp(&b.idx))
    });
    out
}

/// Local-first: if the best local candidate scores at least `preference` × the best score,
/// it moves to the front. Returns whether it moved.
pub fn prefer_local(ranked: &mut Vec<Scored>, cands: &[Inputs], preference: Option<f64>) -> bool {
    let (Some(p), Some(best)) = (preference, ranked.first().copied()) else {
        return false;
    };
    if cands[best.idx].local {
        return false;
    }
    let Some(pos) = ranked.iter().position(|s| cands[s.idx].local) else {
        return false;
    };
    if ranked[pos].score >= p * best.score {
        let local = ranked.remove(pos);
        ranked.insert(0, local);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(price: f64, quality: f64, latency_ms: f64, local: bool) -> Inputs {
        Inputs {
            price,
            quality,
            latency_ms,
            local,
        }
    }
    const COST: Weights = Weights {
        cost: 1.0,
        quality: 0.0,
        latency: 0.0,
    };
    const QUALITY: Weights = Weights {
        cost: 0.0,
        quality: 1.0,
        latency: 0.0,
    };
    const LATENCY: Weights = Weights {
        cost: 0.0,
        quality: 0.0,
        latency: 1.0,
    };
    const EVEN: Weights = Weights {
        cost: 1.0,
        quality: 1.0,
        latency: 1.0,
    };

    fn order(cands: &[Inputs], w: Weights) -> Vec<usize> {
        rank(cands, w).iter().map(|s| s.idx).collect()
    }

    #[test]
    fn scoring_table() {
        let three = [
            c(10.0, 0.9, 800.0, false),
            c(0.5, 0.6, 300.0, false),
            c(0.0, 0.5, 100.0, true),
        ];
        // (name, candidates, weights, expected order)
        let cases: Vec<(&str, Vec<Inputs>, Weights, Vec<usize>)> = vec![
            (
                "cost picks the cheapest",
                three.to_vec(),
                COST,
                vec![2, 1, 0],
            ),
            (
                "quality picks the strongest",
                three.to_vec(),
                QUALITY,
                vec![0, 1, 2],
            ),
            (
                "latency picks the fastest",
                three.to_vec(),
                LATENCY,
                vec![2, 1, 0],
            ),
            (
                "one candidate",
                vec![c(3.0, 0.7, 500.0, false)],
                EVEN,
                vec![0],
            ),
            (
                "exact tie goes to config order",
                vec![c(1.0, 0.7, 200.0, false), c(1.0, 0.7, 200.0, false)],
                EVEN,
                vec![0, 1],
            ),
            (
                "score tie goes to higher quality",
                vec![c(1.0, 0.5, 200.0, false), c(1.0, 0.9, 200.0, false)],
                COST,
                vec![1, 0],
            ),
            (
                "then to lower latency",
                vec![c(1.0, 0.5, 300.0, false), c(1.0, 0.5, 200.0, false)],
                COST,
                vec![1, 0],
            ),
            (
                "all local, all free: quality decides",
                vec![c(0.0, 0.5, 100.0, true), c(0.0, 0.6, 100.0, true)],
                COST,
                vec![1, 0],
            ),
        ];
        for (name, cands, w, want) in cases {
            assert_eq!(order(&cands, w), want, "{name}");
        }
    }

    #[test]
    fn parts_are_normalised_and_weighted() {
        let cands = [c(10.0, 0.9, 800.0, false), c(0.0, 0.5, 100.0, true)];
        let r = rank(
            &cands,
            Weights {
                cost: 1.0,
                quality: 1.0,
                latency: 2.0,
            },
        );
        let local = r.iter().find(|s| s.idx == 1).unwrap();
        assert_eq!((local.cost, local.quality, local.latency), (1.0, 0.0, 1.0));
        assert!((local.score - 0.75).abs() < 1e-12, "{local:?}");
        let remote = r.iter().find(|s| s.idx == 0).unwrap();
        assert!((remote.score - 0.25).abs() < 1e-12, "{remote:?}");
        for s in &r {
            for part in [s.cost, s.quality, s.latency, s.score] {
                assert!((0.0..=1.0).contains(&part));
            }
        }
        // Equal candidates all score 1 on every part.
        let same = rank(&[c(1.0, 0.5, 100.0, false); 3], EVEN);
        assert!(same.iter().all(|s| s.score == 1.0));
    }

    #[test]
    fn log_scale_makes_halving_the_price_count_the_same_everywhere() {
        let r = rank(
            &[
                c(0.0, 0.5, 1.0, false),
                c(1.0, 0.5, 1.0, false),
                c(100.0, 0.5, 1.0, false),
            ],
            COST,
        );
        let mid = r.iter().find(|s| s.idx == 1).unwrap().cost;
        assert!(
            mid > 0.8,
            "a $1 model is close to free next to a $100 one on a log scale: {mid}"
        );
    }

    #[test]
    fn local_first_threshold() {
        // Remote: quality 1, latency 0 → 0.6. Local: quality 0, latency 1 → 0.4 (ratio 2/3).
        let cands = [c(1.0, 0.9, 300.0, false), c(1.0, 0.5, 100.0, true)];
        let w = Weights {
            cost: 0.0,
            quality: 0.6,
            latency: 0.4,
        };
        for (pref, moved) in [
            (Some(0.6), true),
            (Some(0.7), false),
            (Some(1.0), false),
            (None, false),
        ] {
            let mut r = rank(&cands, w);
            assert_eq!(r[0].idx, 0);
            assert!((r[1].score / r[0].score - 2.0 / 3.0).abs() < 1e-9);
            assert_eq!(prefer_local(&mut r, &cands, pref), moved, "pref {pref:?}");
            if moved {
                assert_eq!(r[0].idx, 1);
                assert_eq!(r[1].idx, 0, "the displaced best stays first fallback");
            }
        }
        // The local candidate at 0.5 of the best score loses at 0.7 and wins at 0.5.
        let cands = [c(1.0, 1.0, 100.0, false), c(1.0, 0.0, 100.0, true)];
        let mut r = rank(
            &cands,
            Weights {
                cost: 0.0,
                quality: 0.5,
                latency: 0.5,
            },
        );
        assert!(!prefer_local(&mut r, &cands, Some(0.7)));
        assert!(prefer_local(&mut r, &cands, Some(0.5)));
    }
}
