//! Scores of classifier answers against gold labels, each with a 95%
//! interval: Wilson's for the proportions, a percentile bootstrap (fixed
//! seed, so a rerun prints the same numbers) for everything else.
//!
//! An answer that could not be read (a parse failure or an answer cut off
//! by the token limit) stays in every count: it is neither a violation nor
//! safe, so it is a miss on a violating example and a false alarm on none.
//! In the confusion matrix it is a third column; accuracy, recall and
//! specificity count it as wrong, and MCC and kappa take it as a third
//! predicted class that is never right. Ranking and calibration metrics
//! use the examples with a probability of a violation.
//!
//! An escalated answer (the policy's "a person should decide") is read but
//! is neither label either: its own column, never folded into 0 or 1. It
//! counts as not caught on a violating example and not cleared on a safe
//! one, and MCC and kappa take it as a fourth predicted class.

use serde::{Deserialize, Serialize};

/// What the classifier said about one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Safe,
    Violates,
    /// An answer whose label could not be read.
    ParseFailure,
    /// The token limit ended generation before an answer.
    CutOff,
    /// An answer the policy declares as escalate.
    Escalate,
}

impl Answer {
    fn label(self) -> Option<bool> {
        match self {
            Answer::Safe => Some(false),
            Answer::Violates => Some(true),
            Answer::ParseFailure | Answer::CutOff | Answer::Escalate => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub gold: bool,
    pub answer: Answer,
    /// The model's probability that the example violates, when it gave one.
    pub p_violation: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Report the highest threshold whose recall reaches this.
    pub target_recall: Option<f64>,
    pub resamples: usize,
    pub seed: u64,
    /// Equal-width bins of P(violation) for calibration.
    pub bins: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target_recall: None,
            resamples: 1000,
            seed: 0x5afe_6a4d,
            bins: 10,
        }
    }
}

/// A value and its 95% interval; None where the data do not define it
/// (precision with nothing flagged, AUC with one class, …).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// Gold labels against answers, in examples. `*_unread` are answers that
/// could not be read, `*_escalated` answers that escalated, split by the
/// gold label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    #[serde(rename = "fn")]
    pub fn_: u64,
    pub violating_unread: u64,
    pub safe_unread: u64,
    // Absent from runs written before escalation existed.
    #[serde(default)]
    pub violating_escalated: u64,
    #[serde(default)]
    pub safe_escalated: u64,
}

impl Confusion {
    fn add(&mut self, s: &Scored, weight: u64) {
        let cell = match (s.gold, s.answer.label()) {
            _ if s.answer == Answer::Escalate && s.gold => &mut self.violating_escalated,
            _ if s.answer == Answer::Escalate => &mut self.safe_escalated,
            (true, Some(true)) => &mut self.tp,
            (false, Some(true)) => &mut self.fp,
            (false, Some(false)) => &mut self.tn,
            (true, Some(false)) => &mut self.fn_,
            (true, None) => &mut self.violating_unread,
            (false, None) => &mut self.safe_unread,
        };
        *cell += weight;
    }

    pub fn n(&self) -> u64 {
        self.positives() + self.negatives()
    }

    pub fn positives(&self) -> u64 {
        self.tp + self.fn_ + self.violating_unread + self.violating_escalated
    }

