#![allow(dead_code)] // each bench binary uses its own part of this module
//! The one output format of every benchmark: figures, each beside the baseline measured in the
//! same run and the goal it is held to, plus raw series for plots. Each bench binary writes one
//! of these with `--json PATH`; `bench/report.py` merges them into `bench/results/latest.json`,
//! the Markdown table and the PNG plots.

use serde_json::{json, Value};
use std::path::Path;

/// What a figure is held to: its value (or its ratio to the baseline) compared with `target`.
#[derive(Clone, Copy)]
pub enum Goal {
    /// value / baseline ≤ target
    RatioAtMost(f64),
    /// value / baseline ≥ target
    RatioAtLeast(f64),
    /// value ≤ target
    AtMost(f64),
    /// value ≥ target
    AtLeast(f64),
    /// Reported, not held to a goal.
    None,
}

pub struct Figure {
    pub id: String,
    pub what: String,
    pub unit: &'static str,
    pub value: f64,
    pub baseline: Option<(String, f64)>,
    /// Why a figure stands without a baseline (every figure has one or the other).
    pub no_baseline: Option<String>,
    pub goal: Goal,
}

impl Figure {
    pub fn new(id: impl Into<String>, what: impl Into<String>, unit: &'static str, value: f64) -> Figure {
        Figure { id: id.into(), what: what.into(), unit, value, baseline: None, no_baseline: None, goal: Goal::None }
    }

    pub fn against(mut self, baseline_what: impl Into<String>, baseline: f64) -> Figure {
        self.baseline = Some((baseline_what.into(), baseline));
        self
    }

    pub fn no_baseline(mut self, why: impl Into<String>) -> Figure {
        self.no_baseline = Some(why.into());
        self
    }

    pub fn goal(mut self, goal: Goal) -> Figure {
        self.goal = goal;
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b).filter(|r| r.is_finite())
    }

    fn to_json(&self) -> Value {
        let ratio = self.ratio();
        let (goal_text, met) = match self.goal {
            Goal::RatioAtMost(t) => (format!("≤ {t}× baseline"), ratio.map(|r| r <= t)),
            Goal::RatioAtLeast(t) => (format!("≥ {t}× baseline"), ratio.map(|r| r >= t)),
            Goal::AtMost(t) => (format!("≤ {t} {}", self.unit), Some(self.value <= t)),
            Goal::AtLeast(t) => (format!("≥ {t} {}", self.unit), Some(self.value >= t)),
            Goal::None => (String::new(), None),
        };
        json!({
            "id": self.id,
            "what": self.what,
            "unit": self.unit,
            "value": finite(self.value),
            "baseline": self.baseline.as_ref().map(|(what, v)| json!({"what": what, "value": finite(*v)})),
            "no_baseline": self.no_baseline,
            "ratio": ratio,
            "goal": goal_text,
            "met": met,
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// One benchmark's output: its figures and named series (e.g. latency samples for a CDF).
#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    pub series: serde_json::Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn push(&mut self, f: Figure) {
        self.figures.push(f);
    }

    pub fn series(&mut self, name: &str, values: Value) {
        self.series.insert(name.to_string(), values);
    }

    /// Writes the report to `path` (when given) and prints its figures.
    pub fn finish(&self, bench: &str, path: Option<&Path>) -> anyhow::Result<()> {
        if let Some(f) = self.figures.iter().find(|f| f.baseline.is_none() && f.no_baseline.is_none()) {
            anyhow::bail!("figure {} has neither a baseline nor a reason for none", f.id);
        }
        for f in &self.figures {
            let base = f.baseline.as_ref().map(|(w, b)| format!(" | {w}: {b:.4}")).unwrap_or_default();
            let ratio = f.ratio().map(|r| format!(" | {r:.2}×")).unwrap_or_default();
            println!("{:<16} {:<58} {:>12.4} {}{base}{ratio}", f.id, f.what, f.value, f.unit);
        }
        if let Some(path) = path {
            let doc = json!({
                "bench": bench,
                // bench/run gives every part of one run the same id; report.py refuses to mix runs.
                "run": std::env::var("BENCH_RUN").ok(),
                "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
                "series": self.series,
                "notes": self.notes,
            });
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        }
        Ok(())
    }
}

/// The p-th quantile (nearest rank) of `v`; NaN when empty.
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}
