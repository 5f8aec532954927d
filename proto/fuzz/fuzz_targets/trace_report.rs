#![no_main]
use bytes::Bytes;
use ferry_proto::frame::{decode_framed, Frame};
use ferry_proto::TraceReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Framed and unframed: both paths take bytes straight from a peer.
    if let Ok(frame) = decode_framed::<TraceReport>(&mut Bytes::copy_from_slice(data)) {
        // Whatever decodes must encode back to something that decodes the same.
        let again = decode_framed::<TraceReport>(&mut Bytes::from(frame.to_framed_bytes()));
        assert_eq!(again.ok(), Some(frame));
    }
    let _ = TraceReport::decode(&mut Bytes::copy_from_slice(data));
});
