//! P1 round by round: each round's Converge ramp against the fastest baseline of that round.

use crate::report::quantile as pct;

/// Each baseline's label and its samples, in the order they ran.
pub type Baselines = Vec<(&'static str, Vec<f64>)>;

/// The strongest baseline: the one with the lowest median.
pub fn fastest(baselines: &Baselines) -> Option<&(&'static str, Vec<f64>)> {
    baselines.iter().min_by(|x, y| pct(&x.1, 0.5).total_cmp(&pct(&y.1, 0.5)))
}

/// One round of P1 at one scale: Converge's p50 and p95 against the fastest baseline of the same
/// round, which ran right before or after it; the spread of these ratios is the run's noise.
pub struct RoundRatio {
    tag: String,
    converge: (f64, f64),
    best: Option<(&'static str, f64, f64)>,
    converge_last: bool,
    steal: f64,
}

impl RoundRatio {
    pub fn of(tag: &str, converge: &[f64], these: &Baselines, converge_last: bool, steal: f64) -> Self {
        let best = fastest(these).map(|(label, t)| (*label, pct(t, 0.5), pct(t, 0.95)));
        RoundRatio {
            tag: tag.to_string(),
            converge: (pct(converge, 0.5), pct(converge, 0.95)),
            best,
            converge_last,
            steal,
        }
    }

    pub fn describe(&self) -> String {
        let order = if self.converge_last { "baselines first" } else { "Converge first" };
        let (c50, c95) = self.converge;
        match self.best {
            Some((label, b50, b95)) => format!(
                "{} ({order}): p50 {c50:.2}/{b50:.2} s = {:.2}×, p95 {c95:.2}/{b95:.2} s = {:.2}× ({label}), steal {:.1} s",
                self.tag,
                c50 / b50,
                c95 / b95,
                self.steal
            ),
            None => format!("{} : p50 {c50:.2} s, p95 {c95:.2} s, steal {:.1} s", self.tag, self.steal),
        }
    }
}
