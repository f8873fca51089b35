//! The protocol messages, generated from `proto/shopfloor.proto`.
#![allow(missing_docs, missing_debug_implementations, unused_qualifications, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/shopfloor.v1.rs"));