    pub fn negatives(&self) -> u64 {
        self.tn + self.fp + self.safe_unread + self.safe_escalated
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Examples with P(violation) ≥ this are flagged.
    pub threshold: f64,
    pub precision: f64,
    pub recall: Option<f64>,
    pub fpr: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Operating {
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    /// P(violation) in (low, high]; the first bin includes 0.
    pub low: f64,
    pub high: f64,
    pub count: u64,
    pub mean_p: Option<f64>,
    /// The share of the bin's examples that violate.
    pub violating: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: u64,
    pub parse_failures: u64,
    pub cut_off: u64,
    #[serde(default)]
    pub escalated: u64,
    pub confusion: Confusion,
    pub accuracy: Estimate,
    pub precision: Estimate,
    pub recall: Estimate,
    pub f1: Estimate,
    pub specificity: Estimate,
    pub balanced_accuracy: Estimate,
    pub mcc: Estimate,
    pub kappa: Estimate,
    /// Examples with a probability, which the metrics below use.
    pub scored: u64,
    pub unscored: u64,
    pub roc_auc: Estimate,
    pub average_precision: Estimate,
    pub brier: Estimate,
    pub ece: Estimate,
    /// One point per distinct P(violation), highest first.
    pub curve: Vec<CurvePoint>,
    pub best_f1: Option<Operating>,
    pub target_recall: Option<f64>,
    pub at_target_recall: Option<Operating>,
    pub reliability: Vec<Bin>,
}

/// Scores `items` (gold label, answer and probability of each example).
pub fn score(items: &[Scored], options: &Options) -> Metrics {
    // Ranking metrics walk the examples by falling P(violation); sorting once
    // lets every bootstrap resample reuse the order with its own weights.
    let mut order: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].p_violation.is_some())
        .collect();
    order.sort_by(|&a, &b| p(&items[b]).total_cmp(&p(&items[a])));
    let ones = vec![1u64; items.len()];
    let point = Point::of(items, &order, &ones, options.bins);
    let ranking = Ranking::of(items, &order, &ones);
    let boot = bootstrap(items, &order, options);
    let c = point.confusion;
    let wilson = |k: u64, n: u64| {
        let value = (n > 0).then(|| k as f64 / n as f64);
        let (low, high) = wilson(k, n).map_or((None, None), |(l, h)| (Some(l), Some(h)));
        Estimate { value, low, high }
    };
    let booted = |value: Option<f64>, pick: fn(&Point) -> Option<f64>| {
        let (low, high) = percentile_interval(boot.iter().filter_map(pick).collect());
        Estimate { value, low, high }
    };
    let best_f1 = ranking.operating_points().max_by(|a, b| {
        // Equal F1: prefer the higher threshold, which flags fewer examples.
        a.f1.total_cmp(&b.f1).then(a.threshold.total_cmp(&b.threshold))
    });
    let at_target_recall = options
        .target_recall
        .and_then(|target| ranking.operating_points().find(|o| o.recall >= target));
    Metrics {
        n: c.n(),
        parse_failures: items.iter().filter(|s| s.answer == Answer::ParseFailure).count() as u64,
        cut_off: items.iter().filter(|s| s.answer == Answer::CutOff).count() as u64,
        escalated: items.iter().filter(|s| s.answer == Answer::Escalate).count() as u64,
        confusion: c,
        accuracy: wilson(c.tp + c.tn, c.n()),
        precision: wilson(c.tp, c.tp + c.fp),
        recall: wilson(c.tp, c.positives()),
        specificity: wilson(c.tn, c.negatives()),
        f1: booted(point.f1, |p| p.f1),
        balanced_accuracy: booted(point.balanced_accuracy, |p| p.balanced_accuracy),
        mcc: booted(point.mcc, |p| p.mcc),
        kappa: booted(point.kappa, |p| p.kappa),
        scored: order.len() as u64,
        unscored: (items.len() - order.len()) as u64,
        roc_auc: booted(point.roc_auc, |p| p.roc_auc),
        average_precision: booted(point.average_precision, |p| p.average_precision),
        brier: booted(point.brier, |p| p.brier),
        ece: booted(point.ece, |p| p.ece),
        curve: ranking.curve,
        best_f1,
        target_recall: options.target_recall,
        at_target_recall,
        reliability: point.bins,
    }
}

fn p(s: &Scored) -> f64 {
    s.p_violation.unwrap_or(f64::NAN)
}

/// Every metric that has a bootstrap interval, for one weighting of the
/// examples (all ones: the data as they are; multiplicities: a resample).
struct Point {
    confusion: Confusion,
    f1: Option<f64>,
    balanced_accuracy: Option<f64>,
    mcc: Option<f64>,
    kappa: Option<f64>,
    roc_auc: Option<f64>,
    average_precision: Option<f64>,
    brier: Option<f64>,
    ece: Option<f64>,
    bins: Vec<Bin>,
}

impl Point {
    fn of(items: &[Scored], order: &[usize], weights: &[u64], bins: usize) -> Point {
        let mut c = Confusion::default();
        for (s, &w) in items.iter().zip(weights) {
            c.add(s, w);
        }
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let recall = ratio(c.tp, c.positives());
        let specificity = ratio(c.tn, c.negatives());
        let (auc, ap) = ranks(items, order, weights);
        let (brier, ece, bins) = calibration(items, order, weights, bins);
        Point {
            f1: ratio(
                2 * c.tp,
                2 * c.tp + c.fp + c.fn_ + c.violating_unread + c.violating_escalated,
            ),
            balanced_accuracy: recall.zip(specificity).map(|(r, s)| (r + s) / 2.0),
            mcc: mcc(&c),
            kappa: kappa(&c),
            roc_auc: auc,
            average_precision: ap,
            brier,
            ece,
            bins,
            confusion: c,
        }
    }
}

