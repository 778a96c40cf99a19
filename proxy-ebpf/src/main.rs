//! devicelink's kernel programs. Entries only: each delegates to its module and maps an error to
//! one explicit verdict.
#![no_std]
#![no_main]

mod acl;
mod splice;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, sk_action, xdp_action},
    macros::{classifier, stream_verdict, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};

// A parse error never drops, in either hook: the stack judges what we cannot, and user space
// checks the ACL again at accept.

/// Drops TCP packets to a link's port whose source is outside the link's ranges (XDP).
#[xdp]
pub fn source_acl(ctx: XdpContext) -> u32 {
    match acl::judge_frame(&ctx) {
        acl::Action::Pass => xdp_action::XDP_PASS,
        acl::Action::Drop => xdp_action::XDP_DROP,
    }
}

/// The same ACL at TC ingress. A packet it passes goes on to the interface's next program
/// (`TC_ACT_UNSPEC`, tcx's "next"), so another owner's filters still see it.
#[classifier]
pub fn source_acl_tc(ctx: TcContext) -> i32 {
    match acl::judge_skb(&ctx) {
        acl::Action::Pass => TC_ACT_UNSPEC,
        acl::Action::Drop => TC_ACT_SHOT,
    }
}

/// Redirects every skb that arrives on a spliced socket out of its peer socket.
#[stream_verdict]
pub fn splice_verdict(ctx: SkBuffContext) -> u32 {
    // Passing keeps the bytes on the socket (user space can still see them); dropping would lose
    // them, so an unexpected error passes.
    splice::redirect(&ctx).unwrap_or(sk_action::SK_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
