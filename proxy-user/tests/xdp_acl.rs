//! The kernel's source ACL judged on hand-built frames through `BPF_PROG_TEST_RUN`, in both of
//! its hooks (XDP and TC ingress) side by side: the programs as the kernel verified them, each
//! with its maps filled by the same code the proxy uses, and no interface or traffic. Every
//! frame must get the same action and the same counts from both. Needs root (CAP_BPF).

use std::net::{Ipv4Addr, Ipv6Addr};

use devicelink_proxy::{
    config::XdpModeChoice,
    xdp::{AclAction, XdpPlane},
    xdp_acl::{AclError, KernelEntries, LinkAcl},
};
use devicelink_proxy_common::XdpVerdict;

const DROP: AclAction = AclAction::Drop;
const PASS: AclAction = AclAction::Pass;

const SSH_PORT: u16 = 2222;
const VNC_PORT: u16 = 5900;

/// The ACL loaded once for each hook, kept in step.
struct Hooks {
    xdp: XdpPlane,
    tc: XdpPlane,
}

impl Hooks {
    fn set_link_acls(&self, links: &[LinkAcl]) -> Result<(), AclError> {
        let xdp = self.xdp.set_link_acls(links);
        let tc = self.tc.set_link_acls(links);
        assert_eq!(xdp.is_ok(), tc.is_ok(), "both hooks take or refuse the set");
        xdp
    }

    #[track_caller]
    fn judge(&self, frame: &[u8]) -> AclAction {
        let xdp = self
            .xdp
            .judge(frame)
            .expect("BPF_PROG_TEST_RUN of the XDP program");
        let tc = self
            .tc
            .judge(frame)
            .expect("BPF_PROG_TEST_RUN of the TC program");
        assert_eq!(xdp, tc, "XDP and TC judge a frame alike");
        xdp
    }

    #[track_caller]
    fn verdicts(&self) -> [u64; XdpVerdict::COUNT as usize] {
        let xdp = self.xdp.verdicts();
        assert_eq!(xdp, self.tc.verdicts(), "XDP and TC count verdicts alike");
        xdp
    }

    #[track_caller]
    fn drops(&self, slot: u32) -> u64 {
        let xdp = self.xdp.drops(slot);
        assert_eq!(xdp, self.tc.drops(slot), "XDP and TC count drops alike");
        xdp
    }

    fn prefixes(&self) -> usize {
        self.xdp.prefixes()
    }

    fn kernel_entries(&self) -> Result<KernelEntries, AclError> {
        let xdp = self.xdp.kernel_entries()?;
        assert_eq!(
            xdp,
            self.tc.kernel_entries()?,
            "both hooks' maps hold the same"
        );
        Ok(xdp)
    }
}

fn acl(links: &[(u32, u16, &[&str])]) -> Hooks {
    let load = |mode| {
        XdpPlane::load(mode)
            .unwrap_or_else(|e| panic!("loading the {mode:?} program: {e} (these tests need root)"))
    };
    let hooks = Hooks {
        xdp: load(XdpModeChoice::Skb),
        tc: load(XdpModeChoice::Tc),
    };
    let links: Vec<LinkAcl> = links
        .iter()
        .map(|(slot, port, ranges)| LinkAcl {
            slot: *slot,
            port: *port,
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
        })
        .collect();
    hooks.set_link_acls(&links).expect("filling the ACL maps");
    hooks
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame
}

fn tcp_syn(dst_port: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    tcp[12] = 0x50; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    tcp
}

/// An IPv4 packet (no options) carrying `payload` as `protocol`, with the fragment field given.
fn ipv4(src: Ipv4Addr, protocol: u8, fragment: u16, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&fragment.to_be_bytes());
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&[10, 77, 1, 1]);
    ip.extend_from_slice(payload);
    ip
}

/// An IPv6 packet whose first header after the fixed one is `next`, followed by `rest`.
fn ipv6(src: Ipv6Addr, next: u8, rest: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&"fd77:1::1".parse::<Ipv6Addr>().unwrap().octets());
    ip.extend_from_slice(rest);
    ip
}

