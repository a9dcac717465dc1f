//! Peak memory of the real binary, in a test binary of its own: `wait4` reports a child's peak
//! as at least the resident memory of the process that spawned it (a child spawned with
//! `posix_spawn` shares the spawner's memory until it execs, and Linux keeps that high-water mark
//! in the child's account). Beside the end-to-end suite's hundred tests, the spawner's own
//! memory was over the bound these tests check; here it stays small.

mod bounds;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
