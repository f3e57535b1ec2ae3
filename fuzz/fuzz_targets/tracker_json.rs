//! Tracker bodies: the JSON of `proto::tracker` as the tracker decodes agents'
//! requests and agents decode its answers (the first byte picks the message).
//!
//! Property: whatever decodes re-encodes and decodes to an equal value, and a decoded
//! layout is within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::Layout;
use shoal_proto::tracker::{
    AnnounceRequest, AnnounceResponse, ErrorBody, SyncRequest, SyncResponse,
};

fn round_trip<T>(json: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(json).ok()?;
    let text = serde_json::to_string(&v).expect("a decoded message encodes");
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(back, v, "{text}");
    Some(v)
}

fn layout_ok(l: &Layout) {
    assert!(Layout::new(l.size, l.chunk_size).is_ok(), "{l:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Some(r) = round_trip::<SyncRequest>(json) {
                r.layout.iter().for_each(layout_ok);
            }
        }
        1 => {
            if let Some(r) = round_trip::<SyncResponse>(json) {
                r.layout.iter().for_each(layout_ok);
            }
        }
        2 => {
            if let Some(r) = round_trip::<AnnounceRequest>(json) {
                r.objects.iter().for_each(|o| layout_ok(&o.layout));
            }
        }
        3 => {
            round_trip::<AnnounceResponse>(json);
        }
        _ => {
            round_trip::<ErrorBody>(json);
        }
    }
});
