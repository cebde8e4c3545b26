//! Fuzzes the pgoutput decoder and the walsender framing.
//!
//! Input: one mode byte, then data. Mode bit 0 = decode inside a streamed
//! block, bit 1 = `streaming 'parallel'`, bit 2 = treat the data as a stream
//! of u16-length-prefixed payloads fed to one stateful `Decoder`.
//! Properties: never panic; whatever decodes re-encodes to the same bytes
//! (the decoder keeps every field and rejects trailing bytes).
#![no_main]

use bytes::Bytes;
use cm_pgoutput::{decode_message, encode_message, DecodeContext, Decoder, ReplicationMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let ctx = DecodeContext {
        in_streamed_block: mode & 1 != 0,
        parallel_streaming: mode & 2 != 0,
    };
    if mode & 4 == 0 {
        let payload = Bytes::copy_from_slice(data);
        if let Ok(msg) = decode_message(payload.clone(), ctx) {
            assert_eq!(encode_message(&msg), payload, "{msg:?}");
        }
        if let Ok(frame) = ReplicationMessage::parse(payload.clone()) {
            assert_eq!(frame.encode(), payload, "{frame:?}");
        }
        return;
    }
    let mut decoder = if ctx.parallel_streaming {
        Decoder::with_parallel_streaming()
    } else {
        Decoder::new()
    };
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let payload = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        if let Ok(msg) = decoder.decode(payload.clone()) {
            assert_eq!(encode_message(&msg), payload, "{msg:?}");
        }
    }
});
