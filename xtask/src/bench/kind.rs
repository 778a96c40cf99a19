//! `cargo xtask bench --kind`: the same throughput measurement, in a kind cluster, through the
//! path users deploy: the images from `deploy/*.Dockerfile`, the CRD, RBAC and operator from
//! `deploy/` (`kubectl apply -k deploy/`), a DeviceLink to an iperf3 "device" pod, and an iperf3
//! client pod going through the link's Service. The cluster is deleted at the end, also on
//! failure.
//!
//! Docker is not available on every machine (not on the project's CI VMs), so the plan is pure
//! data, unit-tested, and `--kind-check` checks offline what can be checked without a cluster:
//! the bench manifest against Kubernetes' schemas, the DeviceLink through the operator's own
//! validation and rendering, and `deploy/`'s kustomization.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{
    environment,
    iperf::{self, Flow},
    measure::Sample,
    summary, table,
};

pub const CLUSTER: &str = "devicelink-bench";
pub const NAMESPACE: &str = "devicelink-bench";
/// The DeviceLink's name; the operator names its Service and Deployment `devicelink-<name>`.
pub const LINK: &str = "iperf3";
pub const LINK_PORT: u16 = 15201;
/// kind's default pod network: where the client pod's address comes from.
pub const POD_SUBNET: &str = "10.244.0.0/16";
/// A small, widely used iperf3 image for both ends.
pub const IPERF3_IMAGE: &str = "docker.io/networkstatic/iperf3:latest";
pub const PROXY_IMAGE: &str = "devicelink-proxy:0.1.0";
pub const OPERATOR_IMAGE: &str = "devicelink-operator:0.1.0";

/// One command of the plan, with what it is for (printed before it runs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub why: &'static str,
    pub argv: Vec<String>,
}

