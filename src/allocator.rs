//! The process's allocator: mimalloc, asked through its plain entry points for the common alignments.
//!
//! The `mimalloc` crate's `GlobalAlloc` calls `mi_malloc_aligned` for every allocation. For a block over 1 KiB
//! (mimalloc's small-size limit) that takes its generic aligned path, about 216 instructions where `mi_malloc`
//! takes about 30 (callgrind, `scripts/instructions-per-request`); a connection makes several such blocks
//! (buffers, boxed futures). A `mi_malloc` block of 16 bytes or more is aligned to 16 (mimalloc's
//! `MI_MAX_ALIGN_SIZE` on 64-bit targets: its size classes are multiples of two words from there), and a smaller
//! one to 8, so a layout whose alignment is at most 16 and at most its size is served by `mi_malloc`, the rule
//! the `tikv-jemallocator` crate applies to jemalloc; any other layout still goes through `MiMalloc`.
//!
//! In front of it, each thread keeps a stash of freed blocks of 1 to 8 KiB ([`Stash`]): the boxed futures of a
//! request (the handler's, forwarding's) and of a connection are of that size. mimalloc gives a page back to
//! its arena as soon as the page's last block is freed, unless the page is the only one of its size class
//! (`_mi_page_retire`). With hundreds of requests in flight a size class spans many pages, their number of live
//! blocks rises and falls, and pages emptied were freed and fresh ones taken again: at 500 keep-alive
//! connections 1.09 page frees and fresh pages a request, about 3 000 instructions of 22 500 (callgrind,
//! `CONNS=500 scripts/instructions-per-request`), and each fresh page's free list written into memory not in
//! the cache. A stashed block goes to the next request of its class on that thread, the most recently freed
//! first (still in the cache), and mimalloc's pages stay in use.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;

/// The alignment mimalloc guarantees a `mi_malloc` block of at least that size (`MI_MAX_ALIGN_SIZE`,
/// `max_align_t`); blocks of a power-of-two size are aligned to more.
const PLAIN_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

/// Blocks of more than this many bytes, up to [`STASH_MAX`], are stashed when freed.
const STASH_MIN: usize = 1024;
/// The largest block stashed.
const STASH_MAX: usize = 8 * 1024;
/// The stash's classes are this many bytes apart: a block is allocated at the top of its class, so that any
/// block of the class fits a request of the class.
const CLASS_STEP: usize = 128;
const CLASSES: usize = (STASH_MAX - STASH_MIN) / CLASS_STEP;
/// Most bytes a thread keeps stashed (counted by class, so a block shrunk in place counts at its class's size);
/// blocks freed past it go back to mimalloc. A stashed block also keeps its mimalloc page (64 KiB) from being
/// given back; after a spike of requests a thread may so hold more than this, until its blocks are taken again.
const STASH_BYTES: usize = 2 << 20;

/// The stash class of a block of `size` bytes, if it has one.
#[inline]
fn class(size: usize) -> Option<usize> {
    if size > STASH_MIN && size <= STASH_MAX {
        Some((size - STASH_MIN - 1) / CLASS_STEP)
    } else {
        None
    }
}

/// The size every block of class `c` is allocated with.
#[inline]
fn class_size(c: usize) -> usize {
    STASH_MIN + (c + 1) * CLASS_STEP
}

/// What a `plain` block of `size` bytes is allocated with: the top of its class, when it has one.
#[inline]
fn rounded(size: usize) -> usize {
    class(size).map_or(size, class_size)
}

/// A thread's freed blocks, a last-in-first-out list per class linked through the blocks' first word (a
/// stashed block is free memory, so its bytes are the stash's). Every block in class `c` is a `mi_malloc` block
/// of at least [`class_size`]`(c)` bytes: every path that makes or resizes a `plain` block of a class's size
/// asks mimalloc for the top of the class ([`rounded`]). Given back to mimalloc when the thread ends.
struct Stash {
    heads: [Cell<*mut u8>; CLASSES],
    bytes: Cell<usize>,
}

impl Stash {
    const fn new() -> Self {
        Self { heads: [const { Cell::new(ptr::null_mut()) }; CLASSES], bytes: Cell::new(0) }
    }

    /// A stashed block of class `c`, or null.
    #[inline]
    fn take(&self, c: usize) -> *mut u8 {
        let head = self.heads[c].get();
        if !head.is_null() {
            // SAFETY: `head` is a stashed block (at least `class_size(c)` bytes, aligned to 16) whose first word
            // `put` wrote.
            self.heads[c].set(unsafe { head.cast::<*mut u8>().read() });
            self.bytes.set(self.bytes.get() - class_size(c));
        }
        head
    }

