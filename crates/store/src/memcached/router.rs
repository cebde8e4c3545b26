//! [`StableRendezvous`]: the stable key-to-server mapping shared by every
//! process.

use memcache::exp::Router;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The SplitMix64 finalizer, spreading the combined hash over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which server a key lives on: the same in every process, on every Rust
/// version, in every language.
///
/// The reader and the invalidator must send a key to the same server (a
/// delete routed elsewhere leaves the stale value in place:
/// `docs/memcached.md` §3), so the
/// mapping is a documented function of the key and the configured server
/// strings only:
///
/// ```text
/// h(bytes)        = FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3)
/// mix(x)          = SplitMix64 finalizer:
///                     x ^= x >> 30; x *= 0xbf58476d1ce4e5b9;
///                     x ^= x >> 27; x *= 0x94d049bb133111eb;
///                     x ^ (x >> 31)               (wrapping u64 arithmetic)
/// score(key, s)   = mix(h(key) ^ h(s))            s = the server string as configured
/// server(key)     = the server with the highest score; on a tie, the first listed
/// ```
///
/// This is rendezvous (highest-random-weight) hashing, as in the `memcache`
/// crate's own [`memcache::exp::Rendezvous`], which we plug into the client
/// through its [`Router`] trait. We do not use that one as is: it hashes with
/// `std`'s `DefaultHasher`, whose algorithm Rust documents as unspecified and
/// free to change between releases (and which hashes a platform-sized length
/// prefix), so a reader and an invalidator built with different compilers, or
/// a client in another language, could disagree.
///
/// Properties: the order of the server list does not matter; removing a
/// server moves only its own keys. There is deliberately no ejection of
/// failed servers and no rehashing (`docs/memcached.md` §3): a down server makes its
/// keys fail, loudly, instead of silently moving them. The server strings are
/// compared as written: configure every process with the same strings
/// (`127.0.0.1:11211` and `localhost:11211` are different servers here).
#[derive(Debug, Clone, Copy, Default)]
pub struct StableRendezvous;

impl StableRendezvous {
    /// The index in `servers` of the server that owns `key`; 0 for an empty
    /// list.
    pub fn server_index(key: &[u8], servers: &[String]) -> usize {
        let key_hash = fnv1a64(key);
        let mut best: Option<(usize, u64)> = None;
        for (index, server) in servers.iter().enumerate() {
            let score = mix(key_hash ^ fnv1a64(server.as_bytes()));
            // Strictly greater: on a tie the first listed server keeps the key.
            if best.is_none_or(|(_, top)| score > top) {
                best = Some((index, score));
            }
        }
        best.map_or(0, |(index, _)| index)
    }
}

impl Router for StableRendezvous {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        StableRendezvous::server_index(key, servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: u16) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:11211", i + 1)).collect()
    }

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pins the mapping itself: if this test fails, the routing changed and
    /// processes running the old and new code would disagree about where
    /// keys live. Never "fix" it by updating the table. The table was
    /// computed independently (a 15-line Python version of the module docs'
    /// formula), so it also checks that the docs describe the code.
    #[test]
    fn routing_is_pinned_by_a_golden_table() {
        let three = servers(3);
        let golden = [
            ("cm:q:0", 2),
            ("cm:q:1", 2),
            ("cm:q:2", 0),
            ("cm:f:3", 0),
            ("cm:g:epoch", 1),
            ("cm:hb", 0),
        ];
        let actual: Vec<(&str, usize)> = golden
            .iter()
            .map(|&(key, _)| (key, StableRendezvous::server_index(key.as_bytes(), &three)))
            .collect();
        assert_eq!(actual, golden);
    }

    #[test]
    fn list_order_does_not_matter_and_removal_moves_only_its_keys() {
        let four = servers(4);
        let mut reversed = four.clone();
        reversed.reverse();
        let mut three = four.clone();
        three.remove(1);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            let key = format!("cm:q:{i:x}");
            let owner = StableRendezvous::server_index(key.as_bytes(), &four);
            counts[owner] += 1;
            let owner_reversed = StableRendezvous::server_index(key.as_bytes(), &reversed);
            assert_eq!(four[owner], reversed[owner_reversed]);
            if owner != 1 {
                let after = StableRendezvous::server_index(key.as_bytes(), &three);
                assert_eq!(four[owner], three[after]);
            }
        }
        for count in counts {
            assert!(count > 800, "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn one_or_no_server_gets_index_zero() {
        assert_eq!(StableRendezvous::server_index(b"k", &servers(1)), 0);
        assert_eq!(StableRendezvous::server_index(b"k", &[]), 0);
    }
}