fn v4_syn(src: &str, port: u16) -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IP);
    frame.extend(ipv4(src.parse().unwrap(), TCP, 0, &tcp_syn(port)));
    frame
}

fn v6_syn(src: &str, port: u16) -> Vec<u8> {
    let mut frame = ethernet(ETH_P_IPV6);
    frame.extend(ipv6(src.parse().unwrap(), TCP, &tcp_syn(port)));
    frame
}

#[track_caller]
fn assert_action(acl: &Hooks, frame: &[u8], expected: AclAction, why: &str) {
    let action = acl.judge(frame);
    assert_eq!(action, expected, "{why}");
}

#[test]
fn ipv4_sources_pass_or_drop_by_their_links_ranges() {
    let acl = acl(&[(7, SSH_PORT, &["203.0.113.0/24"])]);
    assert_action(
        &acl,
        &v4_syn("203.0.113.9", SSH_PORT),
        PASS,
        "a source inside the range",
    );
    assert_action(
        &acl,
        &v4_syn("198.51.100.9", SSH_PORT),
        DROP,
        "a source outside the range",
    );
    assert_eq!(acl.verdicts()[XdpVerdict::Pass as usize], 1);
    assert_eq!(acl.verdicts()[XdpVerdict::DropSource as usize], 1);
    assert_eq!(acl.drops(7), 1, "the drop is counted for the link's slot");
}

#[test]
fn ipv6_sources_pass_or_drop_by_their_links_ranges() {
    let acl = acl(&[(0, SSH_PORT, &["2001:db8::/32"])]);
    assert_action(
        &acl,
        &v6_syn("2001:db8:5::1", SSH_PORT),
        PASS,
        "inside the /32",
    );
    assert_action(
        &acl,
        &v6_syn("2001:db9::1", SSH_PORT),
        DROP,
        "outside the /32",
    );
}

#[test]
fn an_ipv4_mapped_range_admits_ipv4_packets() {
    let acl = acl(&[(0, SSH_PORT, &["::ffff:198.51.100.0/120"])]);
    assert_action(
        &acl,
        &v4_syn("198.51.100.5", SSH_PORT),
        PASS,
        "IPv4 clients arrive as IPv4 on the wire; the mapped range stands for 198.51.100.0/24",
    );
    assert_action(
        &acl,
        &v4_syn("198.51.101.5", SSH_PORT),
        DROP,
        "outside the mapped range",
    );
}

#[test]
fn each_port_is_judged_by_its_own_links_longest_prefix() {
    let acl = acl(&[
        (1, SSH_PORT, &["10.1.2.0/24"]),
        (2, VNC_PORT, &["10.1.0.0/16"]),
    ]);
    assert_action(
        &acl,
        &v4_syn("10.1.9.9", SSH_PORT),
        DROP,
        "10.1.9.9 is only in the VNC link's /16, not in the SSH link's /24",
    );
    assert_action(
        &acl,
        &v4_syn("10.1.9.9", VNC_PORT),
        PASS,
        "the same source on the VNC link's port",
    );
    assert_action(
        &acl,
        &v4_syn("10.1.2.3", SSH_PORT),
        PASS,
        "inside the SSH link's /24",
    );
    assert_eq!(acl.drops(1), 1);
    assert_eq!(acl.drops(2), 0);
}

#[test]
fn a_port_no_link_uses_and_other_protocols_pass_untouched() {
    let acl = acl(&[(0, SSH_PORT, &["203.0.113.0/24"])]);
    assert_action(
        &acl,
        &v4_syn("198.51.100.9", 8080),
        PASS,
        "no link listens on 8080",
    );
    let mut udp = ethernet(ETH_P_IP);
    udp.extend(ipv4(
        "198.51.100.9".parse().unwrap(),
        UDP,
        0,
        &tcp_syn(SSH_PORT),
    ));
    assert_action(&acl, &udp, PASS, "UDP to the link's port number");
    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    assert_action(&acl, &arp, PASS, "ARP");
    assert_eq!(acl.verdicts()[XdpVerdict::NotInspected as usize], 3);
}

