//! Records the versions of the benchmarked crates (from the workspace's Cargo.lock) and of rustc,
//! so that every JSON line says exactly what was measured.

use std::process::Command;

const CRATES: &[&str] = &["moka", "cached", "tokio", "redis", "hdrhistogram"];

fn main() {
    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    println!("cargo:rerun-if-changed={lock_path}");
    let lock = std::fs::read_to_string(lock_path).unwrap_or_default();
    for name in CRATES {
        let version = lock_version(&lock, name).unwrap_or_else(|| "unknown".to_owned());
        let var = format!("BENCH_VERSION_{}", name.to_uppercase());
        println!("cargo:rustc-env={var}={version}");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BENCH_RUSTC_VERSION={version}");
}

/// The highest version of `name` in the lock file (a workspace may hold several).
fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.match_indices(&needle)
        .filter_map(|(at, _)| {
            let rest = &lock[at + needle.len()..];
            rest.split('"').next().map(str::to_owned)
        })
        .max_by_key(|v| {
            v.split('.')
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
}
