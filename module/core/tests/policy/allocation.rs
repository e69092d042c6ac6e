//! The allow path allocates nothing, and a compile leaves no compiler
//! memory behind: counted by a global allocator that counts the
//! allocations, and the bytes live, of the current thread.

use crate::guest::*;
use lockwarden_core::policy::{FailureMode, Registry};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed by this thread.
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn counted(allocations: u64, bytes: i64) {
    ALLOCATIONS.with(|n| n.set(n.get() + allocations));
    LIVE_BYTES.with(|n| n.set(n.get() + bytes));
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(1, layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        counted(0, -(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(1, new_size as i64 - layout.size() as i64);
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

/// Cranelift keeps scratch buffers as large as the largest function it has
/// compiled for the life of its engine (here some 40 MB: 370 bytes per byte
/// of this body); compiling with a throwaway engine gives them back when the
/// compile ends, so a policy refused or unloaded leaves nothing in Redis's
/// memory.
#[test]
fn a_compile_leaves_no_compiler_memory_behind() {
    let engine = engine();
    let warm_up = Guest::allow().spec("warm-up");
    // A function body of some 110 KiB (just below the limit) of small blocks.
    let blocks =
        "(block (br_if 0 (local.get $x)) (local.set $x (i32.add (local.get $x) (i32.const 1))))"
            .repeat(8000);
    let big = Guest::allow()
        .before_evaluate(&format!("(local $x i32) {blocks}"))
        .spec("big");
    assert!(big.wasm.len() > 100 * 1024);
    drop(engine.compile(warm_up, MAX_MODULE, LIMITS).unwrap());
    let before = LIVE_BYTES.with(Cell::get);
    drop(engine.compile(big.clone(), MAX_MODULE, LIMITS).unwrap());
    let left = LIVE_BYTES.with(Cell::get) - before;
    assert!(left < 64 * 1024, "{left} bytes left behind by a compile");
}