#[test]
fn a_vlan_tagged_frame_is_judged_by_its_inner_packet() {
    let acl = acl(&[(0, SSH_PORT, &["203.0.113.0/24"])]);
    let tagged = |src: &str| {
        let mut frame = ethernet(0x8100);
        frame.extend_from_slice(&[0x00, 0x2a]); // VLAN 42
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.extend(ipv4(src.parse().unwrap(), TCP, 0, &tcp_syn(SSH_PORT)));
        frame
    };
    assert_action(&acl, &tagged("198.51.100.9"), DROP, "tagged, disallowed");
    assert_action(&acl, &tagged("203.0.113.9"), PASS, "tagged, allowed");
}

#[test]
fn ipv4_first_fragments_are_judged_and_later_ones_pass() {
    let acl = acl(&[(0, SSH_PORT, &["203.0.113.0/24"])]);
    let fragment = |field: u16, payload: &[u8]| {
        let mut frame = ethernet(ETH_P_IP);
        frame.extend(ipv4("198.51.100.9".parse().unwrap(), TCP, field, payload));
        frame
    };
    const MORE_FRAGMENTS: u16 = 0x2000;
    assert_action(
        &acl,
        &fragment(MORE_FRAGMENTS, &tcp_syn(SSH_PORT)),
        DROP,
        "the first fragment carries the TCP header and is judged",
    );
    assert_action(
        &acl,
        &fragment(185, &[0u8; 16]),
        PASS,
        "a later fragment has no port to judge; without its first it never reaches a socket",
    );
}

#[test]
fn ipv6_extension_headers_are_walked_to_tcp() {
    let acl = acl(&[(3, SSH_PORT, &["2001:db8::/32"])]);
    const DEST_OPTIONS: u8 = 60;
    const FRAGMENT: u8 = 44;
    let behind_options = |src: &str| {
        // Destination options: next header TCP, length 0 (8 bytes), one PadN option.
        let mut rest = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
        rest.extend(tcp_syn(SSH_PORT));
        let mut frame = ethernet(ETH_P_IPV6);
        frame.extend(ipv6(src.parse().unwrap(), DEST_OPTIONS, &rest));
        frame
    };
    assert_action(
        &acl,
        &behind_options("2001:db9::1"),
        DROP,
        "a disallowed SYN behind a destination-options header",
    );
    assert_action(&acl, &behind_options("2001:db8::1"), PASS, "an allowed one");
    let fragment = |offset_and_flags: u16, payload: &[u8]| {
        let mut rest = vec![TCP, 0];
        rest.extend_from_slice(&offset_and_flags.to_be_bytes());
        rest.extend_from_slice(&[0, 0, 0, 1]);
        rest.extend_from_slice(payload);
        let mut frame = ethernet(ETH_P_IPV6);
        frame.extend(ipv6("2001:db9::1".parse().unwrap(), FRAGMENT, &rest));
        frame
    };
    assert_action(
        &acl,
        &fragment(0x0001, &tcp_syn(SSH_PORT)),
        DROP,
        "a first fragment (offset 0, more to come) is judged",
    );
    assert_action(
        &acl,
        &fragment(0x00b8, &[0u8; 16]),
        PASS,
        "a later fragment passes",
    );
    assert_eq!(acl.drops(3), 2);
    assert_eq!(acl.verdicts()[XdpVerdict::DropSource as usize], 2);
    assert_eq!(acl.verdicts()[XdpVerdict::Pass as usize], 1);
    assert_eq!(acl.verdicts()[XdpVerdict::NotInspected as usize], 1);
}

