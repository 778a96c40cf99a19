//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where a struct member
//! lives: the splice's verdict program reads TCP's per-skb sequence numbers from `sk_buff::cb`,
//! whose offset the loader takes from here rather than assuming a layout.

use std::{fs, io};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Byte offset of member `member` in `struct name`, from the running kernel's BTF. `None` if the
/// kernel has no BTF, the struct or member is not there, or the member is a bitfield.
pub fn member_offset(name: &str, member: &str) -> io::Result<Option<u32>> {
    let data = fs::read("/sys/kernel/btf/vmlinux")?;
    Ok(find_member_offset(&data, name, member))
}

fn find_member_offset(data: &[u8], name: &str, member: &str) -> Option<u32> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?));
    if u16_at(0)? != BTF_MAGIC {
        return None;
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let strings = hdr_len + str_off;
    let name_at = |off: u32| -> Option<&[u8]> {
        let start = strings + off as usize;
        let rest = data.get(start..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    let mut at = hdr_len + type_off;
    let end = at + type_len;
    while at + 12 <= end {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        at += 12;
        if kind == KIND_STRUCT && name_at(name_off)? == name.as_bytes() {
            for i in 0..vlen {
                let m = at + i * 12;
                if name_at(u32_at(m)?)? == member.as_bytes() {
                    let offset = u32_at(m + 8)?;
                    // With kind_flag the low 24 bits are the bit offset and the high 8 a
                    // bitfield size; a bitfield has no byte offset to give.
                    let (bits, bitfield) = if kind_flag {
                        (offset & 0xff_ffff, offset >> 24)
                    } else {
                        (offset, 0)
                    };
                    return (bitfield == 0 && bits % 8 == 0).then_some(bits / 8);
                }
            }
            return None;
        }
        at += match kind {
            1 | 14 | 17 => 4,              // INT, VAR, DECL_TAG
            3 => 12,                       // ARRAY
            4 | 5 | 15 | 19 => vlen * 12,  // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => vlen * 8,            // ENUM, FUNC_PROTO
            0 | 2 | 7..=12 | 16 | 18 => 0, // VOID, PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            _ => return None,              // a kind this parser does not know: give up
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sk_buff_cb_in_the_running_kernel() {
        let Ok(Some(offset)) = member_offset("sk_buff", "cb") else {
            eprintln!("no kernel BTF here; skipped");
            return;
        };
        // cb is 8-byte aligned and sits in the first cache lines of sk_buff.
        assert_eq!(offset % 8, 0);
        assert!((16..256).contains(&offset), "implausible offset {offset}");
    }

    #[test]
    fn garbage_is_not_btf() {
        assert_eq!(find_member_offset(&[0u8; 64], "sk_buff", "cb"), None);
        assert_eq!(find_member_offset(&[], "sk_buff", "cb"), None);
    }
}
