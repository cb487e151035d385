//! A result's size budget: every result leaves the worker as JSON of at most a
//! set number of bytes, whatever the task printed, so the broker never refuses
//! it for its size.
//!
//! The budget is counted in *serialized* bytes (JSON escaping included: a NUL
//! becomes the six bytes `\u0000`), computed field by field without
//! serializing the big ones. When a result is over it, what matters least goes
//! first, in this order:
//!
//! 1. `warnings`, from the last (the budget's own warning is added after);
//! 2. `output_errors`, from the last;
//! 3. `stdout` and `stderr`, from their ends, sharing what is left fairly: a
//!    stream that needs less than half keeps all of it, the other gets the
//!    rest; both are cut on a character boundary;
//! 4. output values, the largest first (plain ones before sensitive ones),
//!    each dropped whole;
//! 5. `error`, cut to [`MAX_ERROR_BYTES`].
//!
//! Whatever was cut sets `truncated` and is described in one warning
//! ([`fit`]'s return value is that warning). A result whose fixed part alone
//! is over the budget cannot be fitted; the caller sends [`small`] instead.

use broker::protocol::{OutputVar, Status, TaskResult};

/// Room kept for the budget's own warning.
const WARNING_ROOM: usize = 1024;
/// Longest `error` kept when the fixed part of a result is over the budget.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest worker or sandbox id a small result keeps.
const SMALL_FIELD: usize = 256;
/// Output names listed in the warning, at most.
const NAMES_LISTED: usize = 10;

/// Bytes `s` takes as a JSON string, quotes included (serde_json's escaping:
/// `"`, `\` and the C0 controls; `\b \t \n \f \r` in two bytes, the others in six).
pub fn json_str_len(s: &str) -> usize {
    // Summed in 16-bit lanes per 8 KiB (at most 5 × 8192 fits): the compiler
    // makes vector compares of it, about 4× the byte-wise `match` (10.6
    // against 41 ms for 48 MiB of log lines; issue 19: it showed in the
    // worker's profile of the output path as `big_len`).
    let extra: usize = s
        .as_bytes()
        .chunks(8192)
        .map(|c| usize::from(c.iter().map(|&b| escape_extra(b)).sum::<u16>()))
        .sum();
    2 + s.len() + extra
}

