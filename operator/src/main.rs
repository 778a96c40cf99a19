//! `devicelink-operator`: runs the controller, or prints the CRD, or renders a DeviceLink's
//! children offline. Thin: everything it does lives in the library.

use std::{io::Read, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use devicelink_operator::render::ProxyImage;
use k8s_openapi::jiff::Timestamp;

/// Default proxy image: the one built from deploy/proxy.Dockerfile at this version.
const DEFAULT_PROXY_IMAGE: &str = concat!("devicelink-proxy:", env!("CARGO_PKG_VERSION"));

#[derive(Parser, Debug)]
#[command(
    name = "devicelink-operator",
    version,
    about = "Reconciles DeviceLink resources into a LoadBalancer Service and a devicelink-proxy Deployment"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct ProxyImageArgs {
    /// Image of the devicelink-proxy pods.
    #[arg(long, env = "DEVICELINK_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// imagePullPolicy of the proxy pods (Always, IfNotPresent, Never); the cluster's default when unset.
    #[arg(long, env = "DEVICELINK_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    proxy_image_pull_policy: Option<String>,
}

impl ProxyImageArgs {
    fn proxy_image(&self) -> ProxyImage {
        ProxyImage {
            image: self.proxy_image.clone(),
            pull_policy: self.proxy_image_pull_policy.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the DeviceLink CustomResourceDefinition (what deploy/crd.yaml holds).
    Crd,
    /// Print, as YAML, the Service and Deployment the operator would apply for a DeviceLink.
    Render {
        /// DeviceLink manifest (YAML); `-` reads standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// Render as of this instant (RFC 3339) instead of now: for reproducible output.
        #[arg(long, value_name = "RFC3339")]
        now: Option<Timestamp>,
        #[command(flatten)]
        proxy: ProxyImageArgs,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", devicelink_operator::crd_yaml());
            Ok(())
        }
        Command::Render { file, now, proxy } => {
            let manifest = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the DeviceLink from standard input")?;
                text
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let yaml = devicelink_operator::render_manifest(
                &manifest,
                now.unwrap_or_else(Timestamp::now),
                &proxy.proxy_image(),
            )
            .with_context(|| format!("{}", file.display()))?;
            print!("{yaml}");
            Ok(())
        }
    }
}
