/// mimalloc: the request path allocates many small short-lived objects
/// (headers, futures, buffers); glibc's allocator cost ~5% of CPU there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    postern::cli::main()
}
