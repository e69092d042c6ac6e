//! The global allocator: Redis's allocator (so `INFO memory` and `maxmemory`
//! see what the module uses), with alignment handled properly.
//!
//! `RedisModule_Alloc` returns memory aligned to 8 bytes at least, but Rust
//! may ask for more (`u128` and wasmtime's linear memory want 16,
//! cache-padded types 64 or 128). Such requests over-allocate, align by
//! hand, and keep the original pointer just below the aligned block.

use redis_module::raw;
use std::alloc::{GlobalAlloc, Layout};

/// Alignment `RedisModule_Alloc` guarantees for any size: 8 bytes. (jemalloc
/// aligns its 8-byte size class to 8 only, and a Redis built without
/// `malloc_usable_size` puts an 8-byte size header before every block.)
const NATIVE_ALIGN: usize = 8;
const HEADER: usize = std::mem::size_of::<usize>();

pub struct RedisAllocator;

fn die() -> ! {
    // The allocator must not allocate to report this.
    const MSG: &[u8] = b"lockwarden: the Redis allocator is not available\n";
    // SAFETY: writing a static buffer to stderr.
    unsafe {
        libc_write(2, MSG.as_ptr(), MSG.len());
    }
    std::process::abort()
}

unsafe extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, len: usize) -> isize;
}

fn redis_alloc(size: usize) -> *mut u8 {
    // SAFETY: reading a function pointer set by RedisModule_Init.
    match unsafe { raw::RedisModule_Alloc } {
        // SAFETY: plain allocation call.
        Some(f) => unsafe { f(size).cast() },
        None => die(),
    }
}

fn redis_free(ptr: *mut u8) {
    // SAFETY: reading a function pointer set by RedisModule_Init.
    match unsafe { raw::RedisModule_Free } {
        // SAFETY: `ptr` came from RedisModule_Alloc/Realloc.
        Some(f) => unsafe { f(ptr.cast()) },
        None => die(),
    }
}

unsafe impl GlobalAlloc for RedisAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= NATIVE_ALIGN {
            return redis_alloc(layout.size());
        }
        let Some(total) = layout.size().checked_add(layout.align()) else {
            return std::ptr::null_mut();
        };
        let base = redis_alloc(total);
        if base.is_null() {
            return base;
        }
        // At least NATIVE_ALIGN (>= HEADER) bytes lie before `aligned`.
        let aligned = ((base as usize + layout.align()) & !(layout.align() - 1)) as *mut u8;
        // SAFETY: `aligned - HEADER` is inside the block, after `base`.
        unsafe {
            aligned
                .sub(HEADER)
                .cast::<usize>()
                .write_unaligned(base as usize)
        };
        aligned
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.align() <= NATIVE_ALIGN {
            redis_free(ptr);
        } else {
            // SAFETY: `alloc` stored the original pointer just below `ptr`.
            let base = unsafe { ptr.sub(HEADER).cast::<usize>().read_unaligned() };
            redis_free(base as *mut u8);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= NATIVE_ALIGN {
            // SAFETY: reading a function pointer set by RedisModule_Init.
            return match unsafe { raw::RedisModule_Realloc } {
                // SAFETY: `ptr` came from RedisModule_Alloc.
                Some(f) => unsafe { f(ptr.cast(), new_size).cast() },
                None => die(),
            };
        }
        // SAFETY: the new layout is valid (same alignment); copy then free.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
