//! Generates a large audience snapshot (CSV, shuffled) for benchmarks.
//!
//! `cargo run --release --example gen_snapshot -- --members 1000000 [--churn 0.01] [--seed 7] [--offset 0] > FILE`
//!
//! Members are `user-0000000000` .. for `--members` (numbered from `--offset`, so that several
//! audiences can hold users of their own); with `--churn C` a share C of them is left
//! out (exits) and as many new users are added (entries), so a churned file diffed against the
//! plain one has C exits and C entries. The same arguments always give the same file.

use std::io::{BufWriter, Write};

fn main() {
    let mut members: u64 = 1_000_000;
    let mut churn: f64 = 0.0;
    let mut seed: u64 = 7;
    let mut offset: u64 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--members" => members = value().parse().expect("--members N"),
            "--churn" => churn = value().parse().expect("--churn FRACTION"),
            "--seed" => seed = value().parse().expect("--seed N"),
            "--offset" => offset = value().parse().expect("--offset N"),
            other => panic!("unknown argument {other}; use --members N --churn C --seed S --offset N"),
        }
    }
    let mut rng = SplitMix64(seed);
    let churned = (members as f64 * churn).round() as u64;
    // Exits: every member whose (seeded) draw falls under the churn share, up to `churned`.
    let mut ids: Vec<u64> = Vec::with_capacity(members as usize);
    let mut exits = 0;
    let mut pick = SplitMix64(seed ^ 0x5eed);
    for i in 0..members {
        if exits < churned && (pick.next() as f64 / u64::MAX as f64) < churn * 1.05 {
            exits += 1;
            continue;
        }
        ids.push(i);
    }
    // Entries: as many new users as left.
    ids.extend(members..members + exits);
    // Fisher-Yates shuffle: snapshots from a warehouse come in no useful order.
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    writeln!(out, "user_id").unwrap();
    for id in ids {
        writeln!(out, "user-{:010}", offset + id).unwrap();
    }
    out.flush().unwrap();
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
