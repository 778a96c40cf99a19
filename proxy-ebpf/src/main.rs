//! devicelink's kernel programs. Entries only: each delegates to its module and maps an error to
//! one explicit verdict.
#![no_std]
#![no_main]

mod acl;
mod splice;

use aya_ebpf::{
    bindings::{sk_action, xdp_action},
    macros::{stream_verdict, xdp},
    programs::{SkBuffContext, XdpContext},
};

/// Drops TCP packets to the listen port whose source is outside the ACL.
#[xdp]
pub fn source_acl(ctx: XdpContext) -> u32 {
    // A parse error never drops: the stack judges what we cannot, and user space checks the ACL
    // again at accept.
    acl::judge(&ctx).unwrap_or(xdp_action::XDP_PASS)
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
