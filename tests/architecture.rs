//! The layers of `src/` import one way. Every `crate::…` path (in `use` lists, nested groups and
//! inline paths, `super::` chains that climb to the crate root included) is checked against the
//! table below; a module not in the table fails too, so a new top-level module must be placed.
//! Also: only the gpu and kernels layers (and the bench / CLI above them) name `wgpu::`, and only
//! the `env` module reads the process environment (`env::var`), besides the CLI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers, lowest first, and what each may import. The order is a total order, so no cycle can
/// pass: a layer lists only layers above it in this table.
const LAYERS: &[(&str, &[&str])] = &[
    ("types", &[]),
    ("env", &[]),
    ("shaders", &[]),
    ("gpu", &["types", "env", "shaders"]),
    ("kernels", &["types", "shaders", "gpu"]),
    ("formats", &["types"]),
    ("model", &["types", "gpu", "kernels", "formats"]),
    ("train", &["types", "env", "gpu", "kernels", "formats", "model"]),
    ("bench", &["types", "shaders", "gpu", "kernels", "formats", "model", "train"]),
    ("datasets", &["types", "formats", "train"]),
    ("cli", &["types", "env", "shaders", "gpu", "kernels", "formats", "model", "train", "bench", "datasets"]),
];

/// Layers whose code may name `wgpu::` (the model and everything on it go through `gpu`).
const WGPU_LAYERS: &[&str] = &["gpu", "kernels", "shaders", "bench", "cli"];
/// Layers that may read the process environment.
const ENV_LAYERS: &[&str] = &["env", "cli"];

fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, a)| *a)
}

/// The module path of a file under `src/`: `src/a/b/c.rs` → [a, b, c], `src/a/mod.rs` → [a].
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The layer a file belongs to: its top-level module (`main.rs` and `cli/` are the CLI).
fn layer_of(module: &[String]) -> String {
    match module.first().map(String::as_str) {
        None => "root".into(),
        Some("main") => "cli".into(),
        Some(top) => top.into(),
    }
}

/// Source with comments, string and char literals blanked out (lengths kept), so a path in a
/// doc comment or a message is not an import.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && {
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            b.get(j) == Some(&b'"') && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        } {
            // Raw string r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b[j] == b'#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == b'"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&b'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\''
            && i + 2 < b.len()
            && (b[i + 2] == b'\'' || (b[i + 1] == b'\\' && b[i + 3..].iter().take(8).any(|&c| c == b'\'')))
        {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The top-level modules a `use` tree rooted at the crate names: `{a, b::c, d::{e, f}}` → a, b, d.
fn group_heads(s: &str, out: &mut Vec<String>) {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    if let Some(id) = ident_at(rest[start..].trim_start()) {
                        out.push(id.to_string());
                    }
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    if let Some(id) = ident_at(rest[start..].trim_start()) {
                        out.push(id.to_string());
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
    } else if let Some(id) = ident_at(s) {
        out.push(id.to_string());
    }
}

/// Every top-level module of the crate that `code` (stripped) refers to from module `module`.
fn referenced_modules(module: &[String], code: &str) -> BTreeSet<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let word_start = |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
    for (i, _) in code.match_indices("crate::") {
        if word_start(i) && !code[..i].ends_with("$") {
            group_heads(&code[i + "crate::".len()..], &mut out);
        }
    }
    for (i, _) in code.match_indices("super::") {
        if !word_start(i) || (i >= 7 && &code[i - 7..i] == "super::") {
            continue;
        }
        // A chain of `super::`s climbing from this file's module.
        let mut depth = 0;
        let mut j = i;
        while code[j..].starts_with("super::") {
            depth += 1;
            j += "super::".len();
        }
        if depth >= module.len() {
            group_heads(&code[j..], &mut out);
        }
    }
    out.into_iter().collect()
}

/// Whether `code` names the path `p` as a path of its own (`wgpu::X`, not `peft_wgpu::X`).
fn names_path(code: &str, p: &str) -> bool {
    let b = code.as_bytes();
    code.match_indices(p).any(|(i, _)| i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every violation in the tree under `src`, one line each.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let tops: BTreeSet<String> = LAYERS.iter().map(|(l, _)| l.to_string()).collect();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap();
        let module = module_path(rel);
        let layer = layer_of(&module);
        let code = strip(&std::fs::read_to_string(f).unwrap());
        let shown = rel.display();
        if layer == "root" {
            continue; // lib.rs: module declarations and re-exports for users of the library
        }
        let Some(may) = allowed(&layer) else {
            bad.push(format!("{shown}: module `{layer}` is in no layer of tests/architecture.rs"));
            continue;
        };
        for m in referenced_modules(&module, &code) {
            if m == layer || m == "self" || m == "super" {
                continue;
            }
            if !tops.contains(&m) {
                continue; // a crate-root item re-exported in lib.rs (e.g. `crate::Gpu`): checked below
            }
            if !may.contains(&m.as_str()) {
                bad.push(format!("{shown}: layer `{layer}` imports `{m}` (allowed: {may:?})"));
            }
        }
        if !WGPU_LAYERS.contains(&layer.as_str()) && names_path(&code, "wgpu::") {
            bad.push(format!("{shown}: layer `{layer}` names wgpu:: directly (go through the gpu layer)"));
        }
        if !ENV_LAYERS.contains(&layer.as_str()) && (names_path(&code, "env::var") || names_path(&code, "env::set_var"))
        {
            bad.push(format!("{shown}: layer `{layer}` reads the environment (only src/env.rs and the CLI may)"));
        }
    }
    bad
}

#[test]
fn layers_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "{} layering violation(s):\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn crate_root_reexports_are_not_a_way_around_the_layers() {
    // `crate::Gpu` etc. (lib.rs re-exports) would hide the layer they come from: the library
    // itself must import through the module path.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tops: BTreeSet<&str> = LAYERS.iter().map(|(l, _)| *l).collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_path(&rel);
        if layer_of(&module) == "root" {
            continue;
        }
        let code = strip(&std::fs::read_to_string(&f).unwrap());
        for m in referenced_modules(&module, &code) {
            if !tops.contains(m.as_str()) && m != "self" && m != "super" {
                bad.push(format!("{}: crate::{m}", rel.display()));
            }
        }
    }
    assert!(bad.is_empty(), "import through the module path, not the crate root:\n{}", bad.join("\n"));
}

