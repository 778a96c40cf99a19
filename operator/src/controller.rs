//! The reconcile loop: from a DeviceLink to its children, status and events.
//!
//! Each reconcile decides from the spec, the previous status and the clock
//! ([`lifecycle::decide`]), then applies or deletes the children, writes the status if it
//! changed, publishes an event on a change of phase, and asks to be called again at the exact
//! instant the link expires. The children carry owner references, so deleting the DeviceLink
//! lets the garbage collector remove them: no finalizer, nothing to block a deletion. An
//! object of a child's name without the link's controller reference is never applied over or
//! deleted: the link reports the name as taken instead.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::{
    Error, Result,
    clock::{Clock, until},
    egress::render_network_policy,
    lifecycle::{self, Desired, Observed, Problem},
    metrics::Metrics,
    policy::{self, DeviceLinkPolicy},
    render::{
        FIELD_MANAGER, LINK_LABEL, LINK_NAMESPACE_LABEL, LINK_UID_LABEL, LINKS_REVISION_ANNOTATION,
        MANAGED_BY, ProxyImage, pod_selector, render,
    },
    resolve::Resolver,
    resource::{
        DEFAULT_PROXY_NAMESPACE, DeviceLink, DeviceLinkStatus, Phase, ValidLink, child_name,
    },
};

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub proxy: ProxyImage,
    pub clock: Clock,
    /// Every DeviceLinkPolicy in the cluster, as the policy watch last reported them.
    pub policies: Store<DeviceLinkPolicy>,
    /// Feeds [`Self::policies`]; taken by [`controller`], which runs the watch.
    pub policy_writer: Arc<Mutex<Option<Writer<DeviceLinkPolicy>>>>,
    /// Resolves device names for the policies' allowed networks.
    pub resolver: Resolver,
    /// Where every link's proxy and other children live: the one namespace allowed the
    /// proxy's capabilities, so that the links' own namespaces stay restricted.
    pub proxy_namespace: String,
}

impl Context {
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics, proxy: ProxyImage) -> Self {
        let (policies, writer) = reflector::store();
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            proxy,
            clock: Clock::System,
            policies,
            policy_writer: Arc::new(Mutex::new(Some(writer))),
            resolver: Resolver::System,
            proxy_namespace: DEFAULT_PROXY_NAMESPACE.to_owned(),
        }
    }
}

/// How long a reconcile waits for the first list of DeviceLinkPolicies: judging a link before
/// they are known could open what a policy refuses.
const POLICIES_WAIT: Duration = Duration::from_secs(10);

/// The device's addresses: its literal address, or every address its name resolves to now.
/// A lookup that fails is retried rather than judged: a DNS outage must not close links that
/// are allowed.
async fn device_addresses(ctx: &Context, link: &ValidLink) -> Result<Vec<IpAddr>> {
    let host = &link.device.host;
    if let Ok(address) = host.parse::<IpAddr>() {
        return Ok(vec![address]);
    }
    ctx.resolver
        .addresses(host, link.device.port)
        .await
        .map_err(|source| Error::Resolve {
            host: host.clone(),
            source,
        })
}

/// Why the policies refuse `link`, opened at `enabled_at` with its device at `addresses`, if
/// they do.
async fn policy_refusal(
    ctx: &Context,
    link: &ValidLink,
    enabled_at: Timestamp,
    addresses: &[IpAddr],
) -> Result<Option<Problem>> {
    match tokio::time::timeout(POLICIES_WAIT, ctx.policies.wait_until_ready()).await {
        Ok(Ok(())) => {}
        _ => return Err(Error::PoliciesNotReady),
    }
    let mut policies: Vec<DeviceLinkPolicy> =
        ctx.policies.state().iter().map(|p| (**p).clone()).collect();
    policies.sort_by_key(|p| p.metadata.name.clone());
    Ok(policy::check(link, enabled_at, addresses, &policies).err())
}

/// How often an open link whose device is given by name is looked at again, so that its
/// egress NetworkPolicy (and the policy's network check) follows the name's addresses.
const RECHECK_NAMED_DEVICE: Duration = Duration::from_secs(300);

/// How long to wait before looking again at a link that is open but not yet serving: a proxy
/// pod's trouble (a crash loop, an image not pulled) shows on the pod, which is not watched.
const RECHECK_NOT_READY: Duration = Duration::from_secs(15);

