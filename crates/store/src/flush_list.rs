//! The byte format of a flush list: the keys to delete when its owner
//! changes, each followed by one space.
//!
//! A space terminates every member because no valid key can hold one (see
//! [`crate::validate_key`]), so an append is just the member's bytes plus the
//! delimiter and needs no read-modify-write: memcached's append (`ms ... MA`)
//! is atomic, and concurrent appends interleave whole members.

/// The byte that ends every member of a flush list.
pub const MEMBER_DELIMITER: u8 = b' ';

/// The bytes one append adds: the member and its delimiter.
pub(crate) fn encode_member(member: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(member.len() + 1);
    bytes.extend_from_slice(member.as_bytes());
    bytes.push(MEMBER_DELIMITER);
    bytes
}

/// The distinct members of a stored flush list, in first-appended order.
///
/// A member appended twice is returned once: deleting it once is enough. Bytes
/// that are not UTF-8 cannot come from this crate; they are decoded lossily so
/// that a corrupted list still yields its intact members.
pub(crate) fn decode_members(bytes: &[u8]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    bytes
        .split(|&b| b == MEMBER_DELIMITER)
        .filter(|member| !member.is_empty())
        .map(|member| String::from_utf8_lossy(member).into_owned())
        .filter(|member| seen.insert(member.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_members_decode_in_order_without_duplicates() {
        let mut list = Vec::new();
        for member in ["cm:q:1", "cm:f:2", "cm:q:1", "cm:q:3"] {
            list.extend(encode_member(member));
        }
        assert_eq!(list, b"cm:q:1 cm:f:2 cm:q:1 cm:q:3 ");
        assert_eq!(decode_members(&list), ["cm:q:1", "cm:f:2", "cm:q:3"]);
    }

    #[test]
    fn empty_list_has_no_members() {
        assert!(decode_members(b"").is_empty());
        assert!(decode_members(b"   ").is_empty());
    }
}
