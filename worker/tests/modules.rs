//! Keeps the worker's and the broker crate's modules free of import circles: at every level of
//! `src/` (the crate's top modules, and the files of each module directory),
//! the modules' `use`s of one another must form no cycle. Comments and a
//! file's trailing `#[cfg(test)] mod tests` are not counted: a test may use
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The code of one file that counts: no comment lines, no trailing test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The child modules of `dir` (files `x.rs`, directories `x/`), but `mod.rs`,
/// `lib.rs`, `main.rs` and `bin/`.
fn children(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        let name = p.file_stem().expect("name").to_string_lossy().to_string();
        if ["mod", "lib", "main", "bin"].contains(&name.as_str()) {
            continue;
        }
        if p.is_dir() || p.extension().is_some_and(|x| x == "rs") {
            out.insert(name);
        }
    }
    out
}

/// Words that follow `prefix` in `text` (`crate::a::b` with prefix
/// `crate::a::` gives `b`; a `{b, c::{d, e}}` group gives `b` and `c`).
fn named_after(text: &str, prefix: &str) -> BTreeSet<String> {
    fn word(s: &str) -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[at + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(word(rest));
            continue;
        };
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.insert(word(&group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.insert(word(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    out.remove("");
    out
}

/// The edges between the children of module directory `dir` (module path
/// `path`, e.g. `crate::sandbox::`): child a → child b when a's code names
/// `path b` (or `super::b` from a file directly in `dir`).
fn edges(dir: &Path, path: &str) -> BTreeMap<String, BTreeSet<String>> {
    let kids = children(dir);
    let mut graph = BTreeMap::new();
    for kid in &kids {
        let mut files = Vec::new();
        let file = dir.join(format!("{kid}.rs"));
        let sub = dir.join(kid);
        if file.exists() {
            files.push(file.clone());
        }
        if sub.is_dir() {
            files_under(&sub, &mut files);
        }
        let mut to = BTreeSet::new();
        for f in &files {
            let text = code(f);
            let mut names = named_after(&text, path);
            if *f == file && path != "crate::" {
                names.extend(named_after(&text, "super::"));
            }
            to.extend(names.into_iter().filter(|n| n != kid && kids.contains(n)));
        }
        graph.insert(kid.clone(), to);
    }
    graph
}

/// One cycle of `graph`, if it has any.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut c = stack[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

fn check(dir: &Path, path: &str, found: &mut Vec<String>) {
    if let Some(c) = cycle(&edges(dir, path)) {
        found.push(format!("{} {path}: {}", dir.display(), c.join(" → ")));
    }
    for kid in children(dir) {
        let sub = dir.join(&kid);
        if sub.is_dir() {
            check(&sub, &format!("{path}{kid}::"), found);
        }
    }
}

#[test]
fn no_import_circles() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for src in [here.join("src"), here.join("../broker/src")] {
        check(&src, "crate::", &mut found);
    }
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn the_check_sees_a_circle() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(4));
    let names = named_after(
        "use crate::{a, b::{C, D}};\nx = crate::d::e; y::crate::z",
        "crate::",
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "b", "d"]);
}
