//! Redis key names. Every key of one quota shares the hash tag `{<escaped name>}`, so one
//! script touching them stays on one cluster slot. Names are escaped so that no `{` or `}`
//! from user input can end or open a hash tag and move a key to another slot.

/// Escape a user-given name for use inside a `{hash tag}`: `%` → `%25`, `{` → `%7B`,
/// `}` → `%7D`. Injective, so distinct names never collide.
pub fn escape_tag(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    for ch in name.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// The token bucket state of a quota (a hash: `r`, `t`, `ts`).
pub fn bucket(tag: &str) -> String {
    format!("fg:{{{tag}}}:tb")
}

/// The sliding window sums of a quota (a hash: `r`, `t`, `seq`).
pub fn window_sums(tag: &str) -> String {
    format!("fg:{{{tag}}}:sw")
}

/// Every circuit breaker's fleet-wide state (a hash: breaker name → state record). One
/// hash, one slot: a pod reads the whole fleet's breakers in one round trip.
pub const BREAKERS: &str = "fg:{breakers}";

/// Which pod probes a half-open breaker this round (a string with a lease).
pub fn breaker_prober(name: &str) -> String {
    format!("fg:{{breakers}}:prober:{name}")
}

/// Which pod makes a shared call (a string: the pod's token, with a lease). Both keys of a
/// request share its hash tag.
pub fn dedup_claim(key_hex: &str) -> String {
    format!("fg:{{dd:{key_hex}}}:claim")
}

/// The answer of a shared call, for the pods that waited on it (a hash: `s`, `h`, `b`).
pub fn dedup_answer(key_hex: &str) -> String {
    format!("fg:{{dd:{key_hex}}}:answer")
}

/// One period of a budget (a hash: `spent`, `reserved` in nano-dollars, and `a<percent>`
/// for each alert fired). `tag` is the budget's `bg:<escaped name>`: every period of a
/// budget shares its slot.
pub fn budget_totals(tag: &str, period: &str) -> String {
    format!("fg:{{{tag}}}:{period}")
}

/// The live reservations of one period of a budget (a sorted set of `<id>|<nano-dollars>`
/// scored by expiry, in Redis server milliseconds).
pub fn budget_held(tag: &str, period: &str) -> String {
    format!("fg:{{{tag}}}:{period}:held")
}

/// What was spent on one day, by label (a hash: model, feature, user and team joined by
/// `\x1f` → nano-dollars).
pub fn spend(day: &str) -> String {
    format!("fg:{{spend:{day}}}")
}

/// The sliding window log of a quota (a sorted set of `seq|requests|tokens` by time).
pub fn window_log(tag: &str) -> String {
    format!("fg:{{{tag}}}:swlog")
}

/// The Redis Cluster slot of a key (CRC16/XMODEM of its hash tag, mod 16384).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_slots() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag hashes the whole key, as Redis does.
        assert_eq!(slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
    }

    proptest! {
        /// Whatever the name, all keys of one quota land on the slot of the escaped name.
        #[test]
        fn keys_of_a_quota_share_a_slot(name in "\\PC{1,40}") {
            let tag = escape_tag(&name);
            prop_assert!(!tag.contains(['{', '}']), "escaped tag {tag:?} still has a brace");
            let s = slot(&bucket(&tag));
            prop_assert_eq!(s, slot(&window_sums(&tag)));
            prop_assert_eq!(s, slot(&window_log(&tag)));
            prop_assert_eq!(s, crc16_xmodem(tag.as_bytes()) % 16384);
        }

        /// Whatever the name, both keys of a budget's period share one slot, that of its tag.
        #[test]
        fn keys_of_a_budget_share_a_slot(name in "\\PC{1,40}", day in "20[0-9]{2}-[01][0-9]-[0-3][0-9]") {
            let tag = format!("bg:{}", escape_tag(&name));
            let s = slot(&budget_totals(&tag, &day));
            prop_assert_eq!(s, slot(&budget_held(&tag, &day)));
            prop_assert_eq!(s, crc16_xmodem(tag.as_bytes()) % 16384);
        }

        #[test]
        fn escaping_is_injective(a in "[{}%a]{0,8}", b in "[{}%a]{0,8}") {
            prop_assume!(a != b);
            prop_assert_ne!(escape_tag(&a), escape_tag(&b));
        }
    }
}
