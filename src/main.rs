//! `probe`: see `twi_probe::cli`.

fn main() -> std::process::ExitCode {
    twi_probe::cli::main()
}
