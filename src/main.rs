//! `probe`: see `twi_probe::cli`.
//!
//! The system allocator (glibc's) on purpose, with one arena
//! (`twi_probe::malloc`): mimalloc and jemalloc were measured as the global
//! allocator (docs/benchmarks.md, "Cost as probes grow"). mimalloc set ~11
//! MiB aside at start (idle RSS 24.3 MiB against 13.0) and held more at
//! 1,000 http probes; jemalloc grew the most.

fn main() -> std::process::ExitCode {
    twi_probe::malloc::one_arena();
    twi_probe::cli::main()
}