    /// Stashes the freed block `p` of class `c`; false when the stash is full.
    #[inline]
    fn put(&self, c: usize, p: *mut u8) -> bool {
        let bytes = self.bytes.get() + class_size(c);
        if bytes > STASH_BYTES {
            return false;
        }
        // SAFETY: `p` is a freed block of at least `class_size(c)` bytes, aligned to 16: its first word is ours.
        unsafe { p.cast::<*mut u8>().write(self.heads[c].get()) };
        self.heads[c].set(p);
        self.bytes.set(bytes);
        true
    }
}

impl Drop for Stash {
    fn drop(&mut self) {
        for c in 0..CLASSES {
            loop {
                let p = self.take(c);
                if p.is_null() {
                    break;
                }
                // SAFETY: a stashed block is a live mimalloc block no one else holds.
                unsafe { mi_free(p.cast()) };
            }
        }
    }
}

thread_local! {
    /// Const-initialised: reaching it allocates nothing through this allocator (its destructor is registered, at
    /// the first reach, with the C library's `__cxa_thread_atexit_impl`, which uses the C library's own
    /// allocator). Once its destructor has begun it is out of reach, and blocks go to and come from mimalloc
    /// directly; blocks freed by locals destroyed before it are given back by its destructor.
    static STASH: Stash = const { Stash::new() };
}

/// mimalloc, by `mi_malloc` where its alignment suffices ([`plain`]) and by `MiMalloc` otherwise; blocks of 1 to
/// 8 KiB through the thread's [`Stash`].
pub(crate) struct Allocator;

