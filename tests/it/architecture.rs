//! The architecture's invariants (docs/ARCHITECTURE.md), checked on the
//! source itself, so a reviewer does not have to: which crate may depend on
//! which, and which top-level module of the product may use which.
//!
//! The product's top-level modules are ranked in [`LAYERS`], lowest first. A
//! module may use (`crate::x`) modules ranked below it; a use of one ranked
//! at or above it is a dependency the wrong way, allowed only while it is
//! listed in [`DEBTS`] — each a known cycle or upward edge the architecture
//! document names. The list must only shrink: a new upward edge fails the
//! test, and so does a listed debt that has been paid (remove it here and in
//! the document).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The product's top-level modules, lowest first; modules on one line share
/// a rank (and may not use each other).
const LAYERS: &[&[&str]] = &[
    &["time", "retry", "shutdown"],
    &["domain"],
    &["events"],
    &["delivery"],
    &["observe"],
    &["health"],
    &["taptalk"],
    &["storage"],
    &["broker"],
    &["relay"],
    &["pipeline"],
    &["purge"],
    &["worker"],
    &["config"],
    &["startup"],
    &["commands"],
];

/// Dependencies that run the wrong way today, `from → to`, each a debt
/// docs/ARCHITECTURE.md lists under "Known debts".
const DEBTS: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for the crate
/// roots).
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root().join("src")).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every `crate::<module>` a file's code names (comments left out).
fn uses_in(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            // A `//` inside a string (a URL) is not a comment, but no use of
            // `crate::` follows one on this codebase's lines.
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
            rest = after;
        }
        // `use crate::{a, b::c}` names several at once.
        if let Some(at) = code.find("crate::{") {
            let list = &code[at + "crate::{".len()..];
            for part in list.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        }
    }
    used
}

/// `from → to` for every top-level module `from` whose files use `to`.
fn module_edges() -> BTreeMap<(String, String), PathBuf> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut edges = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for to in uses_in(&text) {
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| file.clone());
            }
        }
    }
    edges
}

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("top-level module `{module}` is not in LAYERS: give it a rank"))
}

#[test]
fn every_top_level_module_has_a_rank_and_every_rank_a_module() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))
        })
        .map(|l| l.trim_end_matches(';'))
        .collect();
    let ranked: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    assert_eq!(declared, ranked, "src/lib.rs's modules and LAYERS differ");
}

#[test]
fn modules_use_only_modules_below_them_but_for_the_listed_debts() {
    let edges = module_edges();
    assert!(
        edges.len() > 30,
        "the scan found the product's uses ({} edges): {edges:?}",
        edges.len()
    );
    let debts: BTreeSet<(String, String)> = DEBTS
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    let mut wrong = Vec::new();
    for ((from, to), file) in &edges {
        if rank(to) >= rank(from) && !debts.contains(&(from.clone(), to.clone())) {
            wrong.push(format!(
                "{from} → {to} (first in {})",
                file.strip_prefix(root()).unwrap_or(file).display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies the wrong way (a module may use only those below it in LAYERS):\n{}",
        wrong.join("\n")
    );
    let paid: Vec<String> = debts
        .iter()
        .filter(|edge| !edges.contains_key(*edge))
        .map(|(a, b)| format!("{a} → {b}"))
        .collect();
    assert!(
        paid.is_empty(),
        "debts paid: remove them from DEBTS and from docs/ARCHITECTURE.md:\n{}",
        paid.join("\n")
    );
}

#[test]
fn the_scan_sees_uses_in_all_their_spellings() {
    let uses = uses_in(
        "use crate::broker::Publisher;\n\
         use crate::{config, observe::scrub};\n\
         let x = crate::time::Later::later(now);\n\
         // crate::startup in a comment\n",
    );
    let expected: BTreeSet<String> = ["broker", "config", "observe", "time"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(uses, expected);
}

#[test]
fn the_architecture_document_lists_the_same_debts() {
    let doc =
        std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    for (from, to) in DEBTS {
        let spelled = format!("`{from}` → `{to}`");
        assert!(
            doc.contains(&spelled),
            "docs/ARCHITECTURE.md names the debt {spelled}"
        );
    }
}

/// `[dependencies]` of a crate's manifest: the names, and whether optional.
fn dependencies(manifest: &Path) -> BTreeMap<String, bool> {
    let text = std::fs::read_to_string(manifest).expect("a Cargo.toml");
    let mut deps = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if !inside || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((name, spec)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").to_owned();
            deps.insert(name, spec.contains("optional = true"));
        }
    }
    deps
}

#[test]
fn the_crates_depend_one_way() {
    let product = dependencies(&root().join("Cargo.toml"));
    let api = dependencies(&root().join("lib/taptalk-api/Cargo.toml"));
    let stand_in = dependencies(&root().join("lib/fake-taptalk/Cargo.toml"));
    let bench = dependencies(&root().join("bench/Cargo.toml"));
    // The wire contract depends on neither the product nor the stand-in.
    for crate_name in ["taptalk-ticket-worker", "fake-taptalk"] {
        assert!(
            !api.contains_key(crate_name),
            "taptalk-api depends on {crate_name}"
        );
    }
    assert!(api.len() <= 6, "taptalk-api stays small: {api:?}");
    // The stand-in knows the wire contract, never the product.
    assert!(stand_in.contains_key("taptalk-api"));
    assert!(!stand_in.contains_key("taptalk-ticket-worker"));
    // The product reaches the stand-in only through its optional feature.
    assert_eq!(product.get("taptalk-api"), Some(&false));
    assert_eq!(
        product.get("fake-taptalk"),
        Some(&true),
        "the product's dependency on the stand-in is optional"
    );
    // The benchmark drives the product and the stand-in; nothing depends
    // on it, so it is never part of the shipped binary.
    assert_eq!(bench.get("taptalk-ticket-worker"), Some(&false));
    assert_eq!(bench.get("fake-taptalk"), Some(&false));
    for (name, deps) in [
        ("taptalk-ticket-worker", &product),
        ("taptalk-api", &api),
        ("fake-taptalk", &stand_in),
    ] {
        assert!(
            !deps.contains_key("ticket-bench"),
            "{name} depends on ticket-bench"
        );
    }
    let dev = dev_dependencies(&root().join("Cargo.toml"));
    assert!(
        !dev.contains("ticket-bench"),
        "the product's tests depend on ticket-bench"
    );
    let commands =
        std::fs::read_to_string(root().join("src/commands/mod.rs")).expect("src/commands/mod.rs");
    assert!(
        !commands.contains("mod bench;"),
        "the benchmark lives in bench/, not in the product's commands"
    );
}

/// The names under `[dev-dependencies]` of a crate's manifest.
fn dev_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("a Cargo.toml");
    let mut inside = false;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dev-dependencies]";
            continue;
        }
        if inside
            && !line.starts_with('#')
            && let Some((name, _)) = line.split_once('=')
        {
            names.insert(name.trim().trim_end_matches(".workspace").to_owned());
        }
    }
    names
}