/// The 2×4 confusion matrix as rows gold (violates, safe) and columns
/// answer (violates, safe, unread, escalated), in floats for the products below.
fn table(c: &Confusion) -> [[f64; 4]; 2] {
    [
        [
            c.tp as f64,
            c.fn_ as f64,
            c.violating_unread as f64,
            c.violating_escalated as f64,
        ],
        [
            c.fp as f64,
            c.tn as f64,
            c.safe_unread as f64,
            c.safe_escalated as f64,
        ],
    ]
}

/// Matthews' correlation for K classes (Gorodkin's form), K = 4 here.
fn mcc(c: &Confusion) -> Option<f64> {
    let t = table(c);
    let s = c.n() as f64;
    let correct = t[0][0] + t[1][1];
    let gold = [t[0].iter().sum::<f64>(), t[1].iter().sum::<f64>()];
    let said: [f64; 4] = std::array::from_fn(|k| t[0][k] + t[1][k]);
    let agree = gold[0] * said[0] + gold[1] * said[1];
    let denominator =
        (s * s - gold.iter().map(|g| g * g).sum::<f64>()) * (s * s - said.iter().map(|p| p * p).sum::<f64>());
    (denominator > 0.0).then(|| (correct * s - agree) / denominator.sqrt())
}

/// Cohen's kappa: agreement beyond what the two marginals give by chance.
fn kappa(c: &Confusion) -> Option<f64> {
    let t = table(c);
    let s = c.n() as f64;
    if s == 0.0 {
        return None;
    }
    let observed = (t[0][0] + t[1][1]) / s;
    let gold = [t[0].iter().sum::<f64>(), t[1].iter().sum::<f64>()];
    let said = [t[0][0] + t[1][0], t[0][1] + t[1][1]];
    let chance = (gold[0] * said[0] + gold[1] * said[1]) / (s * s);
    (chance < 1.0).then(|| (observed - chance) / (1.0 - chance))
}

/// Runs of equal P(violation) in `order`, highest first, as (p, weighted
/// violating, weighted safe); runs a resample left empty are skipped.
fn runs<'a>(
    items: &'a [Scored],
    order: &'a [usize],
    weights: &'a [u64],
) -> impl Iterator<Item = (f64, u64, u64)> + 'a {
    order
        .chunk_by(move |&a, &b| p(&items[a]) == p(&items[b]))
        .map(move |run| {
            let (mut pos, mut neg) = (0, 0);
            for &i in run {
                if items[i].gold {
                    pos += weights[i];
                } else {
                    neg += weights[i];
                }
            }
            (p(&items[run[0]]), pos, neg)
        })
        .filter(|&(_, pos, neg)| pos + neg > 0)
}

/// ROC AUC (ties count half, as the trapezoidal curve does) and average
/// precision (precision at each threshold times the recall it adds).
fn ranks(items: &[Scored], order: &[usize], weights: &[u64]) -> (Option<f64>, Option<f64>) {
    let (pos, neg): (u64, u64) = runs(items, order, weights).fold((0, 0), |(a, b), (_, p, n)| (a + p, b + n));
    let (mut above, mut flagged, mut pairs, mut ap) = (0u64, 0u64, 0.0, 0.0);
    for (_, p, n) in runs(items, order, weights) {
        pairs += n as f64 * (above as f64 + p as f64 / 2.0);
        above += p;
        flagged += p + n;
        if pos > 0 {
            ap += (p as f64 / pos as f64) * (above as f64 / flagged as f64);
        }
    }
    let auc = (pos > 0 && neg > 0).then(|| pairs / (pos as f64 * neg as f64));
    (auc, (pos > 0).then_some(ap))
}

