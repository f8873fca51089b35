#![no_main]
//! Arbitrary bytes through the frame decoder, for every message type a peer can send: it may
//! refuse, it must never panic.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shopfloor_wire::{codec::decode_frame, proto};

fn drain<M: prost::Message + Default>(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        match decode_frame::<M>(&mut buf, 64 * 1024) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    drain::<proto::AgentMessage>(data);
    drain::<proto::ControllerMessage>(data);
    drain::<proto::Command>(data);
    drain::<proto::CommandReply>(data);
    drain::<proto::Report>(data);
});
