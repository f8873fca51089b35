//! Timestamps on the wire are microseconds since the Unix epoch (UTC), as `int64`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in wire form.
pub fn now_micros() -> i64 {
    to_micros(SystemTime::now())
}

pub fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}
