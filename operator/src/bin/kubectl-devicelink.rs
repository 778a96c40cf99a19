//! `kubectl devicelink`: the `devicelink` CLI under the name of a kubectl plugin.

fn main() -> std::process::ExitCode {
    devicelink_operator::cli::main()
}
