//! The crate's imports run one way: no import circle between files of
//! `src/`, and no module imports from a module above it in [`LAYERS`].
//!
//! Read from the source text: every `crate::`, `super::` and `self::` path
//! (in `use` lines and inline), and `use child::...` of a module's own
//! children, outside `#[cfg(test)]` modules and `tests.rs` files, resolved
//! to the file that defines the module it names. `mod child;` lines are not
//! imports, and neither is a module's re-export of its own child's items
//! (`pub use child::X;` in a `mod.rs`: a facade for the module's users, not
//! a dependency of its code). A failure lists the circle or the upward
//! import with file names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first: a module may import from its own layer's
/// modules only if no circle results, and from any layer below.
const LAYERS: &[&[&str]] = &[
    // The configuration document: imports nothing of meshguard.
    &["config"],
    &["bytes", "grpc", "host"],
    &["request"],
    &["route", "breaker", "cache", "jwt"],
    &["ratelimit"],
    // Assembles the validated configuration from every feature.
    &["plan"],
    // The proxy-wasm glue.
    &["filter"],
    // The same filter as an Envoy dynamic module (feature `native`).
    &["native"],
];

/// A module's file, by its path from the crate root (`["cache", "store"]`).
struct Module {
    path: Vec<String>,
    file: PathBuf,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap_or(&p);
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if parts.first().map(String::as_str) == Some("bin") {
                continue;
            }
            match parts.last().map(String::as_str) {
                Some("lib") if parts.len() == 1 => parts.clear(),
                Some("mod") => {
                    parts.pop();
                }
                Some("tests") => continue,
                _ => {}
            }
            out.push(Module {
                path: parts,
                file: p,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The text of a file without its `#[cfg(test)]` items (a test module may
/// import anything) and without comments. An inline module (`mod name {`)
/// is framed by the markers `\u{1}name\u{1}` and `\u{2}`, so that paths in
/// it are read relative to it.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    let mut depth = 0i32;
    let mut inline: Vec<i32> = Vec::new();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the item that follows: up to its matching closing brace,
            // or to its `;` when it has no body (`mod tests;`).
            let mut d = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                let code = l.split("//").next().unwrap_or("");
                d += code.matches('{').count() as i32;
                d -= code.matches('}').count() as i32;
                opened |= code.contains('{');
                if (opened && d <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = line.split(" //").next().unwrap_or("");
        let words: Vec<&str> = t.split_whitespace().collect();
        let mod_at = words.iter().position(|w| *w == "mod");
        if let Some(i) = mod_at {
            let before_ok = words[..i].iter().all(|w| w.starts_with("pub"));
            if before_ok && words.get(i + 2) == Some(&"{") {
                if let Some(name) = words.get(i + 1) {
                    out.push('\u{1}');
                    out.push_str(name);
                    out.push('\u{1}');
                    out.push('\n');
                    inline.push(depth);
                }
            }
        }
        depth += code.matches('{').count() as i32;
        depth -= code.matches('}').count() as i32;
        out.push_str(code);
        out.push('\n');
        while inline.last().is_some_and(|d| *d >= depth) {
            inline.pop();
            out.push_str("\u{2}\n");
        }
    }
    out
}

/// Every module path named by `crate::`, `super::`, `self::` or a child
/// module, as absolute paths (the item names are kept: resolution trims).
fn referenced_paths(code: &str, file: &[String], children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut me: Vec<String> = file.to_vec();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 1 {
            let end = code[i + 1..]
                .find('\u{1}')
                .map(|e| i + 1 + e)
                .unwrap_or(bytes.len());
            me.push(code[i + 1..end].to_string());
            i = end + 1;
            continue;
        }
        if bytes[i] == 2 {
            me.pop();
            i += 1;
            continue;
        }
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        // A path starting at i: idents joined by `::`, maybe ending in a
        // `{...}` group.
        let start = i;
        while i < bytes.len() && (ident(bytes[i]) || bytes[i] == b':') {
            i += 1;
        }
        if !code[start..i].contains("::") {
            // A lone word (`pub(crate)`, `self.x`) names no module.
            continue;
        }
        let head: Vec<&str> = code[start..i]
            .split("::")
            .filter(|s| !s.is_empty())
            .collect();
        let Some(first) = head.first() else {
            continue;
        };
        let mut base: Vec<String> = match *first {
            "crate" => Vec::new(),
            "super" => me[..me.len().saturating_sub(1)].to_vec(),
            "self" => me.to_vec(),
            c if children.contains(c) && me.len() == file.len() && head.len() > 1 => {
                let mut v = me.to_vec();
                v.push(c.to_string());
                v
            }
            _ => continue,
        };
        let mut rest = &head[1..];
        // `super::super::x`
        while rest.first() == Some(&"super") {
            base.pop();
            rest = &rest[1..];
        }
        let mut p = base.clone();
        p.extend(rest.iter().map(|s| s.to_string()));
        if i < bytes.len() && bytes[i] == b'{' {
            // A group: each member is a path below `p`.
            let end = code[i..].find('}').map(|e| i + e).unwrap_or(bytes.len());
            for member in code[i + 1..end].split(',') {
                let m = member.trim().split(" as ").next().unwrap_or("").trim();
                let mut q = p.clone();
                q.extend(
                    m.split("::")
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(String::from),
                );
                out.push(q);
            }
            i = end;
            continue;
        }
        out.push(p);
    }
    out
}

/// `code` without its re-exports of its own children's items
/// (`pub use child::...;`, possibly over several lines).
fn without_facades(code: &str, children: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in code.lines() {
        let t = line.trim_start();
        if !skipping {
            let facade = t
                .strip_prefix("pub use ")
                .and_then(|rest| rest.split("::").next())
                .is_some_and(|first| children.contains(first));
            if !facade {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        }
        skipping = !t.trim_end().ends_with(';');
    }
    out
}

/// The deepest module of `known` that is a prefix of `path`.
fn resolve<'a>(
    path: &[String],
    known: &'a BTreeMap<Vec<String>, PathBuf>,
) -> Option<&'a Vec<String>> {
    (0..=path.len())
        .rev()
        .find_map(|n| known.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// Modules by path, and the modules each imports.
type Graph = (
    BTreeMap<Vec<String>, PathBuf>,
    BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
);

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let known: BTreeMap<Vec<String>, PathBuf> = mods
        .iter()
        .map(|m| (m.path.clone(), m.file.clone()))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in &mods {
        let text = fs::read_to_string(&m.file).unwrap_or_default();
        let children: BTreeSet<String> = known
            .keys()
            .filter(|k| k.len() == m.path.len() + 1 && k.starts_with(&m.path))
            .filter_map(|k| k.last().cloned())
            .collect();
        let set = edges.entry(m.path.clone()).or_default();
        let code = without_facades(&code_of(&text), &children);
        for p in referenced_paths(&code, &m.path, &children) {
            if let Some(target) = resolve(&p, &known) {
                // A module naming its own descendants (`pub use child::X`,
                // `mod child`) is not an import upwards; the crate root only
                // declares modules.
                if target != &m.path && !m.path.is_empty() {
                    set.insert(target.clone());
                }
            }
        }
    }
    (known, edges)
}

fn show(p: &[String]) -> String {
    if p.is_empty() {
        "lib".into()
    } else {
        p.join("::")
    }
}

/// Strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let next: Vec<&'a Vec<String>> = t
            .edges
            .get(v)
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        for w in next {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn layer_of(m: &[String]) -> Option<usize> {
    let top = m.first()?;
    LAYERS.iter().position(|l| l.contains(&top.as_str()))
}

#[test]
fn no_import_circle_between_files() {
    let (known, edges) = graph();
    assert!(known.len() > 40, "the source tree was not found: {known:?}");
    let found = circles(&edges);
    let text: Vec<String> = found
        .iter()
        .map(|c| {
            let members: BTreeSet<&Vec<String>> = c.iter().collect();
            let arrows: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| members.contains(b))
                        .map(move |b| format!("  {} -> {}", show(a), show(b)))
                })
                .collect();
            format!("circle of {} modules:\n{}", c.len(), arrows.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "{}", text.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer_and_imports_only_downwards() {
    let (known, edges) = graph();
    let mut wrong = Vec::new();
    for m in known.keys().filter(|m| m.len() == 1) {
        if layer_of(m).is_none() {
            wrong.push(format!("src/{}: not in LAYERS (tests/layers.rs)", show(m)));
        }
    }
    for (from, tos) in &edges {
        let (Some(lf), true) = (layer_of(from), !from.is_empty()) else {
            continue;
        };
        for to in tos {
            let Some(lt) = layer_of(to) else { continue };
            if lt > lf {
                wrong.push(format!(
                    "{} imports {} from a higher layer",
                    show(from),
                    show(to)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn config_imports_nothing_of_meshguard() {
    let (_, edges) = graph();
    let out: Vec<String> = edges
        .iter()
        .filter(|(from, _)| from.first().map(String::as_str) == Some("config"))
        .flat_map(|(from, tos)| {
            tos.iter()
                .filter(|t| t.first().map(String::as_str) != Some("config"))
                .map(move |t| format!("{} -> {}", show(from), show(t)))
        })
        .collect();
    assert!(out.is_empty(), "{}", out.join("\n"));
}

#[test]
fn a_re_export_of_a_child_is_not_an_import() {
    let children = BTreeSet::from(["store".to_string()]);
    let code = "pub use store::{\n    Entry, Store,\n};\npub use store::Probe;\nuse store::Lock;\npub use crate::grpc::Code;\n";
    let kept = without_facades(code, &children);
    assert_eq!(kept, "use store::Lock;\npub use crate::grpc::Code;\n");
}

#[test]
fn the_reader_sees_imports_of_every_kind() {
    // The parser itself: each spelling of an import is found, tests are not.
    let me: Vec<String> = vec!["cache".into(), "store".into()];
    let children = BTreeSet::from(["inner".to_string()]);
    let code = code_of(
        "use crate::config::{raw::RawCache, ConfigError};\n\
         use super::entry::Entry;\n\
         use super::{jose, verify};\n\
         use inner::Thing;\n\
         pub(crate) mod private;\n\
         fn g(&self) { self.x }\n\
         fn f() { crate::grpc::Code::OK; }\n\
         mod checked {\n    use super::Memo;\n}\n\
         use super::after::Inline;\n\
         // use crate::filter::X;\n\
         #[cfg(test)]\nmod tests {\n    use crate::plan::Config;\n}\n",
    );
    let paths: Vec<String> = referenced_paths(&code, &me, &children)
        .iter()
        .map(|p| p.join("::"))
        .collect();
    for want in [
        "config::raw::RawCache",
        "config::ConfigError",
        "cache::entry::Entry",
        "cache::jose",
        "cache::verify",
        "cache::store::inner::Thing",
        "grpc::Code::OK",
        "cache::store::Memo",
        "cache::after::Inline",
    ] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("filter") || p.starts_with("plan")),
        "{paths:?}"
    );
}
