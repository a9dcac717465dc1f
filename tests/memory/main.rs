//! Peak memory of the real binary, in a test binary of its own: `wait4` reports a child's peak
//! as at least the peak of the process that spawned it (a child spawned with `posix_spawn`
//! shares the spawner's memory until it execs, and Linux keeps that high-water mark in the
//! child's account). So the binary is spawned by a launcher, this test binary started afresh
//! (`bounds::launcher`), whose own memory stays small whatever the tests beside it hold.

mod bounds;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
