//! Replays every input kept for the fuzz targets (`fuzz/corpus/TARGET/`,
//! what libFuzzer found worth keeping, and `fuzz/regressions/TARGET/`, the
//! inputs of findings, fixed) through the same bodies (`make check` runs
//! this; `make fuzz` runs the fuzzers, see `scripts/fuzz`).

#[path = "../common/fuzz_bodies.rs"]
mod bodies;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            eprintln!("{}", f.display());
            body(&data);
            n += 1;
        }
    }
    // A corpus that went missing would make this test pass on nothing.
    assert!(n > 0, "no inputs kept for fuzz target {target}");
}

#[test]
fn cow_load() {
    replay("cow_load", bodies::cow_load);
}

#[test]
fn table_line() {
    replay("table_line", bodies::table_line);
}

#[test]
fn index_model() {
    replay("index_model", bodies::index_model);
}

#[test]
fn merge_walk() {
    replay("merge_walk", bodies::merge_walk);
}