// SAFETY: every block comes from mimalloc and goes back to it. `mi_malloc`, `mi_zalloc` and `mi_realloc` return
// null (which `GlobalAlloc` allows) or a block aligned to 16 bytes when it is at least 16 bytes and to 8 when
// smaller, so they are used only where that satisfies the layout ([`plain`], on the new size for `realloc`).
// `mi_realloc` may keep the block where it is, which keeps the old pointer and its alignment (the layout's, which
// `plain` allowed). `MiMalloc::dealloc` is `mi_free`, and `mi_free`, `mi_realloc` and `mi_realloc_aligned` take
// a block of either family (a `mi_malloc_aligned` block of alignment 16 or less is the start of its block).
// The stash holds only `plain` blocks, each at least the top of its class (`Stash`): one taken for a layout of
// that class is as `mi_malloc` of its size would be.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            if let Some(c) = class(layout.size()) {
                let p = STASH.try_with(|s| s.take(c)).unwrap_or(ptr::null_mut());
                if !p.is_null() {
                    return p;
                }
                // SAFETY: a plain C allocation, of the top of the class; null on failure.
                return unsafe { mi_malloc(class_size(c)).cast() };
            }
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
            // SAFETY: as `alloc`, zeroed (never from the stash).
            unsafe { mi_zalloc(rounded(layout.size())).cast() }
        } else {
            // SAFETY: forwarded with the caller's layout.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if plain(layout.align(), layout.size()) {
            if let Some(c) = class(layout.size()) {
                if STASH.try_with(|s| s.put(c, ptr)).unwrap_or(false) {
                    return;
                }
            }
        }
        // SAFETY: `ptr` came from this allocator, so from mimalloc; `MiMalloc::dealloc` is `mi_free`.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            // SAFETY: `ptr` is a live mimalloc block; `mi_realloc` moves it to a block as `mi_malloc`'s (of the top
            // of its class, when the new size has one).
            unsafe { mi_realloc(ptr.cast(), rounded(new_size)).cast() }
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

    extern "C" {
        /// mimalloc's usable size of a block (the `extended` API, not enabled in the `libmimalloc-sys` build).
        fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
    }

    /// A block of `layout`'s size, when it has a class, is at least the top of its class.
    fn assert_class_sized(p: *mut u8, size: usize) {
        if let Some(c) = class(size) {
            // SAFETY: `p` is a live mimalloc block.
            let usable = unsafe { mi_usable_size(p.cast()) };
            assert!(usable >= class_size(c), "a block of {size} bytes has {usable} usable, below its class's top");
        }
    }

    fn stash_head(c: usize) -> *mut u8 {
        STASH.with(|s| s.heads[c].get())
    }

    #[test]
    fn a_freed_block_of_a_class_serves_the_next_request_of_that_class_on_its_thread() {
        let a = Layout::from_size_align(1592, 8).unwrap();
        let same_class = Layout::from_size_align(1600, 16).unwrap();
        let c = class(a.size()).unwrap();
        assert_eq!(class(same_class.size()), Some(c));
        assert_eq!((class(1024), class(1025), class(8192), class(8193)), (None, Some(0), Some(CLASSES - 1), None));
        assert_eq!(class_size(CLASSES - 1), STASH_MAX);
        // SAFETY: each block is written within its layout's size and freed with the layout it was made with.
        unsafe {
            let p = Allocator.alloc(a);
            assert_class_sized(p, a.size());
            p.write_bytes(7, a.size());
            Allocator.dealloc(p, a);
            assert_eq!(stash_head(c), p, "stashed");
            let r = Allocator.alloc(same_class);
            assert_eq!(r, p, "the stashed block, for a layout of its class");
            assert_ne!(stash_head(c), p, "taken out of the stash");
            assert_class_sized(r, same_class.size());
            Allocator.dealloc(r, same_class);
            // Zeroed blocks are never taken from the stash, and are made at the top of their class too.
            let z = Allocator.alloc_zeroed(a);
            assert_ne!(z, p);
            assert!(std::slice::from_raw_parts(z, a.size()).iter().all(|&b| b == 0));
            assert_class_sized(z, a.size());
            // Grown into another class and shrunk within one, by `realloc`: at the top of the new class.
            let grown = Allocator.realloc(z, a, 5000);
            assert_class_sized(grown, 5000);
            let shrunk = Allocator.realloc(grown, Layout::from_size_align(5000, 8).unwrap(), 4000);
            assert_class_sized(shrunk, 4000);
            Allocator.dealloc(shrunk, Layout::from_size_align(4000, 8).unwrap());
            let again = Allocator.alloc(Layout::from_size_align(4000, 8).unwrap());
            assert_eq!(again, shrunk, "the shrunk block, stashed in its new class");
            assert_class_sized(again, 4000);
            Allocator.dealloc(again, Layout::from_size_align(4000, 8).unwrap());
        }
    }

    #[test]
    fn blocks_aligned_past_sixteen_never_enter_or_leave_the_stash() {
        let plain_block = Layout::from_size_align(2000, 16).unwrap();
        let c = class(2000).unwrap();
        // SAFETY: blocks freed with the layouts they were made with.
        unsafe {
            let before = STASH.with(|s| s.bytes.get());
            for align in [32, 64, 4096] {
                let layout = Layout::from_size_align(2000, align).unwrap();
                let p = Allocator.alloc(layout);
                assert_eq!(p as usize % align, 0);
                Allocator.dealloc(p, layout);
                assert_eq!(STASH.with(|s| s.bytes.get()), before, "a block aligned to {align} is not stashed");
            }
            let p = Allocator.alloc(plain_block);
            Allocator.dealloc(p, plain_block);
            assert_eq!(stash_head(c), p);
            for align in [32, 64, 4096] {
                let layout = Layout::from_size_align(2000, align).unwrap();
                let q = Allocator.alloc(layout);
                assert_eq!(q as usize % align, 0, "aligned to {align}");
                assert_eq!(stash_head(c), p, "the stashed block is left for a plain layout");
                Allocator.dealloc(q, layout);
            }
            assert_eq!(Allocator.alloc(plain_block), p);
            Allocator.dealloc(p, plain_block);
        }
    }

    #[test]
    fn a_thread_stashes_up_to_its_budget_and_takes_blocks_freed_from_other_threads() {
        let big = Layout::from_size_align(STASH_MAX, 16).unwrap();
        let n = STASH_BYTES / STASH_MAX + 10;
        // Made on another thread (which then ends, its own stash given back), freed on this one.
        let blocks: Vec<usize> = std::thread::spawn(move || {
            (0..n)
                .map(|i| {
                    // SAFETY: a fresh block of `big`, written within its size.
                    unsafe {
                        let p = Allocator.alloc(big);
                        p.write_bytes(i as u8, big.size());
                        p as usize
                    }
                })
                .collect()
        })
        .join()
        .unwrap();
        let before = STASH.with(|s| s.bytes.get());
        for &p in &blocks {
            // SAFETY: each is a live block of `big`, freed once.
            unsafe { Allocator.dealloc(p as *mut u8, big) };
        }
        let after = STASH.with(|s| s.bytes.get());
        assert!(after <= STASH_BYTES, "{after} bytes stashed");
        assert!(after > before, "some of the blocks were stashed");
        // SAFETY: a block of `big`, freed at once.
        let p = unsafe { Allocator.alloc(big) } as usize;
        assert!(blocks.contains(&p), "a block freed here, made on the other thread");
        // SAFETY: as above.
        unsafe { Allocator.dealloc(p as *mut u8, big) };
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
