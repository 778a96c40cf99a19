//! The `devicelink` command (also `kubectl devicelink`): open a link in one command, close or
//! extend it, and see what is open. It only reads and writes DeviceLinks (and, for connection
//! counts, the proxy pods' metrics through the API server); the operator does the rest.

mod args;
mod error;
pub mod my_ip;
pub mod output;
pub mod session;
#[cfg(test)]
mod tests;

use std::{io::IsTerminal, process::ExitCode};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};

pub use args::{Cli, Command, OpenArgs};
pub use error::{CliError, Exit};
pub use output::OutputFormat;
pub use session::Session;

/// A client from the kubeconfig (or in-cluster), and the namespace to use.
async fn connect(cli: &Cli) -> Result<(Client, String, String), CliError> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config: Result<kube::Config, String> = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .map_err(|e| CliError::NoCluster(format!("reading {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| e.to_string()),
        (None, None) => kube::Config::infer().await.map_err(|e| e.to_string()),
    };
    let config = config.map_err(CliError::NoCluster)?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| CliError::NoCluster(e.to_string()))?;
    Ok((client, namespace, url))
}

/// Runs the parsed command; what it prints goes to stdout, progress and errors to stderr.
pub async fn run(cli: Cli) -> Result<String, CliError> {
    let (client, namespace, url) = connect(&cli).await?;
    let mut session = Session::new(client, &namespace);
    session.proxy_namespace = cli.proxy_namespace.clone();
    let spinner = cli.output == OutputFormat::Table && std::io::stderr().is_terminal();
    session
        .execute(&cli.command, cli.output, spinner)
        .await
        .map_err(|error| match error {
            CliError::NoCluster(why) => CliError::NoCluster(format!("{url}: {why}")),
            other => other,
        })
}

/// Entry point of both binaries.
pub fn main() -> ExitCode {
    // Invoked as a kubectl plugin, say so in usage and help.
    let invoked_as_plugin = std::env::args()
        .next()
        .is_some_and(|arg0| arg0.ends_with("kubectl-devicelink"));
    let mut command = <Cli as clap::CommandFactory>::command();
    if invoked_as_plugin {
        command = command.bin_name("kubectl devicelink");
    }
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() {
                Exit::Usage as u8
            } else {
                0
            });
        }
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("devicelink: cannot start: {error}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("devicelink: {error}");
            ExitCode::from(error.exit() as u8)
        }
    }
}