/// What escaping adds to byte `b` (0, 1 or 5), without branches.
#[inline]
fn escape_extra(b: u8) -> u16 {
    let control = u16::from(b < 0x20);
    let short = u16::from(matches!(b, b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r'));
    let quote = u16::from(b == b'"' || b == b'\\');
    control * (5 - 4 * short) + quote
}

fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// The longest prefix of `s`, on a character boundary, whose JSON string
/// content (without quotes) takes at most `max` bytes.
fn prefix_within(s: &str, max: usize) -> usize {
    // Escaping is per byte (every byte of a multi-byte character takes one),
    // so the cut is found on bytes, then moved back to a character boundary.
    let mut used = 0;
    for (i, b) in s.bytes().enumerate() {
        used += escaped_len(b);
        if used > max {
            let mut cut = i;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            return cut;
        }
    }
    s.len()
}

/// Bytes one output variable takes in the `outputs` array (without the comma):
/// serialized, so that every field counts (a sealed value's ciphertext too).
/// Output values are small (two files of at most 1 MiB each).
fn var_len(o: &OutputVar) -> usize {
    serde_json::to_vec(o).map_or(usize::MAX / 4, |v| v.len())
}

/// Bytes a list field adds once it is not empty: `,"key":[a,b]`.
fn list_len(key: &str, items: &[String]) -> usize {
    if items.is_empty() {
        return 0;
    }
    4 + key.len() + 2 + items.iter().map(|s| json_str_len(s)).sum::<usize>() + items.len() - 1
}

/// What `r` takes as JSON, counted without serializing its big fields.
pub fn serialized_len(r: &mut TaskResult) -> usize {
    fixed_len(r) + big_len(r)
}

/// The result without its big fields, serialized (small): every other field
/// counts, whatever it is (a field added later included).
fn fixed_len(r: &mut TaskResult) -> usize {
    let big = (
        std::mem::take(&mut r.stdout),
        std::mem::take(&mut r.stderr),
        std::mem::take(&mut r.outputs),
        std::mem::take(&mut r.output_errors),
        std::mem::take(&mut r.warnings),
    );
    let n = serde_json::to_vec(&*r).map_or(usize::MAX / 2, |v| v.len());
    (r.stdout, r.stderr, r.outputs, r.output_errors, r.warnings) = big;
    n
}

/// What stdout, stderr, outputs, output_errors and warnings add to the fixed part.
fn big_len(r: &TaskResult) -> usize {
    let outputs: usize =
        r.outputs.iter().map(var_len).sum::<usize>() + r.outputs.len().saturating_sub(1);
    (json_str_len(&r.stdout) - 2)
        + (json_str_len(&r.stderr) - 2)
        + outputs
        + list_len("output_errors", &r.output_errors)
        + list_len("warnings", &r.warnings)
}

/// Cuts `r` to at most `budget` serialized bytes in the order of the module
/// doc. Returns the warning saying what was cut (already added to
/// `r.warnings`), `None` when nothing was. `Err` when even the fixed part
/// (ids, error, timings …) does not fit: send [`small`] instead.
pub fn fit(r: &mut TaskResult, budget: usize) -> Result<Option<String>, usize> {
    let total = serialized_len(r);
    if total <= budget {
        return Ok(None);
    }
    let lens = (r.stdout.len(), r.stderr.len());
    fit_over(r, budget, total, lens)
}

/// [`fit`] on a copy of `r`, made without copying what the budget would cut
/// (a 48 MiB stdout is not copied to keep 1 MiB of it): `None` when `r`
/// fits as it is. The copy, its `warnings` and its figures are what [`fit`]
/// on a whole clone would give.
pub fn fit_copy(r: &TaskResult, budget: usize) -> Result<Option<TaskResult>, usize> {
    let mut copy = without_streams(r);
    let total = fixed_len(&mut copy) + big_len(r);
    if total <= budget {
        return Ok(None);
    }
    // Each stream as far as it could fit at all. Every length beyond the
    // budget is over each share `fit_over` compares it with, so it decides
    // and cuts as it would on the whole stream.
    copy.stdout = r.stdout[..prefix_within(&r.stdout, budget)].to_owned();
    copy.stderr = r.stderr[..prefix_within(&r.stderr, budget)].to_owned();
    fit_over(&mut copy, budget, total, (r.stdout.len(), r.stderr.len()))?;
    Ok(Some(copy))
}

/// `r` without its stdout and stderr; every other field cloned.
fn without_streams(r: &TaskResult) -> TaskResult {
    // Every field named (no `..`): a field added to results is copied here too.
    let TaskResult {
        version,
        id,
        status,
        exit_code,
        signal,
        stdout: _,
        stderr: _,
        truncated,
        lossy,
        outputs,
        output_errors,
        warnings,
        error,
        worker,
        sandbox,
        sandbox_id,
        submitter,
        attempt,
        limits,
        landlock,
        network,
        timings,
        usage,
        waited_on,
    } = r;
    TaskResult {
        version: *version,
        id: id.clone(),
        status: *status,
        exit_code: *exit_code,
        signal: *signal,
        stdout: String::new(),
        stderr: String::new(),
        truncated: *truncated,
        lossy: *lossy,
        outputs: outputs.clone(),
        output_errors: output_errors.clone(),
        warnings: warnings.clone(),
        error: error.clone(),
        worker: worker.clone(),
        sandbox: *sandbox,
        sandbox_id: sandbox_id.clone(),
        submitter: submitter.clone(),
        attempt: *attempt,
        limits: *limits,
        landlock: *landlock,
        network: network.clone(),
        timings: timings.clone(),
        usage: usage.clone(),
        waited_on: waited_on.clone(),
    }
}

/// [`fit`] once `r` is known to be over: `total` is what the result takes
/// whole and `lens` the byte lengths of its whole stdout and stderr, for the
/// warning (`r`'s own streams may already be cut to the budget).
fn fit_over(
    r: &mut TaskResult,
    budget: usize,
    total: usize,
    lens: (usize, usize),
) -> Result<Option<String>, usize> {
    let mut fixed = fixed_len(r);
    let mut cut = Vec::new();
    if fixed + WARNING_ROOM > budget {
        if let Some(e) = &mut r.error {
            if e.len() > MAX_ERROR_BYTES {
                e.truncate(prefix_within(e, MAX_ERROR_BYTES));
                cut.push("the error message".to_string());
                fixed = fixed_len(r);
            }
        }
        if fixed + WARNING_ROOM > budget {
            return Err(total);
        }
    }
    let room = budget - fixed - WARNING_ROOM;
    let warnings_before = r.warnings.len();
    let errors_before = r.output_errors.len();
    // Sizes computed once; the lists are updated as entries go.
    let (out_len, err_len) = (json_str_len(&r.stdout) - 2, json_str_len(&r.stderr) - 2);
    let outputs: usize =
        r.outputs.iter().map(var_len).sum::<usize>() + r.outputs.len().saturating_sub(1);
    let mut lists = list_len("output_errors", &r.output_errors) + list_len("warnings", &r.warnings);
    // 1 and 2: the lists, from the last entry, while over.
    for key in ["warnings", "output_errors"] {
        let list = if key == "warnings" {
            &mut r.warnings
        } else {
            &mut r.output_errors
        };
        while out_len + err_len + outputs + lists > room && !list.is_empty() {
            let before = list_len(key, list);
            let gone = list.pop().map_or(0, |e| json_str_len(&e));
            lists -= if list.is_empty() { before } else { gone + 1 };
        }
    }
    if r.warnings.len() < warnings_before {
        cut.push(format!(
            "{} of {warnings_before} warnings",
            warnings_before - r.warnings.len()
        ));
    }
    if r.output_errors.len() < errors_before {
        cut.push(format!(
            "{} of {errors_before} output errors",
            errors_before - r.output_errors.len()
        ));
    }
    // 3: the streams share what is left after the lists and the outputs.
    let for_streams = room.saturating_sub(lists + outputs);
    if out_len + err_len > for_streams {
        let half = for_streams / 2;
        let (out_max, err_max) = if out_len <= half {
            (out_len, for_streams - out_len)
        } else if err_len <= half {
            (for_streams - err_len, err_len)
        } else {
            (half, for_streams - half)
        };
        for (name, text, len, max, before) in [
            ("stdout", &mut r.stdout, out_len, out_max, lens.0),
            ("stderr", &mut r.stderr, err_len, err_max, lens.1),
        ] {
            if len > max {
                text.truncate(prefix_within(text, max));
                cut.push(format!("{name} after {} of {before} bytes", text.len()));
            }
        }
    }
    // 4: output values, the largest first, plain before sensitive.
    if big_len(r) > room {
        let mut order: Vec<usize> = (0..r.outputs.len()).collect();
        order.sort_by_key(|&i| {
            let o = &r.outputs[i];
            (o.sensitive, std::cmp::Reverse(var_len(o)))
        });
        let mut over = big_len(r) - room;
        let mut dropped = Vec::new();
        for i in order {
            if over == 0 {
                break;
            }
            let o = &r.outputs[i];
            over = over.saturating_sub(var_len(o) + 1);
            dropped.push(i);
        }
        let mut names: Vec<String> = Vec::new();
        let count = dropped.len();
        dropped.sort_unstable();
        for i in dropped.into_iter().rev() {
            let o = r.outputs.remove(i);
            if names.len() < NAMES_LISTED {
                names.push(format!("`{}`", o.name));
            }
        }
        names.reverse();
        cut.push(format!(
            "{count} output value(s) ({}{})",
            names.join(", "),
            if count > NAMES_LISTED { ", …" } else { "" }
        ));
    }
    r.truncated = true;
    let warning = format!(
        "the result was cut to fit the worker's result size limit of {budget} bytes \
         (it would have taken {total}): dropped {}",
        cut.join("; ")
    );
    r.warnings.push(warning.clone());
    Ok(Some(warning))
}

/// The small result sent instead of one that cannot be published (over the
/// budget even without its output, or refused by the broker for good): the
/// task's id, how it ended and its timings and usage, no output, status
/// `sandbox_error`, and an error saying why.
pub fn small(r: &TaskResult, why: &str) -> TaskResult {
    // Every field named (no `..`): a field added to results must be decided
    // here — kept (small), shortened, or dropped with the output.
    let TaskResult {
        version,
        id,
        status,
        exit_code,
        signal,
        stdout: _,
        stderr: _,
        truncated: _,
        lossy,
        outputs: _,
        output_errors: _,
        warnings: _,
        error: _,
        worker,
        sandbox,
        sandbox_id,
        submitter,
        attempt,
        limits,
        landlock,
        network: _,
        timings,
        usage,
        waited_on,
    } = r;
    let short = |v: &Option<String>| {
        v.as_ref().map(|t| {
            let mut t = t.clone();
            t.truncate(prefix_within(&t, SMALL_FIELD));
            t
        })
    };
    let how = match (exit_code, signal) {
        (Some(c), _) => format!(" (exit code {c})"),
        (None, Some(sig)) => format!(" (signal {sig})"),
        _ => String::new(),
    };
    let mut error = format!(
        "the task ended {status}{how}, but its result could not be delivered: {why}; its \
         output and output values were dropped"
    );
    error.truncate(prefix_within(&error, MAX_ERROR_BYTES));
    TaskResult {
        version: *version,
        id: id.clone(),
        status: Status::SandboxError,
        exit_code: None,
        signal: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: true,
        lossy: *lossy,
        outputs: Vec::new(),
        output_errors: Vec::new(),
        warnings: Vec::new(),
        error: Some(error),
        worker: short(worker),
        sandbox: *sandbox,
        sandbox_id: short(sandbox_id),
        // Who signed the task: the small result is still theirs to trust.
        submitter: short(submitter),
        attempt: *attempt,
        limits: *limits,
        landlock: *landlock,
        // A task's own list: not small, and not needed to trust what is left.
        network: None,
        timings: timings.clone(),
        usage: usage.clone(),
        // How long it waited on which key: small, and still true.
        waited_on: waited_on.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn actual(r: &TaskResult) -> usize {
        serde_json::to_vec(r).expect("serializes").len()
    }

    fn var(name: &str, value: &str, sensitive: bool) -> OutputVar {
        OutputVar {
            name: name.into(),
            value: value.into(),
            sensitive,
            sealed: None,
        }
    }

    #[test]
    fn string_lengths_are_serde_jsons_for_every_character() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\u{7f}\u{80}\u{2028}");
        for c in all.chars() {
            let one = c.to_string();
            let json = serde_json::to_string(&one).expect("json");
            assert_eq!(json_str_len(&one), json.len(), "{c:?}");
        }
        let mixed = all.repeat(37);
        let json = serde_json::to_string(&mixed).expect("json");
        assert_eq!(json_str_len(&mixed), json.len());
        // The cut: the longest prefix on a character boundary within `max`.
        for max in [0, 1, 5, 6, 7, 100, 1000, json.len()] {
            let cut = prefix_within(&mixed, max);
            assert!(mixed.is_char_boundary(cut));
            assert!(json_str_len(&mixed[..cut]) - 2 <= max, "{max}");
            if cut < mixed.len() {
                let next = mixed[cut..].chars().next().map_or(0, char::len_utf8);
                assert!(
                    json_str_len(&mixed[..cut + next]) - 2 > max,
                    "{max}: not the longest"
                );
            }
        }
    }

    #[test]
    fn the_count_is_the_serialized_size() {
        let mut r = TaskResult::new("t1", Status::Failed);
        assert_eq!(serialized_len(&mut r), actual(&r));
        r.stdout = "a\u{0}b\"c\\d\ne\u{1b}é€𝄞".into();
        r.stderr = "\r\t\u{8}\u{c}\u{7f}".into();
        r.outputs = vec![var("a", "1", false), var("b", "x\u{1}", true)];
        r.output_errors = vec!["e1".into(), "e\n2".into()];
        r.warnings = vec!["w".into()];
        r.error = Some("boom".into());
        assert_eq!(serialized_len(&mut r), actual(&r));
    }

    #[test]
    fn the_issues_result_fits_and_says_what_was_cut() {
        // 10 MiB of NUL on each stream (60 MiB of JSON each) and many errors.
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "\u{0}".repeat(10 << 20);
        r.stderr = "\u{0}".repeat(10 << 20);
        r.output_errors = (0..100)
            .map(|i| format!("KRILL_OUTPUT: line {i}: bad"))
            .collect();
        r.outputs = vec![var("keep", "me", false)];
        let budget = 8 << 20;
        let w = fit(&mut r, budget).expect("fits").expect("cut");
        assert!(actual(&r) <= budget, "{} > {budget}", actual(&r));
        assert!(r.truncated);
        assert_eq!(r.output("keep"), Some("me"));
        assert!(
            w.contains("stdout after") && w.contains("stderr after"),
            "{w}"
        );
        assert_eq!(r.warnings.last(), Some(&w));
        // Both streams got a fair share.
        let (o, e) = (r.stdout.len() as f64, r.stderr.len() as f64);
        assert!((o / e - 1.0).abs() < 0.01, "{o} {e}");
    }

    #[test]
    fn lists_go_first_then_the_longer_stream() {
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.stdout = "o".repeat(3000);
        r.stderr = "e".repeat(100);
        r.warnings = vec!["w".repeat(500); 4];
        r.output_errors = vec!["x".repeat(500); 4];
        let budget = fixed_len(&mut r) + WARNING_ROOM + 2500;
        fit(&mut r, budget).expect("fits");
        assert!(actual(&r) <= budget);
        assert_eq!(r.warnings.len(), 1, "only the budget's own warning is left");
        assert!(r.output_errors.is_empty());
        assert_eq!(r.stderr.len(), 100, "the short stream is kept whole");
        assert!(r.stdout.len() < 3000);
    }

    #[test]
    fn outputs_go_largest_first_and_sensitive_last() {
        let mut r = TaskResult::new("t1", Status::Succeeded);
        r.outputs = vec![
            var("small", "s", false),
            var("big", &"b".repeat(5000), false),
            var("secret", &"s".repeat(6000), true),
        ];
        let budget = fixed_len(&mut r) + WARNING_ROOM + 6200;
        let w = fit(&mut r, budget).expect("fits").expect("cut");
        assert!(actual(&r) <= budget);
        let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["small", "secret"]);
        assert!(w.contains("1 output value(s) (`big`)"), "{w}");
    }

    #[test]
    fn a_fixed_part_over_the_budget_is_refused_and_small_fits() {
        let mut r = TaskResult::new("t1", Status::Failed);
        r.exit_code = Some(3);
        r.error = Some("e".repeat(1 << 20));
        assert!(fit(&mut r, 2048).is_err());
        let s = small(&r, "over the broker's limit");
        assert!(actual(&s) < 8192);
        assert_eq!(s.status, Status::SandboxError);
        let e = s.error.as_deref().expect("error");
        assert!(e.contains("ended failed (exit code 3)"), "{e}");
        // With a long error cut to its bound, it fits.
        let mut r2 = r.clone();
        assert!(fit(&mut r2, 64 * 1024).is_ok());
        assert!(actual(&r2) <= 64 * 1024);
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\u{0}'),
                Just('"'),
                Just('\\'),
                Just('\n'),
                Just('é'),
                Just('𝄞'),
                proptest::char::any(),
            ],
            0..400,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn whatever_the_content_it_fits(
            stdout in text(),
            stderr in text(),
            errors in proptest::collection::vec(text(), 0..8),
            values in proptest::collection::vec((text(), any::<bool>()), 0..6),
            budget in 1500usize..6000,
        ) {
            let mut r = TaskResult::new("t1", Status::Succeeded);
            r.stdout = stdout;
            r.stderr = stderr;
            r.output_errors = errors;
            r.outputs = values
                .into_iter()
                .enumerate()
                .map(|(i, (v, s))| var(&format!("v{i}"), &v, s))
                .collect();
            prop_assert_eq!(serialized_len(&mut r), actual(&r));
            let before = r.clone();
            // The copy made without copying what is cut is the same result.
            let copied = fit_copy(&before, budget);
            let fitted = fit(&mut r, budget);
            match (&fitted, copied) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(_)), Ok(Some(c))) => prop_assert_eq!(&c, &r),
                (Err(a), Err(b)) => prop_assert_eq!(*a, b),
                (f, c) => prop_assert!(false, "fit {:?}, fit_copy {:?}", f, c.map(|c| c.map(|c| c.warnings))),
            }
            match fitted {
                Ok(None) => prop_assert_eq!(&r, &before),
                Ok(Some(_)) => {
                    prop_assert!(actual(&r) <= budget, "{} > {}", actual(&r), budget);
                    prop_assert!(r.truncated);
                    // What is kept is a prefix of what was there.
                    prop_assert!(before.stdout.starts_with(&r.stdout));
                    prop_assert!(before.stderr.starts_with(&r.stderr));
                }
                Err(_) => prop_assert!(fixed_len(&mut before.clone()) + WARNING_ROOM > budget),
            }
        }
    }
}
