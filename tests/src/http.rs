//! A plain HTTP/1.1 client for the test bed and the demo: one request, `Connection: close`, the
//! status and body back. Optionally made from inside a network namespace, on a thread of its
//! own, so the caller's thread stays where it is.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use crate::netns::enter;

/// One request: `(status, body)`. `headers` are sent as given; a body is sent with its length.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status in the response")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// [`request`], made from inside the network namespace at `netns` (`/run/netns/<name>`).
pub fn request_in(
    netns: &Path,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let netns: PathBuf = netns.to_path_buf();
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.map(str::to_owned));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    thread::spawn(move || {
        enter(&netns)?;
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        request(addr, &method, &path, &headers, body.as_deref())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))?
}

/// An HTTP GET of `path` at `addr` from inside the network namespace at `netns`.
pub fn http_get_in(netns: &Path, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    request_in(netns, addr, "GET", path, &[], None)
}
