//! The crates' layering (README "Layout"), checked on the locked dependency graph: core ←
//! {udf, engine} ← the app, and what each crate must not pull in, directly or through others.

use std::collections::BTreeSet;
use std::process::Command;

/// Names of every package `krate` depends on for this machine, directly or not (normal and
/// build dependencies: dev-dependencies do not ship), as `cargo tree` reads them from the lock
/// file, offline.
fn closure(krate: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", krate, "-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .args(["--locked", "--offline"])
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != krate)
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "{krate} has dependencies");
    names
}

fn assert_free_of(krate: &str, forbidden: &[&str]) {
    let all = closure(krate);
    let found: Vec<&String> = all.iter().filter(|n| forbidden.iter().any(|f| n.starts_with(f))).collect();
    assert!(found.is_empty(), "{krate} must not depend on {found:?}");
    eprintln!("{krate}: {} packages, none of {forbidden:?}", all.len());
}

#[test]
fn the_engine_has_no_sql_or_arrow() {
    assert_free_of("skyscore-engine", &["datafusion", "ballista", "arrow", "parquet", "sqlparser", "skyscore-udf"]);
}

#[test]
fn the_udfs_have_no_model_code_or_cluster() {
    assert_free_of("skyscore-udf", &["candle", "tokenizers", "redb", "ballista", "skyscore-engine", "gemm"]);
}

#[test]
fn the_core_is_the_contract_only() {
    assert_free_of(
        "skyscore-core",
        &["datafusion", "arrow", "ballista", "candle", "tokenizers", "redb", "skyscore-udf", "skyscore-engine"],
    );
}

#[test]
fn only_the_app_brings_the_cluster() {
    let app = closure("skyscore");
    for needed in ["skyscore-engine", "skyscore-udf", "skyscore-core", "ballista-executor", "datafusion-cli"] {
        assert!(app.contains(needed), "the app depends on {needed}");
    }
}
