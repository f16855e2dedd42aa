//! The distribution of a run's scores, in bounded memory: a t-digest for the quantiles (rank
//! error about 1% of the rows at the middle, less in the tails), exact count, mean, min and max,
//! and an exact histogram whose bins widen as the range grows. This is what a curator reads to
//! choose a threshold.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tdigest::TDigest;

/// The quantiles every summary reports, in percent.
pub const QUANTILES: [u8; 9] = [1, 5, 10, 25, 50, 75, 90, 95, 99];

/// t-digest compression: ~100 centroids (a few KiB) whatever the number of scores.
const DIGEST_SIZE: usize = 100;

/// Fine bins kept while streaming; summaries merge them into fewer, wider bins.
const FINE_BINS: usize = 256;

/// Scores seen before the histogram's range is fixed (the first range is the range of these).
/// Histogram bins of the detailed reports: `--stats-json`, `--plot`, the Python `stats`.
pub const DETAILED_BINS: usize = 40;

const RANGE_SAMPLE: usize = 1024;

/// Accumulates scores; [`ScoreDistribution::summary`] reads it out at any time.
#[derive(Debug, Clone)]
pub struct ScoreDistribution {
    digest: TDigest,
    histogram: DoublingHistogram,
}

impl Default for ScoreDistribution {
    fn default() -> Self {
        Self { digest: TDigest::new_with_size(DIGEST_SIZE), histogram: DoublingHistogram::default() }
    }
}

impl ScoreDistribution {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one score; non-finite values are not scores and are ignored.
    pub fn add(&mut self, score: f64) {
        if score.is_finite() {
            self.digest.push(score);
            self.histogram.add(score);
        }
    }

    pub fn count(&self) -> usize {
        self.digest.count() as usize
    }

    /// The score at quantile `q` in [0, 1] (estimated), `None` before the first score.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut digest = self.digest.clone();
        digest.flush();
        let (min, max) = (digest.min()?, digest.max()?);
        digest.estimate_quantile(q.clamp(0.0, 1.0)).map(|v| v.clamp(min, max))
    }

    /// Count, mean, min, max, the [`QUANTILES`] and a histogram of at most `bins` bins; `None`
    /// before the first score.
    pub fn summary(&self, bins: usize) -> Option<DistributionSummary> {
        let mut digest = self.digest.clone();
        digest.flush();
        let (min, max, mean) = (digest.min()?, digest.max()?, digest.mean()?);
        let quantiles = QUANTILES
            .iter()
            .map(|&p| (p, digest.estimate_quantile(p as f64 / 100.0).unwrap_or(mean).clamp(min, max)))
            .collect();
        Some(DistributionSummary {
            count: self.count(),
            mean,
            min,
            max,
            quantiles: Quantiles(quantiles),
            histogram: self.histogram.merged(bins.max(1)),
        })
    }
}

/// What a run's summary and `--stats-json` say about its scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistributionSummary {
    #[serde(rename = "score_count")]
    pub count: usize,
    #[serde(rename = "score_mean")]
    pub mean: f64,
    #[serde(rename = "score_min")]
    pub min: f64,
    #[serde(rename = "score_max")]
    pub max: f64,
    #[serde(rename = "score_quantiles")]
    pub quantiles: Quantiles,
    #[serde(rename = "score_histogram")]
    pub histogram: Histogram,
}

/// `(percent, value)` pairs, written as `{"p1": ..., "p5": ...}` in this order.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantiles(pub Vec<(u8, f64)>);

impl Quantiles {
    /// The value at `percent` (one of [`QUANTILES`]).
    pub fn get(&self, percent: u8) -> Option<f64> {
        self.0.iter().find(|(p, _)| *p == percent).map(|(_, v)| *v)
    }
}

impl Serialize for Quantiles {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (p, v) in &self.0 {
            map.serialize_entry(&format!("p{p}"), v)?;
        }
        map.end()
    }
}

/// Bin `i` holds the scores in `[edges[i], edges[i + 1])` (the last bin includes its right edge).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
}

