//! `pubbot`: the command line. Everything is in the library ([`pubbot::cli`]);
//! this file only picks the allocator.

// glibc's allocator spent 30% of the daemon's CPU at ingest saturation
// (malloc_consolidate, arena locks); mimalloc is a drop-in (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pubbot::cli::main()
}
