//! The `strata` binary: everything is in the library's [`strata::cli`].

fn main() -> std::process::ExitCode {
    strata::cli::main()
}