/// Exact counts in [`FINE_BINS`] equal bins over a range that doubles (merging neighbouring
/// bins) whenever a score falls outside it, so memory stays fixed and no score is dropped.
#[derive(Debug, Clone, Default)]
struct DoublingHistogram {
    /// Scores waiting for the first range; empty once the bins exist.
    sample: Vec<f64>,
    origin: f64,
    width: f64,
    counts: Vec<u64>,
}

impl DoublingHistogram {
    fn add(&mut self, x: f64) {
        if self.counts.is_empty() {
            self.sample.push(x);
            if self.sample.len() >= RANGE_SAMPLE {
                self.start_bins();
            }
            return;
        }
        self.bin(x);
    }

    /// Fixes the first range from the sample: its span, with room on both sides.
    fn start_bins(&mut self) {
        let (lo, hi) = self.sample.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) * 1e-3 };
        // A power-of-two width and an origin on its grid make every edge (origin + i·width, and
        // so every edge after doublings) exactly representable: counts stay exact at the edges.
        self.width = (2.0 * span / FINE_BINS as f64).log2().ceil().exp2();
        self.origin = ((lo - span / 2.0) / self.width).floor() * self.width;
        self.counts = vec![0; FINE_BINS];
        for x in std::mem::take(&mut self.sample) {
            self.bin(x);
        }
    }

    fn bin(&mut self, x: f64) {
        while x < self.origin {
            self.double(true);
        }
        while x >= self.origin + self.width * FINE_BINS as f64 {
            self.double(false);
        }
        let mut i = (((x - self.origin) / self.width) as usize).min(FINE_BINS - 1);
        // Settle rounding at the edges the way summaries compute them (origin + i·width), so a
        // reported bin holds exactly the scores between its reported edges.
        while i + 1 < FINE_BINS && x >= self.edge(i + 1) {
            i += 1;
        }
        while i > 0 && x < self.edge(i) {
            i -= 1;
        }
        self.counts[i] += 1;
    }

    fn edge(&self, i: usize) -> f64 {
        self.origin + i as f64 * self.width
    }

    /// Doubles the bin width; the range grows to the left (`left`) or to the right.
    fn double(&mut self, left: bool) {
        let mut merged = vec![0; FINE_BINS];
        for (i, c) in self.counts.iter().enumerate() {
            // Bin i starts at origin + i·w; in the doubled layout it lands in bin (offset + i) / 2,
            // where offset is FINE_BINS when the range grows to the left by a whole old range.
            let j = if left { (FINE_BINS + i) / 2 } else { i / 2 };
            merged[j] += c;
        }
        if left {
            self.origin -= self.width * FINE_BINS as f64;
        }
        self.width *= 2.0;
        self.counts = merged;
    }

    /// At most `bins` bins over the occupied range, each a run of whole fine bins (exact
    /// counts); before the range is fixed, equal bins over the sample's own range.
    fn merged(&self, bins: usize) -> Histogram {
        if self.counts.is_empty() {
            return Self::from_sample(&self.sample, bins);
        }
        let first = self.counts.iter().position(|&c| c > 0);
        let last = self.counts.iter().rposition(|&c| c > 0);
        let (Some(first), Some(last)) = (first, last) else { return Histogram::default() };
        let group = (last - first + 1).div_ceil(bins);
        let mut h = Histogram::default();
        let mut i = first;
        while i <= last {
            h.edges.push(self.edge(i));
            h.counts.push(self.counts[i..(i + group).min(last + 1)].iter().sum());
            i += group;
        }
        h.edges.push(self.edge(i.min(last + 1)));
        h
    }

    fn from_sample(sample: &[f64], bins: usize) -> Histogram {
        if sample.is_empty() {
            return Histogram::default();
        }
        let (lo, hi) = sample.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let bins = if hi > lo { bins } else { 1 };
        let width = if hi > lo { (hi - lo) / bins as f64 } else { 1.0 };
        let mut counts = vec![0u64; bins];
        for &x in sample {
            counts[(((x - lo) / width) as usize).min(bins - 1)] += 1;
        }
        let edges = (0..=bins).map(|i| if i == bins { hi.max(lo + width) } else { lo + i as f64 * width }).collect();
        Histogram { edges, counts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of scores: a skewed mixture, like reward scores of a mixed set.
    fn scores(n: usize) -> Vec<f64> {
        let mut state = 0x2545F4914F6CDD1Du64;
        (0..n)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if i % 4 == 0 {
                    -8.0 + 6.0 * u
                } else {
                    2.0 + 10.0 * u * u
                }
            })
            .collect()
    }

    fn check_against_exact_sort(values: &[f64]) {
        let mut d = ScoreDistribution::new();
        values.iter().for_each(|&v| d.add(v));
        let s = d.summary(40).unwrap();
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        assert_eq!(s.count, n);
        assert_eq!((s.min, s.max), (sorted[0], sorted[n - 1]));
        let mean = values.iter().sum::<f64>() / n as f64;
        assert!((s.mean - mean).abs() < 1e-9);
        for (p, v) in &s.quantiles.0 {
            // Rank error: the estimate sits between the exact values at p ± 1% of the rows.
            let q = *p as f64 / 100.0;
            let lo = sorted[((q - 0.01) * n as f64).floor().max(0.0) as usize];
            let hi = sorted[(((q + 0.01) * n as f64).ceil() as usize).min(n - 1)];
            assert!(lo <= *v && *v <= hi, "p{p}: {v} outside exact [{lo}, {hi}] (n = {n})");
        }
        assert_eq!(s.histogram.counts.iter().sum::<u64>(), n as u64, "every score in one bin");
        assert_eq!(s.histogram.edges.len(), s.histogram.counts.len() + 1);
        assert!(s.histogram.counts.len() <= 40);
        assert!(s.histogram.edges.windows(2).all(|w| w[0] < w[1]));
        assert!(s.histogram.edges[0] <= s.min && s.max <= *s.histogram.edges.last().unwrap());
        // Each bin's count is exact.
        for (i, c) in s.histogram.counts.iter().enumerate() {
            let (a, b) = (s.histogram.edges[i], s.histogram.edges[i + 1]);
            let last = i + 1 == s.histogram.counts.len();
            let exact = values.iter().filter(|&&v| v >= a && (v < b || (last && v <= b))).count() as u64;
            assert_eq!(*c, exact, "bin [{a}, {b})");
        }
    }

    #[test]
    fn quantiles_and_histogram_agree_with_an_exact_sort() {
        check_against_exact_sort(&scores(200)); // histogram from the sample alone
        check_against_exact_sort(&scores(50_000)); // streaming, with the range doubling
        let mut widening = scores(3000);
        widening.extend([-500.0, 900.0]); // far outside the first range, both sides
        check_against_exact_sort(&widening);
    }

    #[test]
    fn empty_and_constant_inputs() {
        assert!(ScoreDistribution::new().summary(10).is_none());
        let mut d = ScoreDistribution::new();
        (0..2000).for_each(|_| d.add(1.5));
        d.add(f64::NAN);
        let s = d.summary(10).unwrap();
        assert_eq!((s.count, s.min, s.max, s.quantiles.get(50)), (2000, 1.5, 1.5, Some(1.5)));
        assert_eq!(s.histogram.counts.iter().sum::<u64>(), 2000);
    }

    #[test]
    fn json_names_match_the_stats_file() {
        let mut d = ScoreDistribution::new();
        [1.0, 2.0, 3.0].into_iter().for_each(|v| d.add(v));
        let text = serde_json::to_string(&d.summary(4).unwrap()).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["score_mean"], 2.0);
        let order: Vec<usize> = QUANTILES.iter().map(|p| text.find(&format!("\"p{p}\":")).unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "quantiles in order p1 ... p99: {text}");
        assert!(json["score_histogram"]["edges"].is_array() && json["score_histogram"]["counts"].is_array());
    }
}
