//! How SQLite itself is set up, once per process, before its first connection (the state's or a
//! SQL source's): its memory.
//!
//! A first sync writes tens of millions of rows through SQLite, and each statement allocates
//! (cells, pages, cursors): with memory statistics on, every allocation takes a global mutex,
//! and the system allocator costs more than mimalloc, our Rust allocator (figures in
//! docs/performance.md). Later calls (SQLite already running, say in a test that opened a connection first)
//! are refused by SQLite and change nothing; so every path into SQLite calls it first.

use std::ffi::{c_int, c_void};

use rusqlite::ffi;

pub(crate) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(malloc),
            xFree: Some(free),
            xRealloc: Some(realloc),
            xSize: Some(size),
            xRoundup: Some(roundup),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: sqlite3_config is safe to call before sqlite3_initialize and returns
        // SQLITE_MISUSE (ignored) after it. SQLITE_CONFIG_MEMSTATUS takes one int;
        // SQLITE_CONFIG_MALLOC a pointer to methods it copies before returning.
        unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const ffi::sqlite3_mem_methods);
        }
    });
}

// SQLite's allocator contract: sizes are positive ints, blocks 8-byte aligned (mimalloc's are
// 16), `xSize` at least the size asked for, `xFree` and `xRealloc` only of its own blocks.

unsafe extern "C" fn malloc(n: c_int) -> *mut c_void {
    // SAFETY: any size is allowed; null on failure, which SQLite reports as SQLITE_NOMEM.
    unsafe { libmimalloc_sys::mi_malloc(n.max(0) as usize) }
}

unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: SQLite frees only what `malloc` or `realloc` returned (or null).
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: as `free`, for `p`.
    unsafe { libmimalloc_sys::mi_realloc(p, n.max(0) as usize) }
}

unsafe extern "C" fn size(p: *mut c_void) -> c_int {
    // SAFETY: as `free`; SQLite's blocks are far below 2 GiB.
    unsafe { libmimalloc_sys::mi_usable_size(p) as c_int }
}

unsafe extern "C" fn roundup(n: c_int) -> c_int {
    (n + 7) & !7
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_allocates_from_mimalloc() {
        configure_sqlite();
        // SAFETY: a block from sqlite3_malloc, checked, then given back to sqlite3_free.
        unsafe {
            let p = ffi::sqlite3_malloc(100);
            assert!(!p.is_null());
            assert!(libmimalloc_sys::mi_is_in_heap_region(p), "SQLite's block is not mimalloc's");
            assert!(ffi::sqlite3_msize(p) >= 100);
            ffi::sqlite3_free(p);
        }
    }
}
