//! The CLI's conversations with the API server, one method per command.

use std::{io::Write as _, time::Duration};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use super::{
    args::{Command, OpenArgs},
    error::CliError,
    output::{
        ConditionLine, EventLine, LinkSummary, OutputFormat, StatusReport, list_table, opened_text,
        render, status_text, summarize, time_left,
    },
};
use crate::{
    clock::Clock,
    render::{LINK_LABEL, LINK_NAMESPACE_LABEL, PROXY_METRICS_PORT},
    resource::{DeviceLink, OPEN_REQUEST_ANNOTATION, Phase, format_duration, format_instant},
};

/// Shows what is being waited for: a spinner on a terminal, nothing otherwise.
pub struct Progress {
    enabled: bool,
    frame: usize,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, frame: 0 }
    }

    fn tick(&mut self, message: &str) {
        if !self.enabled {
            return;
        }
        const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
        self.frame = (self.frame + 1) % FRAMES.len();
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "\r\x1b[K{} {message}", FRAMES[self.frame]);
        let _ = stderr.flush();
    }

    fn finish(&mut self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// A namespace of one cluster, as the CLI talks to it.
pub struct Session {
    client: Client,
    namespace: String,
    links: Api<DeviceLink>,
    /// Where the operator runs the proxy pods (for connection counts).
    pub proxy_namespace: String,
    /// How often to look at a link while waiting.
    pub poll_every: Duration,
    pub clock: Clock,
}

impl Session {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            links: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_owned(),
            proxy_namespace: crate::resource::DEFAULT_PROXY_NAMESPACE.to_owned(),
            poll_every: Duration::from_millis(500),
            clock: Clock::System,
        }
    }

    fn api_error(&self, name: &str) -> impl Fn(kube::Error) -> CliError + '_ {
        let name = name.to_owned();
        move |error| CliError::from_kube(error, &name, &self.namespace)
    }

    /// Runs one command and returns the text to print.
    pub async fn execute(
        &self,
        command: &Command,
        format: OutputFormat,
        spinner: bool,
    ) -> Result<String, CliError> {
        let mut progress = Progress::new(spinner);
        match command {
            Command::Open(args) => {
                let summary = self.open(args, &mut progress).await?;
                Ok(render(format, &summary, || opened_text(&summary)))
            }
            Command::Close { name, timeout } => {
                let summary = self.close(name, *timeout, &mut progress).await?;
                Ok(render(format, &summary, || {
                    format!("Link {name} is closed: its endpoint and proxy are removed.\n")
                }))
            }
            Command::Extend { name, by, timeout } => {
                let summary = self.extend(name, *by, *timeout, &mut progress).await?;
                Ok(render(format, &summary, || {
                    format!(
                        "Link {name} now closes at {} (in {}).\n",
                        summary.expires_at.as_deref().unwrap_or("-"),
                        time_left(summary.expires_in_seconds)
                    )
                }))
            }
            Command::List => {
                let links = self.list().await?;
                Ok(render(format, &links, || list_table(&links)))
            }
            Command::Status { name } => {
                let report = self.status(name).await?;
                Ok(render(format, &report, || status_text(&report)))
            }
        }
    }

    /// Creates the link (or updates and enables it), waits until it is Active, and summarizes it.
    pub async fn open(
        &self,
        args: &OpenArgs,
        progress: &mut Progress,
    ) -> Result<LinkSummary, CliError> {
        let name = args.name.as_str();
        let mut allowed: Vec<String> = args.allow.iter().map(ToString::to_string).collect();
        if args.allow_my_ip {
            let _ = writeln!(
                std::io::stderr(),
                "Asking {} for this machine's public address...",
                args.my_ip_url
            );
            let mine =
                super::my_ip::public_address(&args.my_ip_url, Duration::from_secs(10)).await?;
            let _ = writeln!(
                std::io::stderr(),
                "Allowing {mine}: this machine's public address according to {}",
                args.my_ip_url
            );
            if !allowed.contains(&mine.to_string()) {
                allowed.push(mine.to_string());
            }
        }
        if allowed.is_empty() {
            return Err(CliError::Usage(
                "nobody could connect: pass --allow CIDR (e.g. --allow 203.0.113.0/24) and/or --allow-my-ip".to_owned(),
            ));
        }
        let (host, device_port) = &args.device;
        let mut spec = json!({
            "enabled": true,
            "device": {"host": host, "port": device_port},
            "allowedSourceRanges": allowed,
            "ttl": format_duration(args.duration),
        });
        let fields = spec.as_object_mut().expect("spec is an object");
        if let Some(port) = args.port {
            fields.insert("port".into(), json!(port));
        }
        if let Some(idle) = args.idle_timeout {
            fields.insert("idleTimeout".into(), json!(format_duration(idle)));
        }
        if let Some(max) = args.max_connections {
            fields.insert("maxConnections".into(), json!(max));
        }
        if let Some(plane) = args.data_plane {
            fields.insert("dataPlane".into(), json!(plane.as_flag()));
        }

        // `--for` counts from now: the operator restarts the TTL, on its own clock, when it
        // first sees this request, even on a link enabled (or expired) long before.
        let request = self.clock.now().to_string();
        let annotations = json!({ OPEN_REQUEST_ANNOTATION: request });
        let existing = self
            .links
            .get_opt(name)
            .await
            .map_err(self.api_error(name))?;
        match existing {
            None => {
                let link: DeviceLink = serde_json::from_value(json!({
                    "apiVersion": "devicelink.io/v1alpha1", "kind": "DeviceLink",
                    "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations},
                    "spec": spec,
                }))
                .map_err(|e| CliError::Other(format!("building the DeviceLink: {e}")))?;
                self.links
                    .create(&PostParams::default(), &link)
                    .await
                    .map_err(self.api_error(name))?;
            }
            Some(_) => {
                // A merge patch replaces the lists and clears an absolute expiry, which would
                // otherwise clash with the TTL.
                spec["expiresAt"] = Value::Null;
                if args.port.is_none() {
                    spec["port"] = Value::Null;
                }
                self.merge(
                    name,
                    json!({"metadata": {"annotations": annotations}, "spec": spec}),
                )
                .await?;
            }
        }
        let link = self
            .wait_until(name, "ready", args.timeout, progress, |link| {
                let Some(status) = link.status.as_ref() else {
                    return Ok(false);
                };
                // A status from before this request (an old failure, an old expiry) says
                // nothing about it.
                if status.observed_generation != link.metadata.generation
                    || status.open_request.as_deref() != Some(request.as_str())
                {
                    return Ok(false);
                }
                if status.phase == Some(Phase::Failed) {
                    return Err(failed(name, link));
                }
                Ok(status.phase == Some(Phase::Active))
            })
            .await?;
        let connections = self.connections(name).await;
        Ok(summarize(&link, self.clock.now(), connections))
    }

    /// Disables the link and waits until the operator has removed its endpoint.
    pub async fn close(
        &self,
        name: &str,
        timeout: Duration,
        progress: &mut Progress,
    ) -> Result<LinkSummary, CliError> {
        self.merge(name, json!({"spec": {"enabled": false}}))
            .await?;
        let link = self
            .wait_for_phase(name, Phase::Disabled, "closed", timeout, progress)
            .await?;
        Ok(summarize(&link, self.clock.now(), None))
    }

    /// Moves the link's expiry `by` later (from now if it has passed).
    pub async fn extend(
        &self,
        name: &str,
        by: Duration,
        timeout: Duration,
        progress: &mut Progress,
    ) -> Result<LinkSummary, CliError> {
        let link = self.links.get(name).await.map_err(self.api_error(name))?;
        if !link.spec.enabled {
            return Err(CliError::Usage(format!(
                "link {name} is closed; `devicelink open {name} ...` opens it again"
            )));
        }
        let status = link.status.clone().unwrap_or_default();
        let (Some(expires_at), Some(enabled_at)) = (
            status.expires_at.map(|t| t.0),
            status.enabled_at.map(|t| t.0),
        ) else {
            return Err(CliError::Other(format!(
                "link {name} has no expiry yet (the operator has not reconciled it); try again in a moment"
            )));
        };
        let now = self.clock.now();
        let from = if expires_at > now { expires_at } else { now };
        let new_expiry = from
            .checked_add(by)
            .map_err(|e| CliError::Usage(format!("--for {by:?} is too long: {e}")))?;
        let patch = if link.spec.expires_at.is_some() {
            json!({"spec": {"expiresAt": format_instant(new_expiry)}})
        } else {
            // The TTL counts from the last enable; stretch it to reach the new expiry.
            let seconds = new_expiry.as_second() - enabled_at.as_second();
            let ttl = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
            json!({"spec": {"ttl": format_duration(ttl)}})
        };
        self.merge(name, patch).await?;
        let wanted = format_instant(new_expiry);
        let link = self
            .wait_until(name, "extended", timeout, progress, |link| {
                let status = link.status.as_ref();
                let observed =
                    status.and_then(|s| s.observed_generation) == link.metadata.generation;
                let moved = status
                    .and_then(|s| s.expires_at.as_ref())
                    .map(|t| format_instant(t.0))
                    == Some(wanted.clone());
                Ok(observed && moved)
            })
            .await?;
        Ok(summarize(&link, now, None))
    }

    /// Every link in the namespace, by name.
    pub async fn list(&self) -> Result<Vec<LinkSummary>, CliError> {
        let mut links = self
            .links
            .list(&ListParams::default())
            .await
            .map_err(self.api_error("(list)"))?
            .items;
        links.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let now = self.clock.now();
        let mut summaries = Vec::with_capacity(links.len());
        for link in &links {
            let active = link.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
            let connections = if active {
                self.connections(link.metadata.name.as_deref().unwrap_or_default())
                    .await
            } else {
                None
            };
            summaries.push(summarize(link, now, connections));
        }
        Ok(summaries)
    }

    /// One link with its conditions and its last ten events.
    pub async fn status(&self, name: &str) -> Result<StatusReport, CliError> {
        let link = self.links.get(name).await.map_err(self.api_error(name))?;
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("involvedObject.kind=DeviceLink,involvedObject.name={name}");
        let mut events: Vec<EventLine> = events
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(self.api_error(name))?
            .items
            .into_iter()
            .map(|event| {
                let time = event
                    .event_time
                    .map(|t| t.0)
                    .or(event.last_timestamp.map(|t| t.0))
                    .or(event.first_timestamp.map(|t| t.0))
                    .or(event.metadata.creation_timestamp.map(|t| t.0));
                EventLine {
                    time: time.map(format_instant).unwrap_or_default(),
                    type_: event.type_.unwrap_or_default(),
                    reason: event.reason.unwrap_or_default(),
                    message: event.message.unwrap_or_default(),
                }
            })
            .collect();
        events.sort_by(|a, b| a.time.cmp(&b.time));
        let recent = events.split_off(events.len().saturating_sub(10));
        let active = link.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
        let connections = if active {
            self.connections(name).await
        } else {
            None
        };
        let conditions = link
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .map(|c| ConditionLine {
                        type_: c.type_.clone(),
                        status: c.status.clone(),
                        reason: c.reason.clone(),
                        message: c.message.clone(),
                        last_transition_time: format_instant(c.last_transition_time.0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(StatusReport {
            link: summarize(&link, self.clock.now(), connections),
            conditions,
            events: recent,
        })
    }

    async fn merge(&self, name: &str, patch: Value) -> Result<(), CliError> {
        self.links
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.api_error(name))?;
        Ok(())
    }

    /// Waits until the operator reports `phase` for the current generation; a Failed link
    /// ends the wait with its message.
    async fn wait_for_phase(
        &self,
        name: &str,
        phase: Phase,
        goal: &'static str,
        timeout: Duration,
        progress: &mut Progress,
    ) -> Result<DeviceLink, CliError> {
        self.wait_until(name, goal, timeout, progress, |link| {
            let Some(status) = link.status.as_ref() else {
                return Ok(false);
            };
            if status.observed_generation != link.metadata.generation {
                return Ok(false);
            }
            if status.phase == Some(Phase::Failed) && phase != Phase::Failed {
                return Err(failed(name, link));
            }
            Ok(status.phase == Some(phase))
        })
        .await
    }

    async fn wait_until(
        &self,
        name: &str,
        goal: &'static str,
        timeout: Duration,
        progress: &mut Progress,
        done: impl Fn(&DeviceLink) -> Result<bool, CliError>,
    ) -> Result<DeviceLink, CliError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = "waiting for the operator to see the change (is it running? kubectl -n devicelink-system get pods)".to_owned();
        loop {
            let link = self.links.get(name).await.map_err(self.api_error(name))?;
            let finished = done(&link);
            if !matches!(finished, Ok(false)) {
                progress.finish();
                return finished.map(|_| link);
            }
            if link
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == link.metadata.generation)
            {
                last = ready_message(&link);
            }
            progress.tick(&format!("{name}: {last}"));
            if tokio::time::Instant::now() >= deadline {
                progress.finish();
                return Err(CliError::TimedOut {
                    name: name.to_owned(),
                    goal,
                    timeout: humantime::format_duration(timeout).to_string(),
                    last,
                });
            }
            tokio::time::sleep(self.poll_every).await;
        }
    }

    /// Connections the link's proxy carries now, read from its metrics through the API
    /// server's pod proxy. Best effort: None when the pod or the permission is missing.
    async fn connections(&self, name: &str) -> Option<u64> {
        // The proxies run in the operator's proxies' namespace, labelled with their link's.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.proxy_namespace);
        let read = async {
            let list = pods
                .list(&ListParams::default().labels(&format!(
                    "{LINK_LABEL}={name},{LINK_NAMESPACE_LABEL}={}",
                    self.namespace
                )))
                .await
                .ok()?;
            let mut total = 0;
            let mut read_any = false;
            for pod in list.items {
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let Some(pod_name) = pod.metadata.name.filter(|_| running) else {
                    continue;
                };
                let path = format!(
                    "/api/v1/namespaces/{}/pods/{pod_name}:{PROXY_METRICS_PORT}/proxy/metrics",
                    self.proxy_namespace
                );
                let request = http::Request::get(path).body(Vec::new()).ok()?;
                let Ok(text) = self.client.request_text(request).await else {
                    continue;
                };
                if let Some(active) = active_connections(&text) {
                    total += active;
                    read_any = true;
                }
            }
            read_any.then_some(total)
        };
        tokio::time::timeout(Duration::from_secs(3), read)
            .await
            .ok()
            .flatten()
    }
}

/// A Failed link as the CLI reports it. NameTaken, PolicyDenied, ApplyRefused,
/// ProxyCrashLooping...: waiting longer would not help; the reason and message say what to change.
fn failed(name: &str, link: &DeviceLink) -> CliError {
    let reason = crate::lifecycle::ready_reason(link.status.as_ref()).unwrap_or("Failed");
    CliError::LinkFailed {
        name: name.to_owned(),
        message: format!("{reason}: {}", ready_message(link)),
    }
}

/// The Ready condition's message, or the phase when there is none.
fn ready_message(link: &DeviceLink) -> String {
    let status = link.status.clone().unwrap_or_default();
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .or_else(|| status.phase.map(|p| p.to_string()))
        .unwrap_or_else(|| "no status yet".to_owned())
}

/// `devicelink_connections_active N` from the proxy's Prometheus text.
pub fn active_connections(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix("devicelink_connections_active ")?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}
