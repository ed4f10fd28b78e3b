//! Tuning of the C allocator Hydrant runs on. glibc's malloc serves a large block from its
//! heap once a block that size was freed (its mmap threshold rises with each free, up to
//! 32 MiB), and heaps fragmented by buffers of many sizes freed on other threads rarely
//! shrink: a service that keeps 70 MiB live held 200 MiB resident. With the threshold fixed,
//! buffers of 256 KiB and more (chunks, request bodies, spool groups) are mapped on their
//! own and returned to the system when freed.

/// Blocks at least this large are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Applies the tuning; call once, before the service allocates its buffers.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads
    // start allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