/// `code` (stripped) without its `#[cfg(test)] mod … { … }` blocks: tests may use their siblings.
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        let after = rest[i + "#[cfg(test)]".len()..].trim_start();
        let inline_mod = (after.starts_with("mod ") || after.starts_with("pub(crate) mod "))
            && after.find(['{', ';']).is_some_and(|j| after.as_bytes()[j] == b'{');
        out.push_str(&rest[..i]);
        if !inline_mod {
            out.push_str("#[cfg(test)]");
            rest = &rest[i + "#[cfg(test)]".len()..];
            continue;
        }
        let open = i + rest[i..].find('{').unwrap();
        let mut depth = 0;
        let mut end = rest.len();
        for (j, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Within each layer, the submodules (`bench::cli`, `bench::memory`, …) import one way too: the
/// graph of `crate::<layer>::<sub>` / `super::<sub>` references between sibling submodules has
/// no cycle. Returns each cycle found as `a -> b -> … -> a`.
fn sibling_cycles(src: &Path) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let module = module_path(f.strip_prefix(src).unwrap());
        if module.len() < 2 {
            continue;
        }
        let (layer, sub) = (module[0].clone(), module[1].clone());
        if module.last().is_some_and(|m| m == "tests" || m.starts_with("tests_") || m == "test_support") {
            continue;
        }
        let code = without_test_modules(&strip(&std::fs::read_to_string(f).unwrap()));
        let mut targets = Vec::new();
        let prefix = format!("crate::{layer}::");
        for (i, _) in code.match_indices(&prefix) {
            group_heads(&code[i + prefix.len()..], &mut targets);
        }
        // `super::x` from a direct child file of the layer (module depth 2) names a sibling.
        if module.len() == 2 {
            for (i, _) in code.match_indices("super::") {
                if i >= 7 && &code[i - 7..i] == "super::" || code[i + 7..].starts_with("super::") {
                    continue;
                }
                group_heads(&code[i + 7..], &mut targets);
            }
        }
        let entry = edges.entry((layer.clone(), sub.clone())).or_default();
        for t in targets {
            if t != sub
                && files
                    .iter()
                    .any(|g| module_path(g.strip_prefix(src).unwrap()).starts_with(&[layer.clone(), t.clone()]))
            {
                entry.insert(t);
            }
        }
    }
    let mut cycles = Vec::new();
    for (layer, start) in edges.keys() {
        // Depth-first search from `start` back to itself.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(&(layer.clone(), node)).into_iter().flatten() {
                if next == start {
                    // Reported once, from its smallest member.
                    if path.iter().skip(1).all(|n| n > start) {
                        let mut c = path.clone();
                        c.push(start.clone());
                        cycles.push(format!("{layer}: {}", c.join(" -> ")));
                    }
                } else if !path.contains(next) && next > start {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    cycles
}

#[test]
fn submodules_of_a_layer_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cycles = sibling_cycles(&src);
    assert!(cycles.is_empty(), "import cycles between submodules:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let tmp = std::env::temp_dir().join(format!("peft-arch-cycle-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("bench")).unwrap();
    std::fs::write(tmp.join("bench/mod.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(tmp.join("bench/a.rs"), "use super::b::X;\n").unwrap();
    std::fs::write(tmp.join("bench/b.rs"), "fn f() { crate::bench::a::g(); }\n").unwrap();
    // A test module's imports do not count.
    std::fs::write(
        tmp.join("bench/c.rs"),
        "use super::a::Y;\n#[cfg(test)]\nmod tests {\n    use crate::bench::c::Z;\n}\n",
    )
    .unwrap();
    std::fs::write(tmp.join("bench/d.rs"), "#[cfg(test)]\nmod tests { use crate::bench::c::W; }\npub fn d() {}\n")
        .unwrap();
    let cycles = sibling_cycles(&tmp);
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(cycles, ["bench: a -> b -> a"]);
}

#[test]
fn the_layer_table_is_ordered() {
    for (i, (layer, may)) in LAYERS.iter().enumerate() {
        for m in *may {
            let j = LAYERS.iter().position(|(l, _)| l == m).unwrap_or_else(|| panic!("{layer}: unknown layer {m}"));
            assert!(j < i, "{layer} may import {m}, which is not below it: the table must stay acyclic");
        }
    }
}

#[test]
fn the_checker_sees_every_form_of_import() {
    let m = |p: &str| module_path(Path::new(p));
    let refs = |p: &str, code: &str| referenced_modules(&m(p), &strip(code)).into_iter().collect::<Vec<_>>();
    assert_eq!(refs("formats/adapterhub/mod.rs", "use crate::model::config::BertConfig;"), ["model"]);
    assert_eq!(refs("formats/a.rs", "use crate::{types::Activation, model::{x, y}, gpu};"), ["gpu", "model", "types"]);
    assert_eq!(refs("formats/a.rs", "fn f() { let g = crate::kernels::foo(); }"), ["kernels"]);
    // `super::super::` from src/formats/a/b.rs climbs to the crate root.
    assert_eq!(refs("formats/a/b.rs", "use super::super::super::model::X;"), ["model"]);
    assert_eq!(refs("formats/a/b.rs", "use super::super::c::X;"), Vec::<String>::new());
    // Comments and strings are not imports.
    assert!(refs("formats/a.rs", "// crate::model\n/// see crate::model::X\nlet s = \"crate::gpu\";").is_empty());
    assert!(refs("formats/a.rs", "let s = r#\"crate::gpu\"#; let c = '\"'; let l: &'a str;").is_empty());
    assert!(names_path("use wgpu::Device;", "wgpu::") && !names_path("use peft_wgpu::Gpu;", "wgpu::"));
    let tmp = std::env::temp_dir().join(format!("peft-arch-{}", std::process::id()));
    let dir = tmp.join("formats");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mod.rs"), "use crate::gpu::Gpu;\nfn f() { wgpu::Features::empty(); }\n").unwrap();
    std::fs::write(tmp.join("newthing.rs"), "fn f() {}\n").unwrap();
    let bad = violations(&tmp);
    std::fs::remove_dir_all(&tmp).unwrap();
    assert_eq!(bad.len(), 3, "{bad:#?}");
}

/// Queue writes into pooled buffers go through `Gpu::write_buffer` (the pool's `write`): a raw
/// `queue.write_buffer` into a tensor that `zeros` took from the pool runs before the pool's
/// pending clear of that buffer (queue writes precede a submit's commands), which then wipes it —
/// as it did the f16 weight slots when the pool handed them a reused buffer. Only `src/gpu`
/// (parameter blocks, the pool itself) may write the queue directly.
#[test]
fn queue_writes_outside_the_gpu_module_go_through_the_pool() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut raw = vec![];
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        if rel.starts_with("gpu") {
            continue;
        }
        let code = strip(&std::fs::read_to_string(&f).unwrap());
        if code.contains("queue.write_buffer(") || code.contains("queue().write_buffer(") {
            raw.push(rel.display().to_string());
        }
    }
    assert!(raw.is_empty(), "raw queue writes (use Gpu::write_buffer): {raw:?}");
}
