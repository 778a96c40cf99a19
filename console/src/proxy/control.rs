//! Client of the proxy's control socket: HTTP/1.1 JSON over a Unix socket. Behind a trait so the
//! supervisor and the API can be tested without a proxy.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the proxy's control socket {path} is unreachable: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy's control socket did not answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP on the control socket: {0}")]
    Http(#[from] hyper::Error),
    #[error("the proxy answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the proxy's answer does not parse: {0}")]
    Decode(#[from] serde_json::Error),
    /// The proxy refused its config file (reload answered 422).
    #[error("the proxy refused its config file: {0}")]
    ConfigRefused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinksReport {
    pub generation: u64,
    pub config_error: Option<String>,
    pub links: Vec<LinkReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyLinkState {
    Active,
    Expired,
    Disabled,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkReport {
    pub name: String,
    pub state: ProxyLinkState,
    pub error: Option<String>,
    pub listen: String,
    pub expires_at: Option<String>,
    pub active_sessions: u64,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub xdp_drops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SessionsReport {
    pub sessions: Vec<SessionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionReport {
    /// A u64 in decimal, as a string (JSON numbers lose precision past 2^53).
    pub id: String,
    pub link: String,
    #[serde(deserialize_with = "canonical_client")]
    pub client: String,
    pub since: String,
    pub bytes_to_device: u64,
    pub bytes_from_device: u64,
    pub data_plane: String,
}

/// The proxy's dual-stack listeners see IPv4 clients as IPv4-mapped IPv6 (`[::ffff:a.b.c.d]`);
/// people read and match them as the IPv4 address they are.
fn canonical(client: String) -> String {
    match client.parse::<std::net::SocketAddr>() {
        Ok(addr) => std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string(),
        Err(_) => client,
    }
}

fn canonical_client<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(canonical)
}

fn canonical_optional_client<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d).map(|c| c.map(canonical))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventsReport {
    pub next: u64,
    /// `after` was older than the proxy's ring of recent events: some were missed.
    pub lost: bool,
    pub events: Vec<ProxyEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyEvent {
    pub seq: u64,
    pub at: String,
    pub link: String,
    pub kind: String,
    #[serde(default, deserialize_with = "canonical_optional_client")]
    pub client: Option<String>,
    pub bytes_to_device: Option<u64>,
    pub bytes_from_device: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct Reloaded {
    generation: u64,
}

#[derive(Deserialize)]
struct Refusal {
    error: String,
}

pub type ControlResult<'a, T> = BoxFuture<'a, Result<T, ControlError>>;

pub trait ProxyControl: Send + Sync + 'static {
    fn links(&self) -> ControlResult<'_, LinksReport>;
    fn sessions(&self, link: Option<String>) -> ControlResult<'_, SessionsReport>;
    /// `false` when the proxy knows no such session.
    fn close_session(&self, id: String) -> ControlResult<'_, bool>;
    /// Waits up to `wait` for events after `after`.
    fn events(&self, after: u64, wait: Duration) -> ControlResult<'_, EventsReport>;
    /// Makes the proxy re-read its config file now; its new generation.
    fn reload(&self) -> ControlResult<'_, u64>;
}

/// Answers within this, beyond a long poll's own wait.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct UnixControlClient {
    socket: PathBuf,
}

impl UnixControlClient {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        deadline: Duration,
    ) -> Result<(StatusCode, Bytes), ControlError> {
        let exchange = async {
            let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
                ControlError::Unreachable {
                    path: self.socket.clone(),
                    source,
                }
            })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(hyper::header::HOST, "proxy")
                .body(Empty::<Bytes>::new())
                .map_err(|e| ControlError::Status {
                    status: StatusCode::BAD_REQUEST,
                    body: e.to_string(),
                })?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            driver.abort();
            Ok((status, body))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| ControlError::Timeout(deadline))?
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        deadline: Duration,
    ) -> Result<T, ControlError> {
        let (status, body) = self.call(Method::GET, path_and_query, deadline).await?;
        if status != StatusCode::OK {
            return Err(ControlError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

/// Percent-encodes a query value (link names are DNS labels, but nothing here relies on that).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl ProxyControl for UnixControlClient {
    fn links(&self) -> ControlResult<'_, LinksReport> {
        Box::pin(self.get_json("/v1/links", ANSWER_DEADLINE))
    }

    fn sessions(&self, link: Option<String>) -> ControlResult<'_, SessionsReport> {
        Box::pin(async move {
            let path = match link {
                Some(link) => format!("/v1/sessions?link={}", query_value(&link)),
                None => "/v1/sessions".to_owned(),
            };
            self.get_json(&path, ANSWER_DEADLINE).await
        })
    }

    fn close_session(&self, id: String) -> ControlResult<'_, bool> {
        Box::pin(async move {
            let path = format!("/v1/sessions/{}", query_value(&id));
            let (status, body) = self.call(Method::DELETE, &path, ANSWER_DEADLINE).await?;
            match status {
                StatusCode::NO_CONTENT | StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                status => Err(ControlError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                }),
            }
        })
    }

    fn events(&self, after: u64, wait: Duration) -> ControlResult<'_, EventsReport> {
        Box::pin(async move {
            let path = format!("/v1/events?after={after}&wait={}", wait.as_secs());
            self.get_json(&path, wait + ANSWER_DEADLINE).await
        })
    }

    fn reload(&self) -> ControlResult<'_, u64> {
        Box::pin(async move {
            let (status, body) = self
                .call(Method::POST, "/v1/reload", ANSWER_DEADLINE)
                .await?;
            match status {
                StatusCode::OK => Ok(serde_json::from_slice::<Reloaded>(&body)?.generation),
                StatusCode::UNPROCESSABLE_ENTITY => Err(ControlError::ConfigRefused(
                    serde_json::from_slice::<Refusal>(&body)
                        .map(|r| r.error)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned()),
                )),
                status => Err(ControlError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_clients_read_as_ipv4_and_ipv6_ones_stay() {
        let event: ProxyEvent = serde_json::from_str(
            r#"{"seq":1,"at":"2026-12-04T06:00:00Z","link":"a.b","kind":"session_opened","client":"[::ffff:10.77.1.2]:36126"}"#,
        )
        .unwrap();
        assert_eq!(event.client.as_deref(), Some("10.77.1.2:36126"));
        assert_eq!(canonical("[2001:db8::1]:22".to_owned()), "[2001:db8::1]:22");
        assert_eq!(canonical("not an address".to_owned()), "not an address");
    }
}
