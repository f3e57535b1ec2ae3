//! `proto::wire`: request and response frames from a peer's stream.
//!
//! Properties: a decoded frame re-encodes to exactly the bytes it was decoded from
//! (the encoding is canonical), uses no more than the input, and every shorter prefix
//! of it asks for more bytes without asking past the frame; `NeedMore` never asks for
//! more than one maximal frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::wire::{Decode, MAX_FRAME_LEN, Request, Response, WireError};

fn check<T: std::fmt::Debug>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<Decode<T>, WireError>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    match decode(data) {
        Ok(Decode::Frame(frame, used)) => {
            assert!(used <= data.len() && used <= MAX_FRAME_LEN, "used {used}");
            assert_eq!(encode(&frame), &data[..used], "{frame:?} is not canonical");
            for end in 0..used {
                match decode(&data[..end]) {
                    Ok(Decode::NeedMore(n)) => assert!(n > 0 && end + n <= used, "{end}+{n}"),
                    other => panic!("prefix of {used} bytes cut at {end}: {other:?}"),
                }
            }
        }
        Ok(Decode::NeedMore(n)) => {
            assert!(
                n > 0 && data.len() + n <= MAX_FRAME_LEN,
                "{} + {n}",
                data.len()
            );
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, Request::decode, |r| r.to_bytes().to_vec());
    check(data, Response::decode, Response::to_vec);
});