/// Brings one DeviceLink's children, status and events in line with its spec.
pub async fn reconcile(link: Arc<DeviceLink>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = link.namespace().ok_or(Error::NotNamespaced)?;
    let name = link.name_any();
    let now = ctx.clock.now();
    let uid = link.uid().unwrap_or_default();
    let finalizers = link.finalizers().to_vec();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    if link.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            // The children are in another namespace: no garbage collector follows the link
            // there, so they go now, and then the link may.
            delete_children(&ctx.client, &ctx.proxy_namespace, &namespace, &name, &uid).await?;
            let remaining: Vec<String> =
                finalizers.into_iter().filter(|f| f != FINALIZER).collect();
            patch_finalizers(&ctx.client, &link, &remaining).await?;
            info!(link = %name, namespace = %namespace, "deleted: its children are removed");
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut with_ours = finalizers;
        with_ours.push(FINALIZER.to_owned());
        patch_finalizers(&ctx.client, &link, &with_ours).await?;
    }

    let mut desired = lifecycle::decide(&link, now);
    if let Desired::Open { link: valid, .. } = &mut desired {
        valid.children_namespace = ctx.proxy_namespace.clone();
    }
    let mut refusal = None;
    let observed = match &desired {
        Desired::Open {
            link: valid,
            enabled_at,
            expires_at,
        } => {
            let addresses = device_addresses(&ctx, valid).await?;
            match policy_refusal(&ctx, valid, *enabled_at, &addresses).await? {
                // Refused by the admin's policy: whatever was applied before goes.
                Some(problem) => {
                    delete_children(&ctx.client, &ctx.proxy_namespace, &namespace, &name, &uid)
                        .await?;
                    Observed::blocked(problem)
                }
                None => match apply_children(&ctx, valid, *expires_at, &addresses).await? {
                    Applied::Done(observed) => observed,
                    Applied::NameTaken(problem) => Observed::blocked(problem),
                    Applied::Refused { problem, error } => {
                        refusal = Some(error);
                        Observed::blocked(problem)
                    }
                },
            }
        }
        Desired::Disabled { .. } | Desired::Expired { .. } | Desired::Invalid(_) => {
            delete_children(&ctx.client, &ctx.proxy_namespace, &namespace, &name, &uid).await?;
            Observed::default()
        }
    };

    let status = lifecycle::status_for(&link, &desired, &observed, now);
    if link.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, &namespace, &name, &status).await?;
    }
    if let Some(transition) = lifecycle::transition(link.status.as_ref(), &status) {
        if transition.warning {
            warn!(link = %name, namespace = %namespace, reason = %transition.reason, "{}", transition.note);
        } else {
            info!(link = %name, namespace = %namespace, reason = %transition.reason, "{}", transition.note);
        }
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason,
            note: Some(transition.note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // An event is a courtesy: losing one must not undo or repeat the change it reports.
        if let Err(error) = ctx.recorder.publish(&event, &link.object_ref(&())).await {
            warn!(link = %name, namespace = %namespace, %error, "could not publish event");
        }
    }
    // A refused apply is on the link now; the error retries it with backoff and counts it.
    if let Some(error) = refusal {
        return Err(Error::Apply(error));
    }

    Ok(match desired {
        Desired::Open {
            link, expires_at, ..
        } if status.phase == Some(Phase::Active) => {
            let named = link.device.host.parse::<IpAddr>().is_err();
            let next = until(now, expires_at);
            Action::requeue(if named {
                next.min(RECHECK_NAMED_DEVICE)
            } else {
                next
            })
        }
        Desired::Open { expires_at, .. } => {
            Action::requeue(until(now, expires_at).min(RECHECK_NOT_READY))
        }
        _ => Action::await_change(),
    })
}

/// Retries failed reconciles after a pause, counting the failure by kind.
pub fn error_policy(link: Arc<DeviceLink>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(link = %link.name_any(), namespace = ?link.namespace(), %error, "reconcile failed; retrying in 10s");
    ctx.metrics.reconcile_failed(error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

/// What became of applying an open link's children.
enum Applied {
    /// Applied; what the API server reported of them.
    Done(Observed),
    /// A child's name is held by an object that is not this link's: nothing was applied.
    NameTaken(Problem),
    /// The API server refused a child (admission, quota, an invalid field).
    Refused {
        problem: Problem,
        error: kube::Error,
    },
}

/// Whether `meta` is the metadata of one of this link's children: its controller owner
/// reference or its uid label names the link's uid. A namesake created by anyone else is
/// never ours.
pub fn is_ours(meta: &ObjectMeta, link_uid: &str) -> bool {
    if link_uid.is_empty() {
        return false;
    }
    let owned = meta
        .owner_references
        .iter()
        .flatten()
        .any(|owner| owner.controller == Some(true) && owner.uid == link_uid);
    // In the proxies' namespace, where owner references cannot point, the uid label does.
    let labelled = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LINK_UID_LABEL))
        .is_some_and(|uid| uid == link_uid);
    owned || labelled
}

