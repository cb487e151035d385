//! What the worker's error types share: an error printed with every cause in
//! its chain (each module's own thiserror enum names its step; its `#[source]`
//! keeps the cause).

use std::error::Error;
use std::fmt::Write as _;

/// `error: cause: cause of the cause …`, as one line for logs and results.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // `#[error(transparent)]` and `{0}`-style messages repeat their cause.
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("starting the thing")]
        Start(#[source] std::io::Error),
        #[error(transparent)]
        Same(std::io::Error),
    }

    #[test]
    fn every_cause_once() {
        let e = Outer::Start(std::io::Error::other("no such file"));
        assert_eq!(chain(&e), "starting the thing: no such file");
        let e = Outer::Same(std::io::Error::other("no such file"));
        assert_eq!(chain(&e), "no such file");
    }
}
