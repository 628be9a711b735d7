//! The runtime crate's modules import only downward (see the README's "Architecture"):
//! every `crate::<module>` path in code (not in comments) names a module of a lower
//! layer than the file it is in, or the file's own module. Host and client share a
//! layer, so neither may import the other. A file that imports upward fails this test
//! with the line that does it.

use std::path::{Path, PathBuf};

/// Each module of `loopback-singleton/src` and its layer, bottom first.
const LAYERS: &[(&str, u32)] = &[
    ("protocol", 0),
    ("sys", 0),
    ("error", 1),
    ("options", 1),
    ("shm", 1),
    ("schema", 0),
    ("service", 2),
    ("runtime_dir", 2),
    ("spawn", 3),
    ("host", 4),
    ("client", 4),
    ("admin", 4),
    ("single_instance", 5),
    ("fuzzing", 6),
];

/// Names re-exported at the crate root, and the module each comes from (a path such as
/// `crate::Error` imports that module).
const ROOT_NAMES: &[(&str, &str)] = &[
    ("Error", "error"),
    ("ServeOptions", "options"),
    ("Fingerprint", "protocol"),
    ("DaemonInfo", "protocol"),
    ("ProtocolError", "protocol"),
    ("RemoteError", "protocol"),
    ("Stats", "protocol"),
    ("MethodStats", "protocol"),
    ("Latency", "protocol"),
    ("Schema", "schema"),
    ("Service", "service"),
    ("Dispatch", "service"),
    ("Client", "client"),
    ("Builder", "client"),
    ("AsyncClient", "client"),
    ("Call", "client"),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|&(_, layer)| layer)
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// The module a path after `crate::` leads into: `crate::host::serve` is `host`,
/// `crate::Error` is `error`.
fn target_of(path: &str) -> Option<&str> {
    let first: String = path
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    LAYERS
        .iter()
        .map(|&(name, _)| name)
        .find(|name| *name == first)
        .or_else(|| {
            ROOT_NAMES
                .iter()
                .find(|(name, _)| *name == first)
                .map(|&(_, module)| module)
        })
}

#[test]
fn runtime_modules_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("loopback-singleton/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" {
            continue;
        }
        let own = layer(&module).unwrap_or_else(|| {
            panic!("{module} (from {relative:?}) has no layer: add it to LAYERS and the README")
        });
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                // `loopback_singleton::...` and `$crate::` are not this crate's paths.
                if line[..at].ends_with('_') || line[..at].ends_with('$') {
                    continue;
                }
                let rest = &line[at + "crate::".len()..];
                let Some(target) = target_of(rest) else {
                    violations.push(format!(
                        "{}:{}: `crate::{}` names no known module",
                        relative.display(),
                        number + 1,
                        rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap()
                    ));
                    continue;
                };
                checked += 1;
                if target != module && layer(target).unwrap() >= own {
                    violations.push(format!(
                        "{}:{}: {module} (layer {own}) imports {target} (layer {}): {}",
                        relative.display(),
                        number + 1,
                        layer(target).unwrap(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports found: is {src:?} still the runtime crate?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    // The same rules on a made-up line: a client file naming the host.
    let target = target_of("host::serve").unwrap();
    assert_eq!(target, "host");
    assert!(layer(target).unwrap() >= layer("client").unwrap());
    assert_eq!(target_of("Error"), Some("error"));
    assert_eq!(target_of("nonsense"), None);
}
