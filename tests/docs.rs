//! The documentation is part of the contract:
//!
//! - every property of `meshguard.schema.json` (every nested object,
//!   `items`, `additionalProperties`, `$ref`/`$defs`, `anyOf`/`oneOf`/
//!   `allOf`) has a row in the field table of its own object's section of
//!   `docs/configuration.md`, and every row there names a real property;
//! - every ```json block of the README and of `docs/` is a configuration
//!   the filter accepts;
//! - no document or source file cites a file outside the repository, and
//!   every relative markdown link (and its `#anchor`) resolves.
//!
//! How a section is found: the heading of an object's section names the
//! object's path in backticks (`` ### Route JWT: `routes[].jwt` ``; the
//! top-level object is the heading `## Top level`), and the section runs to
//! the next heading of any level. Its field table is a table whose header
//! row is `| field | type | default | meaning |`; each row's first cell is
//! the property name in backticks. A property documented only under
//! another object is therefore reported, with its full path
//! (`routes[].jwt.reject_multiple_tokens`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const CONFIG_DOC: &str = "docs/configuration.md";
const ROOT_HEADING: &str = "Top level";
const FIELD_TABLE_HEADER: [&str; 4] = ["field", "type", "default", "meaning"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ------------------------------------------------------------------ schema

/// One object of the schema: its properties and the required ones.
#[derive(Debug, Default)]
struct Object {
    props: BTreeSet<String>,
    required: BTreeSet<String>,
}

/// Every object of the schema by its path: `""` for the document,
/// `routes[]`, `routes[].jwt`, `jwt_providers.<name>`...
fn schema_objects(schema: &Value) -> BTreeMap<String, Object> {
    let mut out = BTreeMap::new();
    walk(schema, schema, "", false, &mut out, &mut Vec::new());
    out
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// `conditional`: inside `if`/`then`/`else`/`not`, where `required` is a
/// condition, not the object's own requirement.
fn walk(
    root: &Value,
    node: &Value,
    path: &str,
    conditional: bool,
    out: &mut BTreeMap<String, Object>,
    refs: &mut Vec<(String, String)>,
) {
    let Some(obj) = node.as_object() else {
        return;
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let key = (r.to_string(), path.to_string());
        if !refs.contains(&key) {
            let target = r
                .strip_prefix('#')
                .and_then(|pointer| root.pointer(pointer))
                .unwrap_or_else(|| panic!("unresolvable $ref {r} at {path:?}"));
            refs.push(key);
            walk(root, target, path, conditional, out, refs);
            refs.pop();
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let o = out.entry(path.to_string()).or_default();
        o.props.extend(props.keys().cloned());
        if !conditional {
            if let Some(req) = obj.get("required").and_then(Value::as_array) {
                o.required
                    .extend(req.iter().filter_map(Value::as_str).map(str::to_string));
            }
        }
        for (k, v) in props {
            walk(root, v, &join(path, k), conditional, out, refs);
        }
    }
    match obj.get("items") {
        Some(Value::Array(tuple)) => {
            for v in tuple {
                walk(root, v, &format!("{path}[]"), conditional, out, refs);
            }
        }
        Some(v) => walk(root, v, &format!("{path}[]"), conditional, out, refs),
        None => {}
    }
    for v in obj
        .get("prefixItems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(root, v, &format!("{path}[]"), conditional, out, refs);
    }
    if let Some(v) = obj.get("additionalProperties") {
        walk(root, v, &join(path, "<name>"), conditional, out, refs);
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        for v in obj.get(k).and_then(Value::as_array).into_iter().flatten() {
            walk(root, v, path, conditional, out, refs);
        }
    }
    for k in ["if", "then", "else", "not"] {
        if let Some(v) = obj.get(k) {
            walk(root, v, path, true, out, refs);
        }
    }
}

// ------------------------------------------------------------------ markdown

struct Heading {
    line: usize,
    text: String,
}

/// Headings outside fenced code blocks, and each line's "in a fence" flag.
fn headings(doc: &str) -> (Vec<Heading>, Vec<bool>) {
    let mut out = Vec::new();
    let mut fenced = Vec::new();
    let mut in_fence = false;
    for (i, line) in doc.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if fence {
            in_fence = !in_fence;
        }
        fenced.push(in_fence || fence);
        if in_fence || fence {
            continue;
        }
        let level = line.bytes().take_while(|&b| b == b'#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            out.push(Heading {
                line: i,
                text: line[level..].trim().to_string(),
            });
        }
    }
    (out, fenced)
}

