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

use libmimalloc_sys::{mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;

/// The alignment mimalloc guarantees a `mi_malloc` block of at least that size (`MI_MAX_ALIGN_SIZE`,
/// `max_align_t`); blocks of a power-of-two size are aligned to more.
const PLAIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// mimalloc, by `mi_malloc` where its alignment suffices ([`plain`]) and by `MiMalloc` otherwise.
pub(crate) struct Allocator;

// SAFETY: every block comes from mimalloc and goes back to it. `mi_malloc`, `mi_zalloc` and `mi_realloc` return
// null (which `GlobalAlloc` allows) or a block aligned to 16 bytes when it is at least 16 bytes and to 8 when
// smaller, so they are used only where that satisfies the layout ([`plain`], on the new size for `realloc`).
// `mi_realloc` may keep the block where it is, which keeps the old pointer and its alignment (the layout's, which
// `plain` allowed). `MiMalloc::dealloc` is `mi_free`, and `mi_free`, `mi_realloc` and `mi_realloc_aligned` take
// a block of either family (a `mi_malloc_aligned` block of alignment 16 or less is the start of its block).
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

    /// Allocates `live` blocks of `layout` at once (so that their places in a page differ), checks that each is
    /// aligned and keeps its bytes, then frees them.
    fn check(layout: Layout, live: usize) {
        let (size, align) = (layout.size(), layout.align());
        let mut blocks = Vec::with_capacity(live);
        for i in 0..live {
            // SAFETY: `size` is non-zero; the block is written within its size.
            unsafe {
                let p = if i % 2 == 0 { Allocator.alloc(layout) } else { Allocator.alloc_zeroed(layout) };
                assert!(!p.is_null(), "{size} bytes");
                assert_eq!(p as usize % align, 0, "block {i} of {size} bytes aligned to {align}");
                if i % 2 == 1 {
                    assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0), "zeroed, {size} bytes");
                }
                p.write_bytes(i as u8, size);
                blocks.push(p);
            }
        }
        for (i, p) in blocks.into_iter().enumerate() {
            // SAFETY: `p` is a live block of `layout`; each realloc's result is freed with its own layout.
            unsafe {
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == i as u8));
                let grown = Allocator.realloc(p, layout, size * 3);
                assert!(!grown.is_null());
                assert_eq!(grown as usize % align, 0, "realloc of {size} to {} bytes aligned to {align}", size * 3);
                assert!(std::slice::from_raw_parts(grown, size).iter().all(|&b| b == i as u8));
                let shrunk = Allocator.realloc(grown, Layout::from_size_align(size * 3, align).unwrap(), 1);
                assert!(!shrunk.is_null());
                assert_eq!(shrunk as usize % align, 0, "realloc to 1 byte aligned to {align}");
                assert_eq!(*shrunk, i as u8);
                Allocator.dealloc(shrunk, Layout::from_size_align(1, align).unwrap());
            }
        }
    }

    #[test]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes() {
        // The alignments `mi_malloc` serves, then larger blocks and larger alignments.
        // Every size through the small bins (up to 1 KiB), then a size in every 15 bytes up to 4 KiB.
        for size in (1..=1100).chain((1101..=4096).step_by(15)) {
            for align in [1, 2, 4, 8, 16] {
                check(Layout::from_size_align(size, align).unwrap(), if size <= 256 { 32 } else { 4 });
            }
        }
        for size in [8 << 10, 64 << 10, 70_000, 1 << 20, 3 << 20] {
            for align in [8, 16, 32, 4096] {
                check(Layout::from_size_align(size, align).unwrap(), 4);
            }
        }
        for size in [1, 24, 48, 100, 1024, 1025, 3000] {
            for align in [32, 64, 4096] {
                check(Layout::from_size_align(size, align).unwrap(), 64);
            }
        }
    }
}
