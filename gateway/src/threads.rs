//! Which request-serving thread the caller runs on, so that what a thread uses per request
//! (an upstream client's pooled connections) stays on that thread.

use std::cell::Cell;
use std::sync::OnceLock;

static COUNT: OnceLock<usize> = OnceLock::new();

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Declares how many serving threads keep resources of their own (once, before providers
/// are built; later calls are ignored).
pub fn set_count(n: usize) {
    let _ = COUNT.set(n.max(1));
}

/// Serving threads that keep resources of their own (1 when requests share one runtime).
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// Marks the calling thread as serving thread `i`.
pub fn enter(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// The calling thread's index among the serving threads (0 on any other thread).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}
