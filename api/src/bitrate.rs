//! Bit rates written as quantities such as `50Mbps`, the way 3GPP QoS profiles state GBR and MBR.

use std::{fmt, str::FromStr};

/// The pattern the CRD schema enforces on bit-rate strings; [`Bitrate::from_str`] accepts exactly
/// these.
pub const BITRATE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(bps|Kbps|Mbps|Gbps|Tbps)$";

/// A bit rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bitrate(pub u64);

/// A bit-rate string that is not a number followed by bps, Kbps, Mbps, Gbps or Tbps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a bit rate: write a number followed by bps, Kbps, Mbps, Gbps or Tbps, e.g. `50Mbps`")]
pub struct BitrateError(pub String);

impl FromStr for Bitrate {
    type Err = BitrateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BitrateError(s.to_owned());
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        let (number, unit) = s.split_at(split);
        let multiplier: u64 = match unit {
            "bps" => 1,
            "Kbps" => 1_000,
            "Mbps" => 1_000_000,
            "Gbps" => 1_000_000_000,
            "Tbps" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) if !f.is_empty() => (w, f),
            Some(_) => return Err(err()),
            None => (number, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        // Integer arithmetic keeps `1.5Mbps` exact; fractions below one bit per second are dropped.
        let whole: u64 = whole.parse().map_err(|_| err())?;
        let mut bps = whole.checked_mul(multiplier).ok_or_else(err)?;
        let mut scale = multiplier;
        for digit in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            bps = bps.checked_add(u64::from(digit - b'0') * scale).ok_or_else(err)?;
        }
        Ok(Bitrate(bps))
    }
}

impl fmt::Display for Bitrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bps", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!("50Mbps".parse(), Ok(Bitrate(50_000_000)));
        assert_eq!("1.5Gbps".parse(), Ok(Bitrate(1_500_000_000)));
        assert_eq!("800bps".parse(), Ok(Bitrate(800)));
        assert_eq!("2.25Kbps".parse(), Ok(Bitrate(2_250)));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in ["", "50", "Mbps", "50mbps", "50 Mbps", "-1Mbps", "1.Mbps", ".5Mbps", "1e3Mbps", "99999999999Tbps"] {
            assert!(bad.parse::<Bitrate>().is_err(), "{bad} should be refused");
        }
    }
}
