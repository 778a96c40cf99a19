//! The link's egress NetworkPolicy: its proxy pod may open connections only to its device's
//! addresses on the device's port, and ask the cluster DNS. Whatever else the pod could reach
//! (the API server, other tenants' services, the cloud's metadata endpoint) is closed to it
//! where the cluster's network plugin enforces NetworkPolicies.

use std::net::IpAddr;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{
    render::{child_metadata, pod_selector},
    resource::ValidLink,
};

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".to_owned()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..NetworkPolicyPort::default()
    }
}

/// The policy for `link`, whose device is at `addresses` (its literal address, or what its
/// name resolved to; the operator renders it again when that changes).
pub fn render_network_policy(link: &ValidLink, addresses: &[IpAddr]) -> NetworkPolicy {
    let device = NetworkPolicyEgressRule {
        to: Some(
            addresses
                .iter()
                .map(|address| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: match address {
                            IpAddr::V4(v4) => format!("{v4}/32"),
                            IpAddr::V6(v6) => format!("{v6}/128"),
                        },
                        except: None,
                    }),
                    ..NetworkPolicyPeer::default()
                })
                .collect(),
        ),
        ports: Some(vec![tcp(link.device.port)]),
    };
    // The cluster DNS (kube-dns or CoreDNS, labelled k8s-app=kube-dns in kube-system).
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        "kube-system".to_owned(),
                    )]
                    .into(),
                ),
                ..LabelSelector::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some([("k8s-app".to_owned(), "kube-dns".to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![
            NetworkPolicyPort {
                protocol: Some("UDP".to_owned()),
                port: Some(IntOrString::Int(53)),
                ..NetworkPolicyPort::default()
            },
            tcp(53),
        ]),
    };
    // No device address yet (a name not resolved): only DNS, rather than no rule at all,
    // which would mean "no egress restriction" to nobody but read as one.
    let egress = if addresses.is_empty() {
        vec![dns]
    } else {
        vec![device, dns]
    };
    NetworkPolicy {
        metadata: child_metadata(link),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_selector(link)),
                ..LabelSelector::default()
            }),
            // Egress only: the load balancer's traffic and the kubelet's probes come in freely.
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(egress),
            ingress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::DeviceLink;

    fn link(host: &str) -> ValidLink {
        let yaml = format!(
            "apiVersion: devicelink.io/v1alpha1\nkind: DeviceLink\nmetadata: {{name: pump-17-ssh, namespace: plant-a, uid: u-17}}\nspec:\n  device: {{host: '{host}', port: 22}}\n  allowedSourceRanges: [203.0.113.0/24]\n  ttl: 2h\n"
        );
        serde_yaml::from_str::<DeviceLink>(&yaml)
            .unwrap()
            .validate()
            .unwrap()
    }

    #[test]
    fn the_proxy_may_reach_only_its_device_on_its_port_and_dns() {
        let addresses: Vec<IpAddr> =
            vec!["10.20.30.40".parse().unwrap(), "fd00::7".parse().unwrap()];
        let policy = render_network_policy(&link("pump-17.plant-a.internal"), &addresses);
        let spec = policy.spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Egress".to_owned()]));
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()["devicelink.io/link"],
            "pump-17-ssh"
        );
        let egress = spec.egress.unwrap();
        let cidrs: Vec<String> = egress[0]
            .to
            .iter()
            .flatten()
            .map(|peer| peer.ip_block.as_ref().unwrap().cidr.clone())
            .collect();
        assert_eq!(cidrs, ["10.20.30.40/32", "fd00::7/128"]);
        assert_eq!(
            egress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(22))
        );
        let dns_ports: Vec<_> = egress[1]
            .ports
            .iter()
            .flatten()
            .map(|p| p.protocol.clone().unwrap())
            .collect();
        assert_eq!(dns_ports, ["UDP", "TCP"]);
        assert_eq!(egress.len(), 2, "nothing else");
    }

    #[test]
    fn an_unresolved_device_leaves_dns_alone_open() {
        let policy = render_network_policy(&link("pump-17.plant-a.internal"), &[]);
        assert_eq!(policy.spec.unwrap().egress.unwrap().len(), 1);
    }
}
