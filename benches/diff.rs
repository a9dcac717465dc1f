//! The diff core: merging a sorted snapshot with sorted state, no I/O.
//! `cargo bench --bench diff`

use audience_sync::config::Kind;
use audience_sync::diff::{self, Op, OpSink, StateRow};
use audience_sync::record::SnapshotRecord;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

struct Count(u64);

impl OpSink for Count {
    fn apply(&mut self, _op: Op) -> anyhow::Result<()> {
        self.0 += 1;
        Ok(())
    }
}

fn inputs(n: usize, churn: f64) -> (Vec<StateRow>, Vec<SnapshotRecord>) {
    let state: Vec<StateRow> =
        (0..n).map(|i| StateRow { user_id: format!("user-{i:010}"), desired: "true".into(), told: true }).collect();
    let step = (1.0 / churn.max(1e-9)) as usize;
    let snapshot: Vec<SnapshotRecord> = (0..n + n / step.max(1))
        .filter(|i| i % step != 0 || *i >= n)
        .map(|i| SnapshotRecord { user_id: format!("user-{i:010}"), value: "true".into(), line: i as u64 })
        .collect();
    (state, snapshot)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for (n, churn) in [(100_000, 0.0), (100_000, 0.01), (1_000_000, 0.01)] {
        let (state, snapshot) = inputs(n, churn);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(format!("churn {churn}"), n), &n, |b, _| {
            b.iter(|| {
                let mut sink = Count(0);
                let st = state.iter().cloned().map(Ok);
                let sn = snapshot.iter().cloned().map(Ok);
                diff::merge(Kind::Audience, st, sn, &mut sink).unwrap();
                sink.0
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
