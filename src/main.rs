fn main() {
    std::process::exit(diffedit::cli::main());
}
