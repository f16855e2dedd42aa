use std::process::ExitCode;

fn main() -> ExitCode {
    skyscore::cli::main()
}
