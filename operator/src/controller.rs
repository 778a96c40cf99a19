//! The reconcile loop: from a DeviceLink to its children, status and events.
//!
//! Each reconcile decides from the spec, the previous status and the clock
//! ([`lifecycle::decide`]), then applies or deletes the children, writes the status if it
//! changed, publishes an event on a change of phase, and asks to be called again at the exact
//! instant the link expires. The children carry owner references, so deleting the DeviceLink
//! lets the garbage collector remove them: no finalizer, nothing to block a deletion.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use crate::{
    Error, Result,
    clock::{Clock, until},
    lifecycle::{self, Desired, Observed},
    metrics::Metrics,
    render::{
        FIELD_MANAGER, LINKS_REVISION_ANNOTATION, MANAGED_BY, ProxyImage, child_labels, render,
    },
    resource::{DeviceLink, DeviceLinkStatus, ValidLink, child_name},
};

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub proxy: ProxyImage,
    pub clock: Clock,
}

impl Context {
    pub fn new(client: Client, reporter: Reporter, metrics: Metrics, proxy: ProxyImage) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            proxy,
            clock: Clock::System,
        }
    }
}

/// Brings one DeviceLink's children, status and events in line with its spec.
pub async fn reconcile(link: Arc<DeviceLink>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    if link.metadata.deletion_timestamp.is_some() {
        // Owner references hand the children to the garbage collector.
        return Ok(Action::await_change());
    }
    let namespace = link.namespace().ok_or(Error::NotNamespaced)?;
    let name = link.name_any();
    let now = ctx.clock.now();

    let desired = lifecycle::decide(&link, now);
    let observed = match &desired {
        Desired::Open {
            link: valid,
            expires_at,
            ..
        } => apply_children(&ctx, valid, *expires_at).await?,
        Desired::Disabled { .. } | Desired::Expired { .. } | Desired::Invalid(_) => {
            delete_children(&ctx.client, &namespace, &name).await?;
            Observed::default()
        }
    };

    let status = lifecycle::status_for(&link, &desired, &observed, now);
    let previous_phase = link.status.as_ref().and_then(|s| s.phase);
    if link.status.as_ref() != Some(&status) {
        patch_status(&ctx.client, &namespace, &name, &status).await?;
    }
    if let Some(transition) = lifecycle::transition(previous_phase, &status) {
        info!(link = %name, namespace = %namespace, reason = transition.reason, "{}", transition.note);
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.to_owned(),
            note: Some(transition.note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // An event is a courtesy: losing one must not undo or repeat the change it reports.
        if let Err(error) = ctx.recorder.publish(&event, &link.object_ref(&())).await {
            warn!(link = %name, namespace = %namespace, %error, "could not publish event");
        }
    }

    Ok(match desired {
        Desired::Open { expires_at, .. } => Action::requeue(until(now, expires_at)),
        _ => Action::await_change(),
    })
}

/// Retries failed reconciles after a pause, counting the failure by kind.
pub fn error_policy(link: Arc<DeviceLink>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(link = %link.name_any(), namespace = ?link.namespace(), %error, "reconcile failed; retrying in 10s");
    ctx.metrics.reconcile_failed(error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

async fn apply_children(
    ctx: &Context,
    link: &ValidLink,
    expires_at: Timestamp,
) -> Result<Observed> {
    let children = render(link, expires_at, &ctx.proxy);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = link.child_name();
    // The links file first: a new pod mounts it, a running one re-reads it.
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &link.namespace);
    config_maps
        .patch(&name, &params, &Patch::Apply(&children.config_map))
        .await
        .map_err(Error::Apply)?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &link.namespace);
    let service = services
        .patch(&name, &params, &Patch::Apply(&children.service))
        .await
        .map_err(Error::Apply)?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &link.namespace);
    let deployment = deployments
        .patch(&name, &params, &Patch::Apply(&children.deployment))
        .await
        .map_err(Error::Apply)?;
    nudge_proxy_pods(ctx, link, &children.links_revision()).await;
    Ok(Observed::from_children(&service, &deployment))
}

/// Marks the link's running proxy pods with the links file's revision. A pod whose annotation
/// changes is synced by its kubelet at once, and that sync refreshes the ConfigMap volume: the
/// proxy sees the new file within seconds instead of at the kubelet's next periodic sync (a
/// minute or more), which matters most for a source removed from the ACL. Best effort: a pod
/// not marked still gets the file on that periodic sync.
async fn nudge_proxy_pods(ctx: &Context, link: &ValidLink, revision: &str) {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &link.namespace);
    let labels = child_labels(&link.name);
    let selector = format!(
        "app.kubernetes.io/name={},devicelink.io/link={}",
        labels["app.kubernetes.io/name"], link.name
    );
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        Err(error) => {
            warn!(link = %link.name, namespace = %link.namespace, %error, "cannot list the proxy pods to hand them the new links file; they read it at the kubelet's next sync");
            return;
        }
    };
    for pod in list {
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
}

async fn delete_children(client: &Client, namespace: &str, link_name: &str) -> Result<()> {
    let name = child_name(link_name);
    delete_if_present::<Service>(client, namespace, &name).await?;
    delete_if_present::<Deployment>(client, namespace, &name).await?;
    delete_if_present::<ConfigMap>(client, namespace, &name).await
}

async fn delete_if_present<K>(client: &Client, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(Error::Delete(error)),
    }
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

/// Watches DeviceLinks (and the Services and Deployments it owns) and reconciles until
/// `shutdown` completes. Returns the cache of links so metrics can count them.
pub fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (Store<DeviceLink>, impl std::future::Future<Output = ()>) {
    let client = ctx.client.clone();
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(
        Api::<DeviceLink>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<Deployment>::all(client), children)
    .graceful_shutdown_on(shutdown);
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
