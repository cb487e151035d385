//! A bounded list of messages for a result (`warnings`, `output_errors`): at
//! most [`MAX_NOTES`] kept, the rest counted and summed up in one last entry.

/// Messages kept per list; past it they are counted.
pub const MAX_NOTES: usize = 100;

/// Messages of one kind, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    kept: Vec<String>,
    omitted: u64,
}

impl Notes {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `note` (or counts it, past [`MAX_NOTES`]).
    pub fn push(&mut self, note: String) {
        if self.kept.len() < MAX_NOTES {
            self.kept.push(note);
        } else {
            self.omitted += 1;
        }
    }

    /// Adds `note` unless the same text is already kept.
    pub fn push_unique(&mut self, note: String) {
        if !self.kept.contains(&note) {
            self.push(note);
        }
    }

    /// Counts `n` messages that were not even formatted (a parser's own overflow).
    pub fn omit(&mut self, n: u64) {
        self.omitted = self.omitted.saturating_add(n);
    }

    /// Appends `other`'s messages (and its count of omitted ones).
    pub fn extend(&mut self, other: Notes) {
        for n in other.kept {
            self.push(n);
        }
        self.omit(other.omitted);
    }

    /// Messages kept plus omitted.
    pub fn total(&self) -> u64 {
        self.kept.len() as u64 + self.omitted
    }

    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Rewrites every kept message (e.g. to mask it).
    pub fn map(&mut self, f: impl Fn(&str) -> String) {
        for n in &mut self.kept {
            *n = f(n);
        }
    }

    /// The list for the result: the kept messages, then one that counts the rest.
    pub fn into_vec(mut self, what: &str) -> Vec<String> {
        if self.omitted > 0 {
            self.kept
                .push(format!("… and {} more {what} (not listed)", self.omitted));
        }
        self.kept
    }
}

impl From<Vec<String>> for Notes {
    fn from(v: Vec<String>) -> Self {
        let mut n = Notes::new();
        for s in v {
            n.push(s);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_max_and_counts_the_rest() {
        let mut n = Notes::new();
        for i in 0..1_000_000 {
            n.push(format!("error {i}"));
        }
        n.omit(5);
        assert_eq!(n.total(), 1_000_005);
        let v = n.into_vec("output errors");
        assert_eq!(v.len(), MAX_NOTES + 1);
        assert_eq!(v[MAX_NOTES], "… and 999905 more output errors (not listed)");
    }
}
