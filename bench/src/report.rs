//! The result of a run: rows (Krill beside an alternative, with the ratio),
//! goals (met or not, with the figures), notes; printed as markdown and JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// One measured figure.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: Unit,
}

/// How a figure reads and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// Per second (higher is better).
    PerSec,
    /// Milliseconds (lower is better).
    Ms,
    /// MiB per second (higher is better).
    MibPerSec,
    /// MiB of memory (lower is better).
    Mib,
}

impl Figure {
    pub fn per_sec(value: f64) -> Self {
        Figure {
            value,
            unit: Unit::PerSec,
        }
    }
    pub fn ms(value: f64) -> Self {
        Figure {
            value,
            unit: Unit::Ms,
        }
    }
    pub fn mib_s(value: f64) -> Self {
        Figure {
            value,
            unit: Unit::MibPerSec,
        }
    }
    pub fn mib(value: f64) -> Self {
        Figure {
            value,
            unit: Unit::Mib,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.value;
        match self.unit {
            Unit::PerSec if v >= 100.0 => write!(f, "{}/s", thousands(v.round() as u64)),
            Unit::PerSec => write!(f, "{v:.1}/s"),
            Unit::Ms if v >= 100.0 => write!(f, "{v:.0} ms"),
            Unit::Ms if v >= 10.0 => write!(f, "{v:.1} ms"),
            Unit::Ms => write!(f, "{v:.2} ms"),
            Unit::MibPerSec => write!(f, "{v:.0} MiB/s"),
            Unit::Mib => write!(f, "{v:.1} MiB"),
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Krill's figure beside one alternative's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub scenario: String,
    pub measure: String,
    pub krill: Option<Figure>,
    pub alternative: String,
    pub alt: Option<Figure>,
}

impl Row {
    /// Krill / alternative for rates, alternative / Krill for times: above 1 means Krill is better.
    pub fn advantage(&self) -> Option<f64> {
        let (k, a) = (self.krill?, self.alt?);
        if k.value <= 0.0 || a.value <= 0.0 {
            return None;
        }
        Some(match k.unit {
            Unit::PerSec | Unit::MibPerSec => k.value / a.value,
            Unit::Ms | Unit::Mib => a.value / k.value,
        })
    }
}

/// A goal of the issue and whether this run met it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    pub goal: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
    pub detail: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub started_at: String,
    pub command: String,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub git: String,
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a row (a missing figure prints as `n/a`).
    pub fn row(
        &mut self,
        scenario: &str,
        measure: &str,
        krill: Option<Figure>,
        alternative: &str,
        alt: Option<Figure>,
    ) {
        let row = Row {
            scenario: scenario.into(),
            measure: measure.into(),
            krill,
            alternative: alternative.into(),
            alt,
        };
        println!("{}", row_line(&row));
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    pub fn goal(&mut self, goal: &str, met: Option<bool>, detail: impl Into<String>) {
        self.goals.push(Goal {
            goal: goal.into(),
            met,
            detail: detail.into(),
        });
    }

    /// The table, the goals and the notes, as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Run {} on {}; load average before {}, after {}; {}.\n",
            self.started_at, self.machine, self.load_before, self.load_after, self.git
        );
        let _ = writeln!(s, "Reproduce: `{}`\n", self.command);
        s.push_str("| # | measure | Krill | alternative | alternative's | Krill's advantage |\n");
        s.push_str("|---|---|---:|---|---:|---:|\n");
        for r in &self.rows {
            let _ = writeln!(s, "{}", row_line(r));
        }
        s.push_str("\nKrill's advantage: Krill ÷ alternative for rates, alternative ÷ Krill for times and memory (above 1× = Krill better).\n");
        if !self.goals.is_empty() {
            s.push_str("\n| goal | met | figures |\n|---|---|---|\n");
            for g in &self.goals {
                let met = match g.met {
                    Some(true) => "**met**",
                    Some(false) => "**not met**",
                    None => "not measured",
                };
                let _ = writeln!(s, "| {} | {} | {} |", g.goal, met, g.detail);
            }
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

fn show(f: Option<Figure>) -> String {
    f.map_or_else(|| "n/a".to_string(), |f| f.to_string())
}

fn row_line(r: &Row) -> String {
    let adv = r
        .advantage()
        .map_or_else(|| "n/a".to_string(), |a| format!("{a:.2}×"));
    format!(
        "| {} | {} | {} | {} | {} | {} |",
        r.scenario,
        r.measure,
        show(r.krill),
        r.alternative,
        show(r.alt),
        adv
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(Figure::per_sec(12345.4).to_string(), "12,345/s");
        assert_eq!(Figure::per_sec(7.25).to_string(), "7.2/s");
        assert_eq!(Figure::ms(1.234).to_string(), "1.23 ms");
        assert_eq!(Figure::ms(221.0).to_string(), "221 ms");
    }

    #[test]
    fn advantage_is_above_one_when_krill_is_better() {
        let mut r = Report::default();
        r.row(
            "1",
            "x",
            Some(Figure::per_sec(200.0)),
            "y",
            Some(Figure::per_sec(100.0)),
        );
        r.row("2", "x", Some(Figure::ms(1.0)), "y", Some(Figure::ms(4.0)));
        assert_eq!(r.rows[0].advantage(), Some(2.0));
        assert_eq!(r.rows[1].advantage(), Some(4.0));
        assert!(r.markdown().contains("| 2.00× |"));
    }
}