/// The spans between backticks of a line.
fn code_spans(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// Cells of a table row (`\|` does not split).
fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    let mut out = vec![String::new()];
    let mut prev = ' ';
    for c in t.chars() {
        if c == '|' && prev != '\\' {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
        prev = c;
    }
    out.iter().map(|c| c.trim().to_string()).collect()
}

fn is_table_row(line: &str) -> bool {
    line.trim_start().starts_with('|')
}

fn is_separator(line: &str) -> bool {
    cells(line)
        .iter()
        .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':')))
}

/// A field row's property name: the whole first cell is one code span.
fn field_name(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.is_empty() && !inner.contains('`')).then_some(inner)
}

/// Rows of the field tables in `lines`: (line index, cells).
fn field_rows(lines: &[&str], fenced: &[bool], start: usize) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_field_table = false;
    let mut prev_table_line = false;
    for (i, line) in lines.iter().enumerate() {
        let at = start + i;
        if fenced.get(at).copied().unwrap_or(false) || !is_table_row(line) {
            in_field_table = false;
            prev_table_line = false;
            continue;
        }
        if !prev_table_line {
            // A table's header row.
            in_field_table = cells(line) == FIELD_TABLE_HEADER;
        } else if in_field_table && !is_separator(line) {
            out.push((at, cells(line)));
        }
        prev_table_line = true;
    }
    out
}

/// Problems of `doc` against `schema`, one line each; a property missing
/// from its section is reported by its full path.
fn check_documented(schema: &Value, doc: &str) -> Vec<String> {
    let objects = schema_objects(schema);
    let (heads, fenced) = headings(doc);
    let lines: Vec<&str> = doc.lines().collect();
    let mut problems = Vec::new();

    // Sections: object path -> (heading index).
    let mut sections: BTreeMap<&str, usize> = BTreeMap::new();
    for (h, head) in heads.iter().enumerate() {
        let mut names: Vec<&str> = code_spans(&head.text)
            .into_iter()
            .filter(|s| objects.contains_key(*s) && !s.is_empty())
            .collect();
        if head.text == ROOT_HEADING {
            names.push("");
        }
        if names.len() > 1 {
            problems.push(format!(
                "line {}: heading {:?} names several objects",
                head.line + 1,
                head.text
            ));
        }
        for n in names {
            if let Some(other) = sections.insert(n, h) {
                problems.push(format!(
                    "line {}: a second section for `{n}` (the first is at line {})",
                    head.line + 1,
                    heads[other].line + 1
                ));
            }
        }
    }
    let section_of_line = |at: usize| -> Option<&str> {
        let h = heads.iter().rposition(|x| x.line < at)?;
        sections.iter().find(|(_, &i)| i == h).map(|(p, _)| *p)
    };
    let section_range = |h: usize| -> (usize, usize) {
        let start = heads[h].line + 1;
        let end = heads.get(h + 1).map_or(lines.len(), |n| n.line);
        (start, end)
    };

    // Field rows outside an object's section document nothing.
    for (at, row) in field_rows(&lines, &fenced, 0) {
        if section_of_line(at).is_none() {
            problems.push(format!(
                "line {}: field row {:?} is under a heading that names no schema object",
                at + 1,
                row.first().cloned().unwrap_or_default()
            ));
        }
    }

    for (path, obj) in &objects {
        let shown = if path.is_empty() {
            "the top level".to_string()
        } else {
            format!("`{path}`")
        };
        let Some(&h) = sections.get(path.as_str()) else {
            for p in &obj.props {
                problems.push(format!(
                    "{}: not documented (no heading names {shown})",
                    join(path, p)
                ));
            }
            continue;
        };
        let (start, end) = section_range(h);
        let mut documented = BTreeSet::new();
        for (at, row) in field_rows(&lines[start..end], &fenced, start) {
            let first = row.first().map(String::as_str).unwrap_or("");
            let Some(name) = field_name(first) else {
                problems.push(format!(
                    "line {}: field row of {shown} whose first cell is not one `name`: {first:?}",
                    at + 1
                ));
                continue;
            };
            if !obj.props.contains(name) {
                problems.push(format!(
                    "line {}: `{}` is documented but is not a property of {shown} in the schema",
                    at + 1,
                    join(path, name)
                ));
                continue;
            }
            if !documented.insert(name.to_string()) {
                problems.push(format!(
                    "line {}: `{}` documented twice",
                    at + 1,
                    join(path, name)
                ));
            }
            if row.len() != FIELD_TABLE_HEADER.len() || row.iter().any(String::is_empty) {
                problems.push(format!(
                    "line {}: `{}`: expected {} non-empty cells (field, type, default, meaning)",
                    at + 1,
                    join(path, name),
                    FIELD_TABLE_HEADER.len()
                ));
                continue;
            }
            let says_required = row[2].starts_with("required");
            if says_required != obj.required.contains(name) {
                problems.push(format!(
                    "line {}: `{}`: the default column {} \"required\" but the schema {}",
                    at + 1,
                    join(path, name),
                    if says_required {
                        "says"
                    } else {
                        "does not say"
                    },
                    if obj.required.contains(name) {
                        "requires it"
                    } else {
                        "does not require it"
                    }
                ));
            }
        }
        for p in obj.props.difference(&documented) {
            problems.push(format!(
                "{}: not documented (no `{p}` row in the field table under {:?})",
                join(path, p),
                heads[h].text
            ));
        }
    }
    problems
}

