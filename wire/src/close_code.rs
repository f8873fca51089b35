//! Application error codes that close a connection or reset a stream, the same on both sides.

/// Normal shutdown.
pub const NORMAL: u32 = 0;
/// A malformed frame or a message out of protocol order.
pub const PROTOCOL_VIOLATION: u32 = 1;
/// A frame above the size limit.
pub const FRAME_TOO_LARGE: u32 = 2;
/// The peer's identity is not allowed (unknown, revoked, not the recorded certificate).
pub const UNAUTHORIZED: u32 = 3;
/// Closed by the controller with a Goodbye (suspended, deleted).
pub const GOODBYE: u32 = 4;
/// A newer connection of the same agent replaced this one.
pub const REPLACED: u32 = 5;
/// No protocol version in common.
pub const UNSUPPORTED_VERSION: u32 = 6;
/// Enrollment refused (token unknown, used, expired or foreign).
pub const ENROLLMENT_REFUSED: u32 = 7;
/// Closed by a controller that is starting or handing over, not refusing the agent: dial the
/// same address again at once (after the Goodbye's `redial_after_ms`).
pub const REDIAL: u32 = 8;
