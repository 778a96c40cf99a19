//! `devicelink`: open a link to a device in one command, and see what is open.

fn main() -> std::process::ExitCode {
    devicelink_operator::cli::main()
}
