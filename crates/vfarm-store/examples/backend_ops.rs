//! Operation rates of the state store on PostgreSQL against SQLite in the same run, as a
//! Markdown table (`crates/vfarm-store/benches/store.sh` runs it for BENCHMARKS.md). Not a
//! test: it asserts only that the operations did what they should.
//! `VFARM_TEST_POSTGRES=postgres://vfarm:vfarm@127.0.0.1/vfarm_test \
//!   cargo run --release -p vfarm-store --features test-util --example backend_ops [N]`

use std::time::Instant;

use vfarm_store::instances::{InstanceRow, StateChange};
use vfarm_store::testing::TestDb;
use vfarm_store::{now, Store};

fn inst(i: usize) -> InstanceRow {
    InstanceRow {
        id: format!("{i:012x}"),
        name: Some(format!("n{i}")),
        image_id: "img".into(),
        driver: "oci".into(),
        owner: "bench".into(),
        state: "creating".into(),
        exit_code: None,
        hostname: format!("h{i}"),
        spec: "{}".into(),
        created: now(),
        started: None,
        expires: None,
        updated: now(),
        error: None,
    }
}

/// Operations per second of `f`, which does `n` of them.
fn rate(n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    n as f64 / t.elapsed().as_secs_f64()
}

/// (operation, ops/s) on one store.
fn measure(s: &Store, n: usize) -> Vec<(String, f64)> {
    let id = |i: usize| format!("{i:012x}");
    let lists = 20;
    vec![
        (
            format!("`insert_instance` (transaction + event), {n}"),
            rate(n, || {
                (0..n).for_each(|i| s.insert_instance(&inst(i)).unwrap())
            }),
        ),
        (
            format!("`set_instance_state` (compare-and-set + event), {n}"),
            rate(n, || {
                (0..n).for_each(|i| {
                    let ch = StateChange::default();
                    assert!(s
                        .set_instance_state("bench", &id(i), "creating", "created", &ch)
                        .unwrap());
                })
            }),
        ),
        (
            format!("`instance` (one row by id), {n}"),
            rate(n, || {
                (0..n).for_each(|i| assert!(s.instance(&id(i)).unwrap().is_some()))
            }),
        ),
        (
            format!("`instances_brief` (all {n} rows), {lists} times"),
            rate(lists, || {
                (0..lists).for_each(|_| assert_eq!(s.instances_brief().unwrap().len(), n))
            }),
        ),
    ]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let sqlite_db = TestDb::sqlite();
    let sqlite = measure(&sqlite_db.open(), n);
    let pg = TestDb::postgres().map(|db| measure(&db.open(), n));
    println!("| operation | PostgreSQL (loopback TCP) | SQLite (baseline, same run) | ratio |");
    println!("|---|---|---|---|");
    for (i, (what, base)) in sqlite.iter().enumerate() {
        match &pg {
            Some(pg) => println!(
                "| {what} | {:.0}/s | {base:.0}/s | {:.2} |",
                pg[i].1,
                pg[i].1 / base
            ),
            None => {
                println!("| {what} | not measured (`VFARM_TEST_POSTGRES=off`) | {base:.0}/s | |")
            }
        }
    }
}