/// Who an object that is not ours belongs to, as far as its metadata says.
fn described_owner(meta: &ObjectMeta) -> String {
    if let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    {
        return format!("it is controlled by {} {}", owner.kind, owner.name);
    }
    match meta
        .managed_fields
        .iter()
        .flatten()
        .find_map(|f| f.manager.as_deref())
    {
        Some(manager) => format!("it was written by {manager}, not by this DeviceLink"),
        None => "it does not belong to this DeviceLink".to_owned(),
    }
}

/// Reads a child by name: None when absent, a problem when the name is someone else's.
async fn check_name<K>(api: &Api<K>, name: &str, link: &ValidLink) -> Result<Option<Problem>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await.map_err(Error::Apply)? else {
        return Ok(None);
    };
    let meta = existing.meta();
    if is_ours(meta, link.uid.as_deref().unwrap_or_default()) {
        return Ok(None);
    }
    let kind = K::kind(&());
    Ok(Some(Problem::new(
        "NameTaken",
        format!(
            "{kind} {}/{name} already exists and {}; the operator neither changes nor deletes it. Rename the link, or remove or rename that {kind}",
            link.children_namespace,
            described_owner(meta)
        ),
    )))
}

/// What the API server said when it refused a child, with the fields it named.
fn refusal(kind: &str, namespace: &str, name: &str, error: &kube::Error) -> Option<Problem> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    // 400, 403 and 422 are the API server's or an admission plugin's judgment (quota, pod
    // security, a webhook, an invalid value): the user has something to change. Anything else
    // (a timeout, a conflict, a server error) is retried quietly.
    if !matches!(status.code, 400 | 403 | 422) {
        return None;
    }
    let mut message = format!(
        "the API server refused {kind} {namespace}/{name} ({}): {}",
        status.reason, status.message
    );
    for cause in status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .filter(|c| !status.message.contains(&c.message))
    {
        message.push_str(&format!("; {}: {}", cause.field, cause.message));
    }
    Some(Problem::new("ApplyRefused", message))
}

async fn apply_children(
    ctx: &Context,
    link: &ValidLink,
    expires_at: Timestamp,
    addresses: &[IpAddr],
) -> Result<Applied> {
    let children = render(link, expires_at, &ctx.proxy);
    let network_policy = render_network_policy(link, addresses);
    let network_policies: Api<NetworkPolicy> =
        Api::namespaced(ctx.client.clone(), &link.children_namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = link.child_name();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &link.children_namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &link.children_namespace);
    let deployments: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &link.children_namespace);
    // Every name is checked before anything is applied, so a taken name leaves nothing half
    // done, and a server-side apply (which would take the object over) never meets a stranger.
    let taken = [
        check_name(&config_maps, &name, link).await?,
        check_name(&services, &name, link).await?,
        check_name(&deployments, &name, link).await?,
        check_name(&network_policies, &name, link).await?,
    ];
    if let Some(problem) = taken.into_iter().flatten().next() {
        return Ok(Applied::NameTaken(problem));
    }
    let refused = |kind: &str, error: kube::Error| match refusal(
        kind,
        &link.children_namespace,
        &name,
        &error,
    ) {
        Some(problem) => Ok(Applied::Refused { problem, error }),
        None => Err(Error::Apply(error)),
    };
    // The links file first: a new pod mounts it, a running one re-reads it.
    if let Err(error) = config_maps
        .patch(&name, &params, &Patch::Apply(&children.config_map))
        .await
    {
        return refused("ConfigMap", error);
    }
    // The egress rules before the pod they confine.
    if let Err(error) = network_policies
        .patch(&name, &params, &Patch::Apply(&network_policy))
        .await
    {
        return refused("NetworkPolicy", error);
    }
    let service = match services
        .patch(&name, &params, &Patch::Apply(&children.service))
        .await
    {
        Ok(service) => service,
        Err(error) => return refused("Service", error),
    };
    let deployment = match deployments
        .patch(&name, &params, &Patch::Apply(&children.deployment))
        .await
    {
        Ok(deployment) => deployment,
        Err(error) => return refused("Deployment", error),
    };
    let pods = nudge_proxy_pods(ctx, link, &children.links_revision()).await;
    let mut observed = Observed::from_children(&service, &deployment);
    if observed.problem.is_none() && !observed.proxy_ready {
        observed.problem = lifecycle::pod_problem(&pods);
    }
    Ok(Applied::Done(observed))
}