#[test]
fn the_schema_walk_reaches_every_kind_of_nesting() {
    let schema: Value = serde_json::from_str(&read("meshguard.schema.json")).unwrap();
    let objects = schema_objects(&schema);
    let has = |path: &str, prop: &str| objects.get(path).is_some_and(|o| o.props.contains(prop));
    // properties, $ref + anyOf (nullable object), items, additionalProperties.
    assert!(has("", "routes") && has("", "$schema"));
    assert!(has("routes[].jwt", "reject_multiple_tokens"));
    assert!(has("routes[].match.headers[]", "present"));
    assert!(has("routes[].jwt.claims[]", "one_of"));
    assert!(has("jwt_providers.<name>.jwks.remote", "cache_duration"));
    assert!(has("jwt_providers.<name>.from[]", "prefix"));
    assert!(has("routes[].rate_limit[]", "scope"));
    // `required`, but never from the conditional (if/then/else) rules.
    assert!(objects["routes[]"].required.contains("name"));
    assert!(objects["routes[].rate_limit[]"].required.is_empty());
    let total: usize = objects.values().map(|o| o.props.len()).sum();
    assert!(
        objects.len() >= 18 && total >= 90,
        "{} objects, {total} properties",
        objects.len()
    );
}

#[test]
fn every_schema_property_is_documented_in_its_own_section() {
    let schema: Value = serde_json::from_str(&read("meshguard.schema.json")).unwrap();
    let problems = check_documented(&schema, &read(CONFIG_DOC));
    assert!(
        problems.is_empty(),
        "{CONFIG_DOC} does not document the schema ({} problems):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn a_property_documented_under_another_object_is_reported() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "a": { "$ref": "#/$defs/A" },
            "list": { "type": "array", "items": { "$ref": "#/$defs/B" } },
            "map": { "type": "object", "additionalProperties": { "$ref": "#/$defs/B" } }
        },
        "$defs": {
            "A": { "type": "object", "properties": { "name": {}, "size": {} }, "required": ["name"] },
            "B": { "anyOf": [ { "type": "object", "properties": { "name": {} } }, { "type": "null" } ] }
        }
    });
    let head = "| field | type | default | meaning |\n|---|---|---|---|\n";
    let doc = format!(
        "## Top level\n\n{head}| `a` | object | none | x |\n| `list` | array | [] | x |\n| `map` | object | {{}} | x |\n\n\
         ## A: `a`\n\n{head}| `name` | string | required | x |\n| `size` | integer | 1 | x |\n| `name2` | string | none | x |\n\n\
         ## B: `list[]`\n\n{head}| `name` | string | none | x |\n\n\
         ## Notes on `map.<name>`\n\n| field | x |\n|---|---|\n| `name` | in another kind of table: not a field row |\n"
    );
    let problems = check_documented(&schema, &doc);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("`a.name2` is documented but is not a property"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with("map.<name>.name: not documented"),
        "{problems:#?}"
    );

    // A required property must say so, an optional one must not.
    let doc2 = doc.replace(
        "| `size` | integer | 1 |",
        "| `size` | integer | required |",
    );
    assert!(check_documented(&schema, &doc2)
        .iter()
        .any(|p| p.contains("`a.size`: the default column says \"required\"")));
}