fn step(why: &'static str, argv: &[&str]) -> Step {
    Step {
        why,
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

fn kubectl(why: &'static str, args: &[&str]) -> Step {
    let context = format!("kind-{CLUSTER}");
    let mut argv = vec!["kubectl", "--context", &context];
    argv.extend_from_slice(args);
    step(why, &argv)
}

/// Everything before the measurement, in order. `manifest` is the bench manifest's path.
pub fn setup_plan(manifest: &str) -> Vec<Step> {
    let link_deployment = format!("deployment/devicelink-{LINK}");
    // kind names its single node after the cluster.
    let node = format!("{CLUSTER}-control-plane");
    vec![
        step(
            "build the proxy image (as deploy/proxy.Dockerfile documents)",
            &[
                "docker",
                "build",
                "-f",
                "deploy/proxy.Dockerfile",
                "-t",
                PROXY_IMAGE,
                ".",
            ],
        ),
        step(
            "build the operator image",
            &[
                "docker",
                "build",
                "-f",
                "deploy/operator.Dockerfile",
                "-t",
                OPERATOR_IMAGE,
                ".",
            ],
        ),
        step(
            "create the cluster",
            &[
                "kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s",
            ],
        ),
        step(
            "make the kubelet's seccomp directory on the node",
            &[
                "docker",
                "exec",
                &node,
                "mkdir",
                "-p",
                "/var/lib/kubelet/seccomp",
            ],
        ),
        step(
            "install the proxy pods' seccomp profile (their Localhost profile) on the node",
            &[
                "docker",
                "cp",
                "deploy/seccomp/devicelink-proxy.json",
                &format!("{node}:/var/lib/kubelet/seccomp/devicelink-proxy.json"),
            ],
        ),
        step(
            "load the images into the cluster's node",
            &[
                "kind",
                "load",
                "docker-image",
                "--name",
                CLUSTER,
                PROXY_IMAGE,
                OPERATOR_IMAGE,
            ],
        ),
        kubectl(
            "install the CRD, RBAC and operator: the same manifests users apply",
            &["apply", "-k", "deploy/"],
        ),
        kubectl(
            "wait for the operator",
            &[
                "-n",
                "devicelink-system",
                "rollout",
                "status",
                "deployment/devicelink-operator",
                "--timeout=300s",
            ],
        ),
        kubectl(
            "deploy the iperf3 device and client pods and open the DeviceLink",
            &["apply", "-f", manifest],
        ),
        kubectl(
            "wait for the device and client pods",
            &[
                "-n",
                NAMESPACE,
                "wait",
                "--for=condition=Ready",
                "pod/device",
                "pod/client",
                "--timeout=300s",
            ],
        ),
        kubectl(
            "wait for the operator to create the link's proxy",
            &[
                "-n",
                NAMESPACE,
                "wait",
                "--for=create",
                &link_deployment,
                "--timeout=120s",
            ],
        ),
        kubectl(
            "wait for the link's proxy to be ready",
            &[
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                &link_deployment,
                "--timeout=300s",
            ],
        ),
    ]
}

/// Always run last, whatever happened before.
pub fn teardown_plan() -> Vec<Step> {
    vec![step(
        "delete the cluster",
        &["kind", "delete", "cluster", "--name", CLUSTER],
    )]
}

/// Where the client pod connects: direct to the device's Service, or through the link's.
pub fn targets() -> [(&'static str, String, u16); 2] {
    [
        (
            "direct (pod to pod)",
            format!("device.{NAMESPACE}.svc.cluster.local"),
            iperf::PORT,
        ),
        (
            "devicelink (DeviceLink Service)",
            format!("devicelink-{LINK}.{NAMESPACE}.svc.cluster.local"),
            LINK_PORT,
        ),
    ]
}

/// One iperf3 run from the client pod.
pub fn iperf_step(host: &str, port: u16, flow: Flow, seconds: u64) -> Step {
    let (port, seconds) = (port.to_string(), seconds.to_string());
    let mut args = vec![
        "-n", NAMESPACE, "exec", "client", "--", "iperf3", "-J", "-c", host, "-p", &port, "-t",
        &seconds,
    ];
    args.extend(flow.args());
    kubectl("measure", &args)
}

/// The bench's own objects: the device (an iperf3 server behind a ClusterIP Service), the
/// client, and the DeviceLink that admits the pod network only.
pub fn manifest() -> String {
    let port = iperf::PORT;
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
---
apiVersion: v1
kind: Pod
metadata:
  name: device
  namespace: {NAMESPACE}
  labels:
    app.kubernetes.io/name: bench-device
spec:
  containers:
    - name: iperf3
      image: {IPERF3_IMAGE}
      args: [\"-s\", \"-p\", \"{port}\"]
      ports:
        - name: iperf3
          containerPort: {port}
---
apiVersion: v1
kind: Service
metadata:
  name: device
  namespace: {NAMESPACE}
spec:
  selector:
    app.kubernetes.io/name: bench-device
  ports:
    - name: iperf3
      port: {port}
      targetPort: iperf3
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NAMESPACE}
spec:
  containers:
    - name: iperf3
      image: {IPERF3_IMAGE}
      command: [\"sleep\", \"infinity\"]
---
apiVersion: devicelink.io/v1alpha1
kind: DeviceLink
metadata:
  name: {LINK}
  namespace: {NAMESPACE}
spec:
  device:
    host: device.{NAMESPACE}.svc.cluster.local
    port: {port}
  port: {LINK_PORT}
  allowedSourceRanges:
    - {POD_SUBNET}
  dataPlane: ebpf
  ttl: 1h
"
    )
}

fn run_step(step: &Step) -> anyhow::Result<String> {
    println!("bench --kind: {} ({})", step.why, step.argv.join(" "));
    let (program, args) = step.argv.split_first().context("empty step")?;
    let output = Command::new(program)
        .args(args)
        .current_dir(crate::workspace::root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!("{} failed ({})", step.argv.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn require_tools() -> anyhow::Result<()> {
    for (tool, probe) in [
        ("docker", "info"),
        ("kind", "version"),
        ("kubectl", "version"),
    ] {
        let ok = Command::new(tool)
            .arg(probe)
            .args(if tool == "kubectl" {
                &["--client"][..]
            } else {
                &[][..]
            })
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!(
                "`{tool} {probe}` failed: --kind needs a running Docker daemon, kind and kubectl. \
                 Without them, `cargo xtask bench --kind-check` checks the manifests offline."
            );
        }
    }
    Ok(())
}

fn set_up_and_measure(
    manifest: &str,
    repetitions: u32,
    seconds: u64,
) -> anyhow::Result<Vec<Sample>> {
    for step in setup_plan(manifest) {
        run_step(&step)?;
    }
    let mut samples = Vec::new();
    for round in 0..repetitions {
        for (label, host, port) in targets() {
            for flow in Flow::ALL {
                let json = run_step(&iperf_step(&host, port, flow, seconds))?;
                let transfer = iperf::parse(&json)?;
                samples.push(Sample {
                    round,
                    row: label.to_string(),
                    measure: flow.measure(),
                    value: transfer.bits_per_second / 1e9,
                });
            }
        }
    }
    Ok(samples)
}

pub fn run(repetitions: u32, seconds: u64, out_dir: &Path) -> anyhow::Result<()> {
    require_tools()?;
    let manifest_path =
        std::env::temp_dir().join(format!("devicelink-bench-kind-{}.yaml", std::process::id()));
    std::fs::write(&manifest_path, manifest())?;
    let manifest_arg = manifest_path.display().to_string();
    let result = set_up_and_measure(&manifest_arg, repetitions, seconds);
    // The cluster goes whatever happened.
    for step in teardown_plan() {
        if let Err(e) = run_step(&step) {
            eprintln!("bench --kind: teardown: {e:#}");
        }
    }
    let _ = std::fs::remove_file(&manifest_path);
    let samples = result?;
    let rows: Vec<String> = targets().iter().map(|(l, _, _)| l.to_string()).collect();
    let summaries = summary::summarize(&samples);
    let markdown = table::markdown(
        &rows,
        &summaries,
        &[],
        &[],
        &format!(
            "kind cluster {CLUSTER} on {}",
            environment::machine_description()
        ),
        &[],
    );
    println!("\n{markdown}");
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(out_dir.join("kind.md"), &markdown)?;
    std::fs::write(
        out_dir.join("kind.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "samples": samples, "summaries": summaries,
        }))?,
    )?;
    Ok(())
}

/// What can be checked without Docker: the bench manifest's built-in objects against
/// Kubernetes' schemas (kubernetes-validate, which `cargo xtask setup` installs), the DeviceLink
/// through the operator's own validation and rendering, and deploy/'s kustomization.
pub fn check() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "devicelink-bench-kind-check-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let docs: Vec<String> = manifest().split("\n---\n").map(str::to_string).collect();
    let (link, builtin): (Vec<String>, Vec<String>) = docs
        .into_iter()
        .partition(|d| d.contains("kind: DeviceLink"));
    let builtin_path = dir.join("builtin.yaml");
    let link_path = dir.join("devicelink.yaml");
    std::fs::write(&builtin_path, builtin.join("\n---\n"))?;
    std::fs::write(&link_path, link.join("\n---\n"))?;
    let result = check_files(&dir, &builtin_path, &link_path);
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    println!("bench --kind-check: the plan that --kind runs:");
    for s in setup_plan("<bench manifest>")
        .iter()
        .chain(&teardown_plan())
    {
        println!("  {}: {}", s.why, s.argv.join(" "));
    }
    Ok(())
}

fn check_files(dir: &Path, builtin_path: &Path, link_path: &Path) -> anyhow::Result<()> {
    run_step(&step(
        "validate the bench's pods, Services and namespace against Kubernetes' schemas",
        &[
            "kubernetes-validate",
            "--strict",
            "--kubernetes-version",
            "1.33.0",
            &builtin_path.display().to_string(),
        ],
    ))?;
    let rendered = run_step(&step(
        "validate and render the bench DeviceLink with the operator",
        &[
            "cargo",
            "run",
            "--quiet",
            "-p",
            "devicelink-operator",
            "--bin",
            "devicelink-operator",
            "--",
            "render",
            "-f",
            &link_path.display().to_string(),
        ],
    ))?;
    let service = format!("name: devicelink-{LINK}");
    if !rendered.contains(&service) || !rendered.contains(&format!("port: {LINK_PORT}")) {
        bail!(
            "the operator's rendering has no Service devicelink-{LINK} on port {LINK_PORT}, which the client targets:\n{rendered}"
        );
    }
    let rendered_path = dir.join("rendered.yaml");
    std::fs::write(&rendered_path, &rendered)?;
    run_step(&step(
        "validate what the operator renders for it",
        &[
            "kubernetes-validate",
            "--strict",
            "--kubernetes-version",
            "1.33.0",
            &rendered_path.display().to_string(),
        ],
    ))?;
    run_step(&step(
        "build deploy/'s kustomization (what `apply -k` sends)",
        &["kubectl", "kustomize", "deploy/"],
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(plan: &[Step], needle: &[&str]) -> usize {
        plan.iter()
            .position(|s| needle.iter().all(|n| s.argv.iter().any(|a| a == n)))
            .unwrap_or_else(|| panic!("no step with {needle:?} in {plan:#?}"))
    }

    #[test]
    fn images_are_built_and_loaded_before_anything_uses_them() {
        let plan = setup_plan("bench.yaml");
        let built = position(&plan, &["build", "deploy/proxy.Dockerfile"])
            .max(position(&plan, &["build", "deploy/operator.Dockerfile"]));
        let created = position(&plan, &["create", "cluster"]);
        let loaded = position(&plan, &["load", PROXY_IMAGE, OPERATOR_IMAGE]);
        let installed = position(&plan, &["apply", "deploy/"]);
        let deployed = position(&plan, &["apply", "bench.yaml"]);
        assert!(
            built < loaded && created < loaded,
            "load needs the images and the cluster"
        );
        assert!(
            loaded < installed,
            "the operator's pods must find their image"
        );
        assert!(
            installed < deployed,
            "the DeviceLink needs the CRD and the operator"
        );
    }

    #[test]
    fn the_plan_waits_for_the_link_before_measuring_and_always_tears_down() {
        let plan = setup_plan("bench.yaml");
        let last = plan.last().unwrap();
        assert!(
            last.argv.contains(&format!("deployment/devicelink-{LINK}")),
            "the last setup step waits for the link's proxy: {last:?}"
        );
        assert_eq!(
            teardown_plan()[0].argv,
            ["kind", "delete", "cluster", "--name", CLUSTER]
        );
        assert!(
            plan.iter()
                .filter(|s| s.argv[0] == "kubectl")
                .all(|s| s.argv[2] == format!("kind-{CLUSTER}")),
            "every kubectl step targets the bench cluster, never the user's current context"
        );
    }

    #[test]
    fn the_manifest_and_the_targets_agree_on_names_and_ports() {
        let manifest = manifest();
        let (_, via_link_host, via_link_port) = &targets()[1];
        assert_eq!(
            via_link_host,
            &format!("devicelink-{LINK}.{NAMESPACE}.svc.cluster.local")
        );
        assert!(manifest.contains(&format!("  name: {LINK}\n")));
        assert!(manifest.contains(&format!("  port: {via_link_port}\n")));
        assert!(manifest.contains(&format!("    host: device.{NAMESPACE}.svc.cluster.local\n")));
        assert!(
            manifest.contains(&format!("    - {POD_SUBNET}\n")),
            "the link admits the client pod's network"
        );
        assert_eq!(manifest.matches("\n---\n").count(), 4, "five objects");
    }

    #[test]
    fn iperf_steps_run_in_the_client_pod_with_the_flow_flags() {
        let down = iperf_step("h", 1, Flow::Download, 3);
        assert!(down.argv.windows(3).any(|w| w == ["exec", "client", "--"]));
        assert!(down.argv.contains(&"-R".to_string()));
        let eight = iperf_step("h", 1, Flow::Upload8, 3);
        assert!(eight.argv.windows(2).any(|w| w == ["-P", "8"]));
        let up = iperf_step("h", 1, Flow::Upload, 3);
        assert!(!up.argv.contains(&"-R".to_string()) && !up.argv.contains(&"-P".to_string()));
    }
}