#[test]
fn a_syn_behind_a_long_chain_of_extension_headers_is_still_judged() {
    let acl = acl(&[(5, SSH_PORT, &["2001:db8::/32"])]);
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DEST_OPTIONS: u8 = 60;
    let chain = |src: &str| {
        // Hop-by-hop (16 bytes), destination options, routing (type 0, no segments left),
        // destination options, a first fragment: five headers, then the SYN.
        let mut rest = vec![DEST_OPTIONS, 1, 1, 12];
        rest.extend_from_slice(&[0u8; 12]);
        rest.extend_from_slice(&[ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        rest.extend_from_slice(&[DEST_OPTIONS, 0, 0, 0, 0, 0, 0, 0]);
        rest.extend_from_slice(&[FRAGMENT, 0, 1, 4, 0, 0, 0, 0]);
        rest.extend_from_slice(&[TCP, 0, 0x00, 0x01, 0, 0, 0, 9]);
        rest.extend(tcp_syn(SSH_PORT));
        let mut frame = ethernet(ETH_P_IPV6);
        frame.extend(ipv6(src.parse().unwrap(), HOP_BY_HOP, &rest));
        frame
    };
    assert_action(
        &acl,
        &chain("2001:db9::1"),
        DROP,
        "a disallowed SYN five extension headers deep",
    );
    assert_action(&acl, &chain("2001:db8::1"), PASS, "an allowed one");
    assert_eq!(acl.drops(5), 1);
}

#[test]
fn six_extension_headers_are_walked_and_a_longer_chain_is_not_inspected() {
    let acl = acl(&[(6, SSH_PORT, &["2001:db8::/32"])]);
    const DEST_OPTIONS: u8 = 60;
    let behind = |headers: usize| {
        let mut rest = Vec::new();
        for i in 0..headers {
            let next = if i + 1 == headers { TCP } else { DEST_OPTIONS };
            rest.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        rest.extend(tcp_syn(SSH_PORT));
        let mut frame = ethernet(ETH_P_IPV6);
        frame.extend(ipv6("2001:db9::1".parse().unwrap(), DEST_OPTIONS, &rest));
        frame
    };
    assert_action(
        &acl,
        &behind(6),
        DROP,
        "a disallowed SYN six headers deep is judged",
    );
    assert_action(
        &acl,
        &behind(7),
        PASS,
        "past the bound the program gives up; the accept-time check judges the connection",
    );
    assert_eq!(acl.drops(6), 1);
    assert_eq!(acl.verdicts()[XdpVerdict::NotInspected as usize], 1);
}

#[test]
fn a_truncated_ipv6_first_fragment_passes_as_malformed() {
    let acl = acl(&[(0, SSH_PORT, &["2001:db8::/32"])]);
    const FRAGMENT: u8 = 44;
    // A first fragment (offset 0, more to come) whose TCP header stops before the ports; the
    // stack refuses a first fragment without its whole TCP header.
    let mut rest = vec![TCP, 0, 0x00, 0x01, 0, 0, 0, 1];
    rest.extend_from_slice(&tcp_syn(SSH_PORT)[..2]);
    let mut frame = ethernet(ETH_P_IPV6);
    frame.extend(ipv6("2001:db9::1".parse().unwrap(), FRAGMENT, &rest));
    assert_action(&acl, &frame, PASS, "no port to judge");
    assert_eq!(acl.verdicts()[XdpVerdict::Malformed as usize], 1);
    assert_eq!(acl.drops(0), 0);
}

#[test]
fn truncated_headers_pass_as_malformed() {
    let acl = acl(&[(0, SSH_PORT, &["203.0.113.0/24"])]);
    let whole = v4_syn("198.51.100.9", SSH_PORT);
    // Cut inside the TCP header: judged by both hooks. TC reads it twice (the second time after
    // making the whole packet linear) and counts it once.
    assert_action(
        &acl,
        &whole[..14 + 20 + 2],
        PASS,
        "a frame cut before its destination port",
    );
    assert_eq!(acl.verdicts()[XdpVerdict::Malformed as usize], 1);
    // The kernel's skb test run (TC's) refuses a frame without a whole IP header (EINVAL) and
    // the XDP one takes none shorter than an Ethernet header, so the frames cut sooner are
    // XDP's alone; a real TC hook runs the same parse on them.
    let v6 = v6_syn("2001:db9::1", SSH_PORT);
    for (frame, what) in [
        (&whole[..14], "an Ethernet header alone"),
        (&whole[..14 + 12], "an IPv4 header cut short"),
        (&v6[..14 + 30], "an IPv6 header cut short"),
    ] {
        assert_eq!(
            acl.xdp.judge(frame).expect("BPF_PROG_TEST_RUN"),
            PASS,
            "{what}"
        );
    }
    assert_eq!(acl.xdp.verdicts()[XdpVerdict::Malformed as usize], 4);
}

#[test]
fn changes_are_applied_as_a_diff_and_removal_empties_the_maps() {
    let acl = acl(&[
        (0, SSH_PORT, &["203.0.113.0/24", "2001:db8::/32"]),
        (1, VNC_PORT, &["198.51.100.0/24"]),
    ]);
    assert_eq!(acl.prefixes(), 3);
    assert_eq!(
        acl.kernel_entries().unwrap(),
        KernelEntries {
            v4: 2,
            v6: 1,
            ports: 2
        }
    );
    // The SSH link loses its IPv4 range; the VNC link is unchanged.
    acl.set_link_acls(&[
        LinkAcl {
            slot: 0,
            port: SSH_PORT,
            ranges: vec!["2001:db8::/32".parse().unwrap()],
        },
        LinkAcl {
            slot: 1,
            port: VNC_PORT,
            ranges: vec!["198.51.100.0/24".parse().unwrap()],
        },
    ])
    .unwrap();
    assert_eq!(acl.prefixes(), 2);
    assert_action(
        &acl,
        &v4_syn("203.0.113.9", SSH_PORT),
        DROP,
        "the removed range is dropped at once",
    );
    assert_action(
        &acl,
        &v4_syn("198.51.100.9", VNC_PORT),
        PASS,
        "the unchanged link still admits its range",
    );
    assert_eq!(
        acl.kernel_entries().unwrap(),
        KernelEntries {
            v4: 1,
            v6: 1,
            ports: 2
        },
        "the kernel's maps hold what the links ask for, the removed range gone"
    );
    acl.set_link_acls(&[]).unwrap();
    assert_eq!(acl.prefixes(), 0, "no entry left behind");
    assert_eq!(
        acl.kernel_entries().unwrap(),
        KernelEntries::default(),
        "the kernel's maps are empty again"
    );
    assert_action(
        &acl,
        &v4_syn("203.0.113.9", SSH_PORT),
        PASS,
        "with no link on the port, nothing is judged",
    );
}

#[test]
fn a_slot_given_to_a_new_link_starts_its_drop_count_at_zero() {
    let acl = acl(&[(4, SSH_PORT, &["203.0.113.0/24"])]);
    assert_action(
        &acl,
        &v4_syn("198.51.100.9", SSH_PORT),
        DROP,
        "outside the first link's range",
    );
    assert_eq!(acl.drops(4), 1);
    acl.set_link_acls(&[]).unwrap();
    acl.set_link_acls(&[LinkAcl {
        slot: 4,
        port: VNC_PORT,
        ranges: vec!["203.0.113.0/24".parse().unwrap()],
    }])
    .unwrap();
    assert_eq!(
        acl.drops(4),
        0,
        "the slot's new link must not inherit the old one's drops"
    );
}

#[test]
fn a_port_shared_by_two_links_is_refused_and_the_maps_keep_what_they_held() {
    let acl = acl(&[(0, SSH_PORT, &["203.0.113.0/24"])]);
    let shared = [
        LinkAcl {
            slot: 0,
            port: SSH_PORT,
            ranges: vec!["203.0.113.0/24".parse().unwrap()],
        },
        LinkAcl {
            slot: 1,
            port: SSH_PORT,
            ranges: vec!["0.0.0.0/0".parse().unwrap()],
        },
    ];
    let err = acl.set_link_acls(&shared).unwrap_err();
    assert!(err.to_string().contains("port 2222"), "{err}");
    assert_action(
        &acl,
        &v4_syn("198.51.100.9", SSH_PORT),
        DROP,
        "the refused set must not have opened the port to everyone",
    );
}