// ------------------------------------------------------------------ json examples

/// Every ```json block of `file`: (line, text).
fn json_blocks(doc: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in doc.lines().enumerate() {
        let t = line.trim_start();
        match &mut current {
            None if t.starts_with("```json") => current = Some((i + 1, String::new())),
            Some(_) if t.starts_with("```") => out.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

fn markdown_files() -> Vec<String> {
    let mut files = vec![
        "README.md".to_string(),
        "SECURITY.md".to_string(),
        "bench/README.md".to_string(),
    ];
    files.extend(
        walk_files(&root().join("docs"))
            .into_iter()
            .filter(|p| p.ends_with(".md")),
    );
    files
}

#[test]
fn every_json_example_in_the_docs_is_a_valid_configuration() {
    let mut problems = Vec::new();
    let mut n = 0;
    for file in markdown_files() {
        for (line, text) in json_blocks(&read(&file)) {
            n += 1;
            if let Err(e) = meshguard::plan::Config::from_bytes(text.as_bytes()) {
                problems.push(format!("{file}:{line}: {e}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "invalid examples:\n{}",
        problems.join("\n")
    );
    let in_reference = json_blocks(&read(CONFIG_DOC)).len();
    assert!(
        in_reference >= 8 && n > in_reference,
        "{in_reference} blocks in {CONFIG_DOC}, {n} in all"
    );
}

// ------------------------------------------------------------------ citations and links

const SKIP_DIRS: [&str; 7] = [
    ".git",
    "target",
    ".venv",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    "corpus",
];

/// Files under `dir`, as paths relative to the repository root.
fn walk_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) {
                    stack.push(p);
                }
            } else if let Ok(rel) = p.strip_prefix(root()) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// The files whose text is checked for citations.
fn cited_from() -> Vec<String> {
    let mut files = markdown_files();
    for f in walk_files(&root().join("src")) {
        if f.ends_with(".rs") {
            files.push(f);
        }
    }
    for f in walk_files(&root().join("tests")) {
        if f.ends_with(".rs") || f.ends_with(".py") {
            files.push(f);
        }
    }
    files
}

/// Every markdown file name named in `text`: (line, name as written). URLs
/// (`https://.../README.md`) are not citations of repository files.
fn md_references(text: &str) -> Vec<(usize, String)> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut k = 0;
        while k + 3 <= chars.len() {
            let is_md = chars[k] == '.' && chars[k + 1] == 'm' && chars[k + 2] == 'd';
            let ends = chars
                .get(k + 3)
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == '_'));
            if is_md && ends {
                let mut s = k;
                while s > 0 && name_char(chars[s - 1]) {
                    s -= 1;
                }
                let name: String = chars[s..k + 3].iter().collect();
                let stem = name.trim_start_matches("./");
                let url = name.starts_with("//") || (s > 0 && chars[s - 1] == ':');
                let has_stem = stem
                    .trim_start_matches("../")
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if !url && has_stem {
                    out.push((i + 1, name));
                }
            }
            k += 1;
        }
    }
    out
}

/// Names that must never appear: documents that live outside this
/// repository (spelled in two pieces so that this file does not name them).
fn outside_names() -> Vec<String> {
    ["CONFIG", "PLATFORM", "ARCHITECTURE"]
        .iter()
        .map(|n| format!("{n}{}", ".md"))
        .chain([format!("/{}/", "work"), format!("../{}", "shared")])
        .collect()
}

/// Names that are not citations: (file, name, why).
const NOT_CITATIONS: [(&str, &str, &str); 1] = [(
    "tests/e2e/test_bench_readme.py",
    concat!("missing", ".md"),
    "a file the test expects not to exist",
)];

#[test]
fn no_file_cites_a_document_outside_the_repository() {
    let all = walk_files(&root());
    let exists = |p: &Path| p.exists();
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for file in cited_from() {
        let text = read(&file);
        for bad in outside_names() {
            for (i, line) in text.lines().enumerate() {
                if line.contains(&bad) {
                    problems.push(format!(
                        "{file}:{}: names {bad:?}, which is not in this repository",
                        i + 1
                    ));
                }
            }
        }
        let dir = root()
            .join(&file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(root);
        for (line, name) in md_references(&text) {
            if let Some(n) = NOT_CITATIONS
                .iter()
                .position(|(f, m, _)| *f == file && *m == name)
            {
                used.insert(n);
                continue;
            }
            let found = if name.contains('/') {
                exists(&dir.join(&name)) || exists(&root().join(&name))
            } else {
                exists(&dir.join(&name))
                    || all
                        .iter()
                        .any(|f| f.rsplit('/').next() == Some(name.as_str()))
            };
            let problem = format!("{file}:{line}: cites {name:?}, which is not in this repository");
            if !found && !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    for (n, (f, m, why)) in NOT_CITATIONS.iter().enumerate() {
        if !used.contains(&n) {
            problems.push(format!(
                "NOT_CITATIONS entry ({f}, {m}: {why}) is no longer needed"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// as `-`; repeated headings get `-1`, `-2`...
fn anchors(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for h in headings(doc).0 {
        let mut slug = String::new();
        for c in h.text.to_lowercase().chars() {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                slug.push(c);
            } else if c == ' ' {
                slug.push('-');
            }
        }
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of inline links `[text](target)` outside code: (line, target).
fn links(doc: &str) -> Vec<(usize, String)> {
    let (_, fenced) = headings(doc);
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        if fenced.get(i).copied().unwrap_or(false) {
            continue;
        }
        // Code spans are not links.
        let text: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((i + 1, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let dir = root()
            .join(&file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(root);
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                root().join(&file)
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                problems.push(format!("{file}:{line}: link to {target:?}: no such file"));
                continue;
            }
            if let Some(a) = anchor {
                let is_md = resolved.extension().is_some_and(|e| e == "md");
                let heads = fs::read_to_string(&resolved)
                    .map(|t| anchors(&t))
                    .unwrap_or_default();
                if !is_md || !heads.contains(a) {
                    problems.push(format!(
                        "{file}:{line}: link to {target:?}: no heading with anchor #{a}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 40, "only {checked} relative links found");
}

#[test]
fn the_link_and_citation_readers_find_what_they_must() {
    let refs = md_references(
        "see docs/operations.md, `SECURITY.md`; https://x.test/a/README.md and {n}.md, 'a.mdx'",
    );
    let names: Vec<&str> = refs.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["docs/operations.md", "SECURITY.md"]);
    let l = links("[a](../SECURITY.md#y) `[b](no)` [c](https://e.test)\n```\n[d](no)\n```\n");
    let targets: Vec<&str> = l.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(targets, ["../SECURITY.md#y", "https://e.test"]);
    let a = anchors(
        "# Routes: `routes[]`\n## Behaviour\n## Behaviour\n### Scaling out: global rate limits\n",
    );
    for want in [
        "routes-routes",
        "behaviour",
        "behaviour-1",
        "scaling-out-global-rate-limits",
    ] {
        assert!(a.contains(want), "{want} in {a:?}");
    }
}
