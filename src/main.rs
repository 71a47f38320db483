fn main() {
    diffedit::memory::reuse_large_blocks();
    std::process::exit(diffedit::cli::main());
}
