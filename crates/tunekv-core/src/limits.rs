//! Size limits on client input, checked before anything changes.

use crate::code::{Code, TunekvError};

/// Keys are bytes, at most 1 KiB (DESIGN §2).
pub const KEY_BYTES_MAX: usize = 1024;
/// Default value limit per keyspace: 1 MiB (DESIGN §2).
pub const VALUE_BYTES_MAX_DEFAULT: u64 = 1024 * 1024;
/// The largest value limit a keyspace may configure: 16 MiB. Node-to-node frames must fit it.
pub const VALUE_BYTES_MAX_CEILING: u64 = 16 * 1024 * 1024;
/// Keyspace names: `[A-Za-z0-9_-]{1,64}`.
pub const KEYSPACE_NAME_BYTES_MAX: usize = 64;

pub fn check_key(key: &[u8]) -> Result<(), TunekvError> {
    if key.is_empty() {
        return Err(TunekvError::new(Code::KeyInvalid, "the key is empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(TunekvError::new(
            Code::KeyTooLarge,
            format!(
                "the key has {} bytes; at most {KEY_BYTES_MAX} are allowed",
                key.len()
            ),
        ));
    }
    Ok(())
}

pub fn check_value(value: &[u8], value_bytes_max: u64) -> Result<(), TunekvError> {
    if value.len() as u64 > value_bytes_max {
        return Err(TunekvError::new(
            Code::ValueTooLarge,
            format!(
                "the value has {} bytes; this keyspace allows at most {value_bytes_max}",
                value.len()
            ),
        ));
    }
    Ok(())
}

pub fn check_keyspace_name(name: &str) -> Result<(), TunekvError> {
    let ok = !name.is_empty()
        && name.len() <= KEYSPACE_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TunekvError::new(
            Code::KeyspaceInvalid,
            format!(
                "keyspace name {:?} must be 1 to {KEYSPACE_NAME_BYTES_MAX} characters of A-Z, a-z, 0-9, _ or -",
                name.chars().take(KEYSPACE_NAME_BYTES_MAX + 1).collect::<String>()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_boundaries() {
        assert_eq!(check_key(b"").map_err(|e| e.code), Err(Code::KeyInvalid));
        assert!(check_key(&[b'a'; KEY_BYTES_MAX]).is_ok());
        assert_eq!(
            check_key(&[b'a'; KEY_BYTES_MAX + 1]).map_err(|e| e.code),
            Err(Code::KeyTooLarge)
        );
    }

    #[test]
    fn value_boundaries() {
        assert!(check_value(&[0; 10], 10).is_ok());
        assert_eq!(
            check_value(&[0; 11], 10).map_err(|e| e.code),
            Err(Code::ValueTooLarge)
        );
    }

    #[test]
    fn keyspace_names() {
        assert!(check_keyspace_name("orders_v2-eu").is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(65)] {
            assert!(check_keyspace_name(bad).is_err(), "{bad}");
        }
    }
}
