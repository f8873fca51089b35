//! The Shopfloor edge agent: session, configuration apply, safe command execution, drivers and
//! network slices.
//!
//! Being built under issue #4; nothing here runs yet. It depends on `shopfloor-wire` and never on
//! Kubernetes crates.
#![forbid(unsafe_code)]
