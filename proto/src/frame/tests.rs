use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn label_strategy() -> impl Strategy<Value = WorkspaceLabel> {
    ("[a-z][a-z0-9]{0,15}", "[a-z][a-z0-9]{0,15}")
        .prop_map(|(n, o)| WorkspaceLabel::new(&n, &o).expect("strategy makes valid labels"))
}

fn target_strategy() -> impl Strategy<Value = Target> {
    prop_oneof![
        (1u16..).prop_map(Target::Port),
        Just(Target::Ssh),
        Just(Target::Trace),
        (1u16.., 1u16..).prop_map(|(cols, rows)| Target::Terminal { cols, rows })
    ]
}

fn round_trip<F: Frame + PartialEq + std::fmt::Debug>(frame: &F) {
    let bytes = frame.to_framed_bytes();
    assert_eq!(bytes.len(), 2 + frame.encoded_len());
    let mut buf = Bytes::from(bytes);
    let back: F = decode_framed(&mut buf).expect("round trip decodes");
    assert_eq!(&back, frame);
    assert!(buf.is_empty());
}

proptest! {
    #[test]
    fn stream_headers_round_trip(label in label_strategy(), target in target_strategy(), hops in 0..=MAX_HOPS) {
        round_trip(&StreamHeader { hops, workspace: label, target });
    }

    #[test]
    fn hellos_round_trip(token in "[A-Za-z0-9._-]{0,600}") {
        round_trip(&Hello { token });
    }

    #[test]
    fn replies_round_trip(code in 1u16..200, message in ".{0,200}") {
        round_trip(&Reply::Ok);
        round_trip(&Reply::error(ErrorCode::from_u16(code), message));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = StreamHeader::decode(&mut Bytes::from(raw.clone()));
        let _ = Hello::decode(&mut Bytes::from(raw.clone()));
        let _ = Reply::decode(&mut Bytes::from(raw));
    }
}

#[test]
fn error_messages_are_capped_at_a_char_boundary() {
    let e = ErrorFrame::new(ErrorCode::Internal, "é".repeat(MAX_ERROR_MESSAGE_LEN));
    assert!(e.message.len() <= MAX_ERROR_MESSAGE_LEN);
    round_trip(&Reply::Error(e));
}

#[test]
fn malformed_headers_get_typed_errors() {
    let cases: &[(&[u8], &str)] = &[
        (&[], "empty"),
        (&[2, 0, 0], "version"),
        (&[1, 9, 0], "hops"),
        (&[1, 0, 5, b'a'], "truncated label"),
        (&[1, 0, 4, b'a', b'-', b'-', b'B', 1, 0, 1], "bad label"),
        (&[1, 0, 4, b'a', b'-', b'-', b'b', 7], "unknown target"),
        (&[1, 0, 4, b'a', b'-', b'-', b'b', 1, 0, 0], "port 0"),
        (&[1, 0, 4, b'a', b'-', b'-', b'b', 2, 0], "trailing"),
    ];
    for (raw, why) in cases {
        let err = StreamHeader::decode(&mut Bytes::copy_from_slice(raw));
        assert!(err.is_err(), "{why}: {raw:?} decoded as {err:?}");
    }
    assert_eq!(
        StreamHeader::decode(&mut Bytes::from_static(&[2, 0])),
        Err(DecodeError::UnsupportedVersion {
            got: 2,
            supported: 1
        })
    );
}

#[test]
fn oversized_frames_are_refused_before_buffering() {
    let mut raw = Bytes::from_static(&[0xff, 0xff, 1, 2, 3]);
    assert!(matches!(
        decode_framed::<Hello>(&mut raw),
        Err(DecodeError::TooLong { .. })
    ));
}
