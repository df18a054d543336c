use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;

use super::{CHUNK, Chunks, GRPC_HEADER, Outgoing, Request, Response, encode};
use crate::xds::{CLUSTER, SharedResource, XdsResource};

fn resource(name: &str, size: usize) -> Arc<SharedResource> {
    SharedResource::new(XdsResource {
        name: name.into(),
        resource: Any {
            type_url: CLUSTER.into(),
            value: name.bytes().cycle().take(size).collect(),
        },
    })
}

fn response(version: &str, resources: Vec<Arc<SharedResource>>) -> Response {
    Response {
        version_info: version.into(),
        resources: Arc::new(resources),
        type_url: CLUSTER.into(),
        nonce: "1f".into(),
        control_plane: "isthmus",
    }
}

/// The gRPC message tonic's prost codec writes for the same response.
fn reference(response: &Response) -> Vec<u8> {
    let body = response.to_message().encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn chunked_encoding_is_prosts_encoding() {
    let many_small: Vec<_> = (0..500)
        .map(|i| {
            resource(
                &format!("outbound|80||svc-{i}.ns.svc.cluster.local"),
                300 + i,
            )
        })
        .collect();
    let mixed = vec![
        resource("a", 10),
        resource("big", CHUNK * 3 + 7),
        resource("b", CHUNK / 2),
        resource("c", CHUNK / 2 + 1),
        resource("d", 0),
        resource("", 0),
    ];
    let cases = [
        response("", vec![]),
        response("7-0123456789ab", vec![]),
        response("7-0123456789ab", vec![resource("one", 100)]),
        response("8-0000000000ff", many_small),
        response("9-00000000abcd", mixed),
        response("9-1", vec![resource("huge", 5 * 1024 * 1024)]),
    ];
    for case in cases {
        let got = encode(&case);
        assert_eq!(got.len(), GRPC_HEADER + case.encoded_len());
        assert!(
            got == reference(&case),
            "{} resources",
            case.resources.len()
        );
    }
}

#[test]
fn pieces_are_bounded_or_shared() {
    let big = resource("big", CHUNK * 4);
    let mut resources: Vec<_> = (0..300).map(|i| resource(&format!("r{i}"), 700)).collect();
    resources.insert(150, big.clone());
    let chunks = Chunks::new(response("1-1", resources)).expect("small");
    let mut shared = 0;
    for piece in chunks {
        if piece.len() > CHUNK {
            // Not copied: the resource's own bytes.
            assert_eq!(piece.as_ptr(), big.encoded.as_ptr());
            shared += 1;
        }
    }
    assert_eq!(shared, 1);
}

#[test]
fn request_names_are_slices_of_the_same_wire_format() {
    let sent = DiscoveryRequest {
        version_info: "3-abc".into(),
        node: Some(Node {
            id: "sidecar~10.0.0.1~sleep-1.sample~sample.svc.cluster.local".into(),
            ..Node::default()
        }),
        resource_names: vec!["outbound|80||a".into(), "".into(), "ünïcode".into()],
        type_url: CLUSTER.into(),
        response_nonce: "2a".into(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "rejected".into(),
            details: vec![],
        }),
        ..DiscoveryRequest::default()
    };
    let bytes = Bytes::from(sent.encode_to_vec());
    let got = Request::decode(bytes.clone()).expect("decodes");
    assert_eq!(got.version_info, sent.version_info);
    assert_eq!(got.node, sent.node);
    assert_eq!(got.type_url, sent.type_url);
    assert_eq!(got.response_nonce, sent.response_nonce);
    assert_eq!(got.error_detail, sent.error_detail);
    let names: Vec<&[u8]> = got.resource_names.iter().collect();
    let want: Vec<&[u8]> = sent.resource_names.iter().map(String::as_bytes).collect();
    assert_eq!(names, want);
    assert_eq!(got.resource_names.len(), 3);
    // Zero-copy: the names point into the received message.
    let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    let first = got.resource_names.iter().next().expect("a name");
    assert!(range.contains(&(first.as_ptr() as usize)));
    // Names that are not length-delimited, or longer than the message, are
    // refused rather than read past.
    let mut varint_name = Vec::new();
    prost::encoding::uint64::encode(3, &7, &mut varint_name);
    assert!(Request::decode(&varint_name[..]).is_err());
    let mut cut = Vec::new();
    prost::encoding::string::encode(3, &"outbound|80||a".to_string(), &mut cut);
    assert!(Request::decode(&cut[..cut.len() - 1]).is_err());
    // The same after other names (read in one loop), and with a length of
    // two bytes.
    let long = "l".repeat(300);
    for last in ["outbound|80||b", long.as_str()] {
        let mut names = Vec::new();
        for name in ["a", "", last] {
            prost::encoding::string::encode(3, &name.to_string(), &mut names);
        }
        let whole = Request::decode(&names[..]).expect("decodes");
        let got: Vec<&[u8]> = whole.resource_names.iter().collect();
        assert_eq!(got, [&b"a"[..], b"", last.as_bytes()]);
        assert!(whole.resource_names.wire().is_some());
        for cut in 1..=2 {
            assert!(Request::decode(&names[..names.len() - cut]).is_err());
        }
    }
}
