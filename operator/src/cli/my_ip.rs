//! `--allow-my-ip`: asks a what-is-my-address service, named on the command line and printed,
//! for this machine's public address. It never guesses from local interfaces (behind NAT those
//! are not what the load balancer sees), and any doubt is an error that says to pass --allow.

use std::{net::IpAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use ipnet::IpNet;

use super::error::CliError;

fn failed(url: &str, why: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!(
        "--allow-my-ip: could not learn this machine's public address from {url}: {why}\n  pass --allow ADDRESS/32 with the address your traffic leaves from, or --my-ip-url with another service"
    ))
}

/// The public address as `url` sees this machine, as a single-address block.
pub async fn public_address(url: &str, timeout: Duration) -> Result<IpNet, CliError> {
    let uri: hyper::Uri = url.parse().map_err(|e| failed(url, e))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| failed(url, format!("no TLS trust roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| failed(url, e))?;
        if !response.status().is_success() {
            return Err(failed(url, format!("it answered {}", response.status())));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| failed(url, e))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let address: IpAddr = text.trim().parse().map_err(|_| {
            failed(
                url,
                format!("its answer {:?} is not an IP address", text.trim()),
            )
        })?;
        Ok(IpNet::from(address))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| failed(url, format!("no answer within {timeout:?}")))?
}
