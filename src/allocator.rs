//! The process's allocator: mimalloc, asked through its plain entry points for the common alignments.
//!
//! The `mimalloc` crate's `GlobalAlloc` calls `mi_malloc_aligned` for every allocation. For a block over 1 KiB
//! (mimalloc's small-size limit) that takes its generic aligned path, about 216 instructions where `mi_malloc`
//! takes about 30 (callgrind, `scripts/instructions-per-request`); a connection makes several such blocks
//! (buffers, boxed futures). A `mi_malloc` block of 16 bytes or more is aligned to 16 (mimalloc's
//! `MI_MAX_ALIGN_SIZE` on 64-bit targets: its size classes are multiples of two words from there), and a smaller
//! one to 8, so a layout whose alignment is at most 16 and at most its size is served by `mi_malloc`, the rule
//! the `tikv-jemallocator` crate applies to jemalloc; any other layout still goes through `MiMalloc`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use mimalloc::MiMalloc;

/// The largest alignment a `mi_malloc` block of at least that size has (`MI_MAX_ALIGN_SIZE`, `max_align_t`).
const PLAIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// mimalloc's own C entry points (`mimalloc.h`), linked by the `mimalloc` crate's `libmimalloc-sys`.
unsafe extern "C" {
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_zalloc(size: usize) -> *mut c_void;
    fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
}

/// mimalloc, by `mi_malloc` where its alignment suffices ([`plain`]) and by `MiMalloc` otherwise.
pub(crate) struct Allocator;

// SAFETY: every block comes from mimalloc and goes back to it. `mi_malloc`, `mi_zalloc` and `mi_realloc` return
// null (which `GlobalAlloc` allows) or a block aligned to 16 bytes when it is at least 16 bytes and to 8 when
// smaller, so they are used only where that satisfies the layout ([`plain`], on the new size for `realloc`).
// `MiMalloc::dealloc` is `mi_free`, and `mi_free`, `mi_realloc` and `mi_realloc_aligned` take a block of either
// family.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: a plain C allocation of `size` bytes; null on failure.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: as `alloc`, zeroed.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc; `MiMalloc::dealloc` is `mi_free`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            // SAFETY: `ptr` is a live mimalloc block; `mi_realloc` moves it to a block as `mi_malloc`'s.
            unsafe { mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: forwarded with the caller's arguments.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 12, 15, 16, 24, 40, 1000, 1024, 1025, 3000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let grown = Layout::from_size_align(size * 3, align).unwrap();
                // SAFETY: sizes are non-zero; each block is written within its size and freed with its layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc of {size} bytes aligned to {align}");
                    p.write_bytes(0xab, size);
                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed of {size} bytes aligned to {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let q = Allocator.realloc(p, layout, grown.size());
                    assert_eq!(q as usize % align, 0, "realloc to {} bytes aligned to {align}", grown.size());
                    assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 0xab));
                    let r = Allocator.realloc(q, grown, 1);
                    assert_eq!(r as usize % align, 0, "realloc to 1 byte aligned to {align}");
                    assert_eq!(*r, 0xab);
                    Allocator.dealloc(r, Layout::from_size_align(1, align).unwrap());
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
