//! The `strata` command line, built inside the test crate so that tests can
//! run it as a real process (and kill it) through
//! `CARGO_BIN_EXE_strata-under-test`. It is the same one-line `main` as the
//! host's own binary.

fn main() -> std::process::ExitCode {
    strata::cli::main()
}
