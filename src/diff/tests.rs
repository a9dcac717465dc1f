use super::*;
use crate::record::TRUE;

struct Collect(Vec<Op>);

impl OpSink for Collect {
    fn apply(&mut self, op: Op) -> anyhow::Result<()> {
        self.0.push(op);
        Ok(())
    }
}

fn row(user: &str, desired: &str, synced: Option<&str>) -> StateRow {
    StateRow { user_id: user.into(), desired: desired.to_string().into(), told: synced.is_some() }
}

fn snap(user: &str, value: &str) -> SnapshotRecord {
    SnapshotRecord { user_id: user.into(), value: value.to_string().into(), line: 0 }
}

fn set(user: &str, desired: &str) -> Op {
    let change = match desired {
        FALSE | NULL => Change::Exited,
        _ => Change::Entered,
    };
    Op::Set { user_id: user.into(), desired: desired.into(), change }
}

fn changed(user: &str, desired: &str) -> Op {
    Op::Set { user_id: user.into(), desired: desired.into(), change: Change::Changed }
}

fn run(kind: Kind, state: Vec<StateRow>, snapshot: Vec<SnapshotRecord>) -> (Vec<Op>, DiffCounts) {
    let mut sink = Collect(Vec::new());
    let counts = merge(kind, state.into_iter().map(Ok), snapshot.into_iter().map(Ok), &mut sink).unwrap();
    (sink.0, counts)
}

#[test]
fn audience_entries_exits_and_unchanged_members() {
    let state = vec![
        row("a", TRUE, Some(TRUE)),   // stays
        row("b", TRUE, Some(TRUE)),   // exits: was told true
        row("c", FALSE, Some(FALSE)), // ex-member, stays out
        row("d", FALSE, Some(TRUE)),  // pending exit, comes back
        row("e", TRUE, None),         // never acknowledged, leaves: forget
    ];
    let snapshot = vec![snap("a", TRUE), snap("d", TRUE), snap("f", TRUE)];
    let (ops, counts) = run(Kind::Audience, state, snapshot);
    assert_eq!(ops, vec![set("b", FALSE), set("d", TRUE), Op::Forget { user_id: "e".into() }, set("f", TRUE)]);
    assert_eq!(counts, DiffCounts { members_before: 3, snapshot_rows: 3, entered: 2, exited: 2, changed: 0 });
}

#[test]
fn trait_changes_removals_and_returns() {
    let state = vec![
        row("a", "1", Some("1")),
        row("b", "\"gold\"", Some("\"gold\"")),
        row("c", NULL, Some(NULL)),
        row("d", "false", Some("false")), // a boolean trait value false is a value, not an absence
    ];
    let snapshot = vec![snap("a", "2"), snap("c", "3"), snap("d", "false")];
    let (ops, counts) = run(Kind::ComputedTrait, state, snapshot);
    assert_eq!(ops, vec![changed("a", "2"), set("b", NULL), set("c", "3")]);
    assert_eq!(counts, DiffCounts { members_before: 3, snapshot_rows: 3, entered: 1, exited: 1, changed: 1 });
}

#[test]
fn unchanged_snapshot_yields_no_ops() {
    let state = vec![row("a", TRUE, Some(TRUE)), row("b", TRUE, None)];
    let (ops, counts) = run(Kind::Audience, state, vec![snap("a", TRUE), snap("b", TRUE)]);
    assert!(ops.is_empty());
    assert_eq!(counts.snapshot_rows, 2);
}

#[test]
fn initial_sync_enters_everyone_and_empty_snapshot_exits_everyone() {
    let (ops, counts) = run(Kind::Audience, vec![], vec![snap("a", TRUE), snap("b", TRUE)]);
    assert_eq!(ops, vec![set("a", TRUE), set("b", TRUE)]);
    assert_eq!(counts.entered, 2);
    let state = vec![row("a", TRUE, Some(TRUE)), row("b", TRUE, Some(TRUE))];
    let (ops, counts) = run(Kind::Audience, state, vec![]);
    assert_eq!(ops, vec![set("a", FALSE), set("b", FALSE)]);
    assert_eq!(counts.exited, 2);
}

#[test]
fn a_failing_side_fails_the_merge() {
    let mut sink = Collect(Vec::new());
    let snapshot = vec![Ok(snap("a", TRUE)), Err(anyhow::anyhow!("broken line"))].into_iter();
    let err =
        merge(Kind::Audience, Vec::<anyhow::Result<StateRow>>::new().into_iter(), snapshot, &mut sink).unwrap_err();
    assert!(err.to_string().contains("broken line"));
}
