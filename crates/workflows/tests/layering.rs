//! The SDK's modules are layers: each module of `src/` uses only the modules before it in
//! [`ORDER`], by path (`crate::<module>`) or by a name `lib.rs` re-exports (`crate::<Name>`).
//! A reference to a later module is an import cycle in the making, and fails here.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// The modules of `src/`, lowest layer first: each may use only those before it.
const ORDER: &[&str] = &[
    "error", "services", "node", "context", "step", "compose", "workflow", "hook", "nested", "app",
];

fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The code of a source file, comments taken out (a doc link is not a dependency).
fn code(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out.lines()
        .map(|line| line.find("//").map_or(line, |comment| &line[..comment]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier at the start of `text` (after whitespace).
fn leading_ident(text: &str) -> &str {
    let text = text.trim_start();
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level items of a brace group `{a::b, c, d::{e, f}}` that starts `text`, and the
/// text after it.
fn group(text: &str) -> (Vec<&str>, &str) {
    let mut depth = 0;
    let mut items = Vec::new();
    let mut item_start = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    items.push(&text[item_start..i]);
                    return (items, &text[i + 1..]);
                }
            }
            ',' if depth == 1 => {
                items.push(&text[item_start..i]);
                item_start = i + 1;
            }
            _ => {}
        }
    }
    panic!("unclosed brace group: {text}")
}

/// The first path segment of every `crate::` path in `code`: `crate::a::B` gives `a`, and
/// `crate::{a::B, C}` gives `a` and `C`.
fn crate_references(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c == '$' || c == ':' || c == '_' || c.is_alphanumeric()) {
            continue;
        }
        let after = code[at + "crate::".len()..].trim_start();
        if after.starts_with('{') {
            let (items, _) = group(after);
            found.extend(
                items
                    .into_iter()
                    .map(leading_ident)
                    .filter(|ident| !ident.is_empty())
                    .map(str::to_string),
            );
        } else {
            found.push(leading_ident(after).to_string());
        }
    }
    found
}

/// What `lib.rs` re-exports: each name, with the module of `src/` it comes from (`None`: from
/// another crate).
fn reexports(lib: &str) -> HashMap<String, Option<String>> {
    let mut names = HashMap::new();
    for statement in lib.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let path = statement[at + "pub use ".len()..].trim();
        let module = leading_ident(path);
        let origin = ORDER.contains(&module).then(|| module.to_string());
        let imported: Vec<&str> = match path.find('{') {
            Some(brace) => group(&path[brace..]).0,
            None => vec![path.rsplit("::").next().unwrap_or(path)],
        };
        for item in imported {
            // `a::B as C` is known as `C`.
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = leading_ident(name.rsplit("::").next().unwrap_or(name));
            if !name.is_empty() {
                names.insert(name.to_string(), origin.clone());
            }
        }
    }
    names
}

#[test]
fn every_module_has_a_layer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("src/")
        .map(|entry| entry.expect("an entry of src/").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs") && name != "lib.rs")
        .map(|name| name.trim_end_matches(".rs").to_string())
        .collect();
    let listed: BTreeSet<String> = ORDER.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        files, listed,
        "the modules of src/ and ORDER differ: place the module in ORDER"
    );
}

#[test]
fn modules_use_only_earlier_modules() {
    let reexported = reexports(&code(&read("lib.rs")));
    let mut violations = Vec::new();
    let mut references = 0;
    for (layer, module) in ORDER.iter().enumerate() {
        for ident in crate_references(&code(&read(&format!("{module}.rs")))) {
            references += 1;
            let target = if ORDER.contains(&ident.as_str()) {
                ident.clone()
            } else {
                match reexported.get(&ident) {
                    Some(Some(origin)) => origin.clone(),
                    Some(None) => continue, // re-exported from another crate
                    None => panic!(
                        "src/{module}.rs refers to `crate::{ident}`, which is neither a module \
                         nor a name lib.rs re-exports"
                    ),
                }
            };
            let target_layer = ORDER.iter().position(|m| *m == target).expect("listed");
            if target_layer > layer {
                violations.push(format!(
                    "src/{module}.rs uses `crate::{ident}` (module `{target}`, a later layer)"
                ));
            }
        }
    }
    assert!(
        references > 0,
        "no `crate::` reference found: the scan is broken"
    );
    assert!(
        violations.is_empty(),
        "modules may use only the modules before them in {ORDER:?}:\n{}",
        violations.join("\n")
    );
}
