//! uid → shard (SPEC §1, §3).
//!
//! A numeric uid's shard is read from two of its decimal digits, by default
//! the last two; a tenant may pick other positions (Ant's RPC layer reads the
//! 3rd- and 2nd-to-last). A uid shorter than a position reads that digit as 0,
//! as if left-padded with zeros. Any other uid maps to CRC32 (IEEE) mod 100.

use crate::error::InputError;

/// Longest uid accepted.
pub const MAX_UID: usize = 128;

/// A shard, 0–99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard(u8);

impl Shard {
    /// `None` unless `n < 100`.
    pub fn new(n: u8) -> Option<Shard> {
        (n < 100).then_some(Shard(n))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}", self.0)
    }
}

/// Which digits of a numeric uid make its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidShardRule {
    /// Position from the right (1 = last digit) of the tens digit.
    tens: u8,
    /// Position from the right of the units digit.
    units: u8,
}

impl Default for UidShardRule {
    fn default() -> Self {
        UidShardRule { tens: 2, units: 1 }
    }
}

/// Positions further left than this are refused by validation.
pub const MAX_DIGIT_POSITION: u8 = 20;

impl UidShardRule {
    /// `None` unless both positions are in `1..=MAX_DIGIT_POSITION` and differ.
    pub fn new(tens: u8, units: u8) -> Option<UidShardRule> {
        let ok = |p| (1..=MAX_DIGIT_POSITION).contains(&p);
        (ok(tens) && ok(units) && tens != units).then_some(UidShardRule { tens, units })
    }

    pub fn positions(&self) -> [u8; 2] {
        [self.tens, self.units]
    }

    /// The shard of `uid`. Refuses an empty, over-long or non-printable uid.
    pub fn shard(&self, uid: &str) -> Result<Shard, InputError> {
        let b = uid.as_bytes();
        if b.is_empty() {
            return Err(InputError::Empty);
        }
        // Printable first, so the length below is in characters.
        if !b.iter().all(|c| c.is_ascii_graphic()) {
            return Err(InputError::NotPrintable);
        }
        if b.len() > MAX_UID {
            return Err(InputError::TooLong {
                max: MAX_UID,
                len: b.len(),
            });
        }
        if b.iter().all(u8::is_ascii_digit) {
            let digit = |pos: u8| {
                let pos = usize::from(pos);
                if pos <= b.len() {
                    b[b.len() - pos] - b'0'
                } else {
                    0
                }
            };
            Ok(Shard(digit(self.tens) * 10 + digit(self.units)))
        } else {
            Ok(Shard((crc32fast::hash(b) % 100) as u8))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_uids_read_digits() {
        let d = UidShardRule::default();
        assert_eq!(d.shard("12375").unwrap().get(), 75);
        assert_eq!(d.shard("7").unwrap().get(), 7);
        assert_eq!(d.shard("00").unwrap().get(), 0);
        let ant = UidShardRule::new(3, 2).unwrap();
        assert_eq!(ant.shard("12375").unwrap().get(), 37);
        assert_eq!(ant.shard("5").unwrap().get(), 0);
        assert_eq!(ant.shard("59").unwrap().get(), 5);
    }

    #[test]
    fn other_uids_use_crc32_mod_100() {
        let d = UidShardRule::default();
        // crc32("a") = 0xE8B7BE43 = 3904355907, so shard 07.
        assert_eq!(d.shard("a").unwrap().get(), 7);
        // crc32("abc") = 0x352441C2 = 891568578, so shard 78.
        assert_eq!(d.shard("abc").unwrap().get(), 78);
    }

    #[test]
    fn refuses_bad_uids() {
        let d = UidShardRule::default();
        assert_eq!(d.shard(""), Err(InputError::Empty));
        assert_eq!(d.shard("a b"), Err(InputError::NotPrintable));
        assert_eq!(
            d.shard(&"1".repeat(129)),
            Err(InputError::TooLong { max: 128, len: 129 })
        );
        assert!(UidShardRule::new(2, 2).is_none());
        assert!(UidShardRule::new(0, 1).is_none());
        assert!(UidShardRule::new(21, 1).is_none());
    }
}
