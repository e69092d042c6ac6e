//! The allow path allocates nothing: counted by a global allocator that
//! counts the allocations of the current thread.

use crate::guest::*;
use lockwarden_core::policy::{FailureMode, Registry};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn allowing_and_clamping_allocate_nothing() {
    let mut registry = Registry::new();
    registry
        .install(Guest::allow().compile("allow"), false)
        .unwrap();
    registry
        .install(Guest::clamp(500).compile("clamp"), false)
        .unwrap();
    let request = acquire(b"orders:12345");
    // The first evaluation sizes the scratch buffer.
    assert_eq!(
        registry
            .evaluate(&request, LIMITS, FailureMode::Deny)
            .verdict,
        Ok(Some(500))
    );
    let before = allocations();
    for _ in 0..1000 {
        let evaluation = registry.evaluate(&request, LIMITS, FailureMode::Deny);
        assert_eq!(evaluation.verdict, Ok(Some(500)));
    }
    assert_eq!(allocations() - before, 0);
}