/// Brier score, expected calibration error and the reliability bins.
fn calibration(
    items: &[Scored],
    order: &[usize],
    weights: &[u64],
    bins: usize,
) -> (Option<f64>, Option<f64>, Vec<Bin>) {
    let step = 1.0 / bins as f64;
    // Edges as numpy's linspace(0, 1, bins + 1) makes them.
    let edge = |i: usize| if i == bins { 1.0 } else { i as f64 * step };
    let mut sums = vec![(0u64, 0.0f64, 0u64); bins];
    let (mut total, mut squared) = (0u64, 0.0);
    for &i in order {
        let (w, p, y) = (weights[i], p(&items[i]), items[i].gold);
        // (low, high], the first bin closed at 0.
        let bin = (1..bins).filter(|&k| edge(k) < p).count();
        let entry = &mut sums[bin];
        entry.0 += w;
        entry.1 += w as f64 * p;
        entry.2 += if y { w } else { 0 };
        total += w;
        squared += w as f64 * (p - f64::from(u8::from(y))).powi(2);
    }
    if total == 0 {
        return (None, None, Vec::new());
    }
    let mut ece = 0.0;
    let mut out = Vec::with_capacity(bins);
    for (k, &(count, p_sum, violating)) in sums.iter().enumerate() {
        let mean = (count > 0).then(|| p_sum / count as f64);
        let share = (count > 0).then(|| violating as f64 / count as f64);
        if count > 0 {
            ece += (violating as f64 - p_sum).abs();
        }
        out.push(Bin {
            low: edge(k),
            high: edge(k + 1),
            count,
            mean_p: mean,
            violating: share,
        });
    }
    (Some(squared / total as f64), Some(ece / total as f64), out)
}

/// The precision–recall and ROC curves over the examples with a probability.
struct Ranking {
    curve: Vec<CurvePoint>,
}

impl Ranking {
    fn of(items: &[Scored], order: &[usize], weights: &[u64]) -> Ranking {
        let (pos, neg): (u64, u64) =
            runs(items, order, weights).fold((0, 0), |(a, b), (_, p, n)| (a + p, b + n));
        let (mut tp, mut fp) = (0u64, 0u64);
        let curve = runs(items, order, weights)
            .map(|(threshold, p, n)| {
                tp += p;
                fp += n;
                CurvePoint {
                    threshold,
                    precision: tp as f64 / (tp + fp) as f64,
                    recall: (pos > 0).then(|| tp as f64 / pos as f64),
                    fpr: (neg > 0).then(|| fp as f64 / neg as f64),
                }
            })
            .collect();
        Ranking { curve }
    }

    /// The curve's thresholds, highest first, where recall is defined.
    fn operating_points(&self) -> impl Iterator<Item = Operating> + '_ {
        self.curve.iter().filter_map(|c| {
            let recall = c.recall?;
            let sum = c.precision + recall;
            Some(Operating {
                threshold: c.threshold,
                precision: c.precision,
                recall,
                f1: if sum > 0.0 {
                    2.0 * c.precision * recall / sum
                } else {
                    0.0
                },
            })
        })
    }
}

/// z for a two-sided 95% interval.
const Z: f64 = 1.959_963_984_540_054;

/// Wilson's score interval for k successes in n trials.
pub fn wilson(k: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k as f64, n as f64);
    let z2 = Z * Z;
    let centre = (k + z2 / 2.0) / (n + z2);
    let half = Z / (n + z2) * (k * (n - k) / n + z2 / 4.0).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// SplitMix64 (Steele, Lea and Flood): small, fast, and simple enough that
/// the test reference implements the same stream.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (Lemire's multiply-shift, bias below 2^-40 for any n we see).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// Metrics of `options.resamples` resamples of the examples (drawn with
/// replacement, as many as there are examples).
fn bootstrap(items: &[Scored], order: &[usize], options: &Options) -> Vec<Point> {
    if items.is_empty() {
        return Vec::new();
    }
    let mut rng = SplitMix(options.seed);
    let mut weights = vec![0u64; items.len()];
    (0..options.resamples)
        .map(|_| {
            weights.fill(0);
            for _ in 0..items.len() {
                weights[rng.below(items.len())] += 1;
            }
            Point::of(items, order, &weights, options.bins)
        })
        .collect()
}

/// The 2.5th and 97.5th percentiles. Resamples where a metric is undefined
/// (one class drawn, say) are left out.
fn percentile_interval(mut values: Vec<f64>) -> (Option<f64>, Option<f64>) {
    values.sort_by(f64::total_cmp);
    (percentile(&values, 0.025), percentile(&values, 0.975))
}

/// The `q` quantile of sorted values, interpolated linearly between order
/// statistics (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let t = position - below as f64;
    Some(sorted[below] + (sorted[above] - sorted[below]) * t)
}