/// Marks the link's running proxy pods with the links file's revision. A pod whose annotation
/// changes is synced by its kubelet at once, and that sync refreshes the ConfigMap volume: the
/// proxy sees the new file within seconds instead of at the kubelet's next periodic sync (a
/// minute or more), which matters most for a source removed from the ACL. Best effort: a pod
/// not marked still gets the file on that periodic sync. Returns the pods, whose container
/// states say why a proxy is not ready.
async fn nudge_proxy_pods(ctx: &Context, link: &ValidLink, revision: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &link.children_namespace);
    let selector = pod_selector(link)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            warn!(link = %link.name, namespace = %link.namespace, %error, "cannot list the proxy pods to hand them the new links file; they read it at the kubelet's next sync");
            return Vec::new();
        }
    };
    for pod in &list {
        let current = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(LINKS_REVISION_ANNOTATION));
        if current.map(String::as_str) == Some(revision) {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {LINKS_REVISION_ANNOTATION: revision}}});
        let pod_name = pod.name_any();
        if let Err(error) = pods
            .patch(&pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(link = %link.name, pod = %pod_name, %error, "cannot mark the proxy pod with the new links file; it reads it at the kubelet's next sync");
        }
    }
    list
}

/// Deletes the link's children, and only them: a namesake that is not the link's is left as
/// it is, and the delete is conditional on the uid read, so an object replaced in between is
/// not deleted either.
async fn delete_children(
    client: &Client,
    namespace: &str,
    link_namespace: &str,
    link_name: &str,
    link_uid: &str,
) -> Result<()> {
    let name = child_name(link_namespace, link_name);
    delete_if_ours::<Service>(client, namespace, &name, link_uid).await?;
    delete_if_ours::<Deployment>(client, namespace, &name, link_uid).await?;
    delete_if_ours::<ConfigMap>(client, namespace, &name, link_uid).await?;
    delete_if_ours::<NetworkPolicy>(client, namespace, &name, link_uid).await
}

async fn delete_if_ours<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    link_uid: &str,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let Some(existing) = api.get_opt(name).await.map_err(Error::Delete)? else {
        return Ok(());
    };
    if !is_ours(existing.meta(), link_uid) {
        info!(namespace, name, kind = %K::kind(&()), "not deleting an object of the child's name that is not this link's");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(()),
        Err(error) => Err(Error::Delete(error)),
    }
}

/// The finalizer that holds a deleted DeviceLink until its children (in the proxies'
/// namespace, out of the garbage collector's reach) are removed.
pub const FINALIZER: &str = "devicelink.io/children";

/// Sets the link's finalizers to `finalizers`, conditional on the resourceVersion read, so a
/// finalizer someone else added meanwhile is never dropped (a conflict retries).
async fn patch_finalizers(client: &Client, link: &DeviceLink, finalizers: &[String]) -> Result<()> {
    let links: Api<DeviceLink> =
        Api::namespaced(client.clone(), &link.namespace().unwrap_or_default());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": link.resource_version(),
    }});
    links
        .patch(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::Finalizer)?;
    Ok(())
}

async fn patch_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &DeviceLinkStatus,
) -> Result<()> {
    let links: Api<DeviceLink> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": DeviceLink::api_version(&()),
        "kind": DeviceLink::kind(&()),
        "status": status,
    });
    links
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
    Ok(())
}

/// Fails with an install hint when the DeviceLink CRD is missing, so the operator does not
/// start and log watch errors forever.
pub async fn ensure_crd_installed(client: &Client) -> Result<()> {
    let links: Api<DeviceLink> = Api::all(client.clone());
    match links.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Err(Error::CrdMissing),
        Err(error) => Err(Error::Kube(error)),
    }
}

/// The DeviceLink a child belongs to, by its labels (owner references cannot cross namespaces).
fn link_of<K: Resource>(child: K) -> Option<ObjectRef<DeviceLink>> {
    let labels = child.meta().labels.as_ref()?;
    let name = labels.get(LINK_LABEL)?;
    let namespace = labels.get(LINK_NAMESPACE_LABEL)?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Watches DeviceLinks (and the Services and Deployments it owns) and reconciles until
/// `shutdown` completes. Returns the cache of links so metrics can count them.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Store<DeviceLink>, impl std::future::Future<Output = ()>) {
    let client = ctx.client.clone();
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let mut controller = Controller::new(
        Api::<DeviceLink>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Service>::namespaced(client.clone(), &ctx.proxy_namespace),
        children.clone(),
        link_of,
    )
    .watches(
        Api::<Deployment>::namespaced(client.clone(), &ctx.proxy_namespace),
        children,
        link_of,
    );
    let writer = ctx
        .policy_writer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(writer) = writer {
        // A policy created, changed or deleted re-judges every link.
        let policy_changes = reflector::reflector(
            writer,
            watcher::watcher(
                Api::<DeviceLinkPolicy>::all(client),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .filter_map(|event| async move { event.ok().map(|_| ()) });
        controller = controller.reconcile_all_on(policy_changes);
    }
    let controller = controller.graceful_shutdown_on(shutdown);
    let store = controller.store();
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((link, _)) => tracing::debug!(link = %link.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "controller event"),
            }
        });
    (store, run)
}

#[cfg(test)]
mod tests;
