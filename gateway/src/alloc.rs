//! The process's heap allocator: mimalloc, or the C library's malloc when
//! `LLM_GATEWAY_ALLOCATOR=system` is set at start.
//!
//! Why mimalloc: at full load glibc's malloc and free took 17 % of the gateway's CPU (a
//! request makes about 110 allocations, some of them the 8–14 KiB buffers and futures that
//! send glibc to its slow, consolidating path); mimalloc's per-thread free lists take about
//! half that (README, Benchmarks). Why a switch: tools that count allocations by replacing
//! `malloc` (valgrind's dhat, heaptrack) see none of mimalloc's, and a user who suspects
//! the allocator can compare without a rebuild.

// A global allocator cannot be written without it; this is the only module that may.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

/// The environment variable that selects the C library's allocator (`system`).
pub const ENV: &CStr = c"LLM_GATEWAY_ALLOCATOR";

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

/// Decided at the first allocation, before `main` starts a thread, and never changed after:
/// a block must be freed by the allocator that gave it.
static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The global allocator of the gateway's binaries (`#[global_allocator]` in each).
pub struct Allocator;

/// The allocator [`Allocator`] chose: `mimalloc`, or `system` (also when nothing has asked it
/// yet, as where it is not the global allocator).
pub fn in_use() -> &'static str {
    match CHOICE.load(Ordering::Relaxed) {
        MIMALLOC => "mimalloc",
        _ => "system",
    }
}

#[inline]
fn use_system() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        MIMALLOC => false,
        SYSTEM => true,
        _ => decide(),
    }
}

#[cold]
fn decide() -> bool {
    // std's environment readers allocate, which would recurse into this allocator.
    // SAFETY: getenv with a NUL-terminated name; the pointer it returns is read at once,
    // before anything could change the environment (std's `set_var` is itself unsafe).
    let system = unsafe {
        let v = libc::getenv(ENV.as_ptr());
        !v.is_null() && CStr::from_ptr(v).to_bytes() == b"system"
    };
    CHOICE.store(if system { SYSTEM } else { MIMALLOC }, Ordering::Relaxed);
    system
}

// SAFETY: every call goes to one of two sound allocators, the same one for the process's
// whole life (see CHOICE), so each block is freed or grown by the allocator that made it.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if use_system() {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if use_system() {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if use_system() {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if use_system() {
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_the_chosen_allocator() {
        let a = Allocator;
        for size in [1usize, 24, 1000, 16 << 10, 1 << 20] {
            let layout = Layout::from_size_align(size, 16).unwrap();
            // SAFETY: a non-zero layout; the block is written within its size and freed by
            // the allocator that made it, with its current layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                *p = 7;
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q, 7, "realloc keeps the contents");
                a.dealloc(q, Layout::from_size_align(size * 2, 16).unwrap());
            }
        }
    }
}
