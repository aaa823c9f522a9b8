/// mimalloc: the request path allocates many small short-lived objects
/// (headers, futures, buffers); glibc's allocator cost ~5% of CPU there.
/// (`--features system-allocator` leaves it out, for heap profilers.)
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
