//! glibc malloc with one arena.
//!
//! By default glibc gives each thread that allocates under contention an
//! arena of its own (up to 8 per core), and memory freed into one arena is
//! reused only by that arena. `probe serve`'s allocations move between the
//! runtime's worker threads and the render thread, so each arena keeps its
//! own free memory: with 1,000 http probes that was ~1.5 KB a probe of
//! resident memory on top of what was in use (docs/benchmarks.md, "Cost as
//! probes grow"). One arena shares it. Contention stays low: small
//! allocations are served from glibc's per-thread cache without the
//! arena's lock, and the runtime has two workers on this kind of machine.
//!
//! An operator's own setting wins: nothing is changed when
//! `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` is set at all. (Any
//! `GLIBC_TUNABLES`, not only one naming `arena_max`: glibc 2.36 cuts the
//! variable at its first tunable as it parses it, so a process cannot see
//! the rest of it.)

/// Sets glibc's arena limit to one, unless the environment sets it. Call
/// before any thread starts.
pub fn one_arena() {
    let configured = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some();
    if !configured {
        set_arena_max(1);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(n: i32) {
    // SAFETY: mallopt only changes a malloc setting; called before other
    // threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_n: i32) {}
