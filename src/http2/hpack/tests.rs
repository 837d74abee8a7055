//! The decoder against RFC 7541's examples (Appendix C), malformed blocks, and the encoder's output.

use bytes::BytesMut;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String, bool)>, DecodeError> {
    let mut fields = Vec::new();
    d.decode(block, |f| {
        let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        fields.push((s(f.name), s(f.value), f.sensitive));
    })?;
    Ok(fields)
}

fn pairs(fields: &[(String, String, bool)]) -> Vec<(&str, &str)> {
    fields.iter().map(|(n, v, _)| (n.as_str(), v.as_str())).collect()
}

/// C.3 (requests without Huffman) and C.4 (the same with Huffman) decode alike, the table growing in step.
#[test]
fn rfc_7541_request_examples() {
    let blocks = [
        ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        ("8286 84be 5808 6e6f 2d63 6163 6865", "8286 84be 5886 a8eb 1064 9cbf"),
        (
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ),
    ];
    let expected: [&[(&str, &str)]; 3] = [
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];
    // The table's size after each request (C.3.1-C.3.3).
    let sizes = [57, 110, 164];
    let mut plain = Decoder::new(DEFAULT_TABLE_SIZE);
    let mut huffman = Decoder::new(DEFAULT_TABLE_SIZE);
    for (((p, h), want), size) in blocks.iter().zip(expected).zip(sizes) {
        assert_eq!(pairs(&decode(&mut plain, &hex(p)).unwrap()), want);
        assert_eq!(pairs(&decode(&mut huffman, &hex(h)).unwrap()), want);
        assert_eq!(plain.table().size(), size);
        assert_eq!(huffman.table().size(), size);
    }
}

/// C.6: responses with Huffman, in a table of 256 octets that evicts as it goes.
#[test]
fn rfc_7541_response_examples_evict() {
    let mut d = Decoder::new(256);
    let first =
        hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad \
         1718 63c7 8f0b 97c8 e9ae 82ae 43d3");
    assert_eq!(
        pairs(&decode(&mut d, &first).unwrap()),
        [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]
    );
    assert_eq!(d.table().size(), 222);
    let second = hex("4883 640e ff c1 c0 bf");
    assert_eq!(
        pairs(&decode(&mut d, &second).unwrap()),
        [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]
    );
    assert_eq!(d.table().size(), 222);
    let third =
        hex("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 \
         e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07");
    assert_eq!(
        pairs(&decode(&mut d, &third).unwrap()),
        [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
        ]
    );
    assert_eq!(d.table().size(), 215);
    assert_eq!(d.table().len(), 3);
}

#[test]
fn never_indexed_fields_are_marked_and_not_stored() {
    // C.2.3: "password: secret", never indexed, literal name.
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let fields = decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")).unwrap();
    assert_eq!(fields, [("password".to_owned(), "secret".to_owned(), true)]);
    assert_eq!(d.table().len(), 0);
    // C.2.2: ":path: /sample/path", not indexed, name from the static table.
    let fields = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
    assert_eq!(pairs(&fields), [(":path", "/sample/path")]);
    assert!(!fields[0].2);
    assert_eq!(d.table().len(), 0);
}

#[test]
fn a_literal_may_take_its_name_from_the_dynamic_table_while_it_evicts_that_entry() {
    // A table with room for one entry: "custom-key: a" then "custom-key: b" named by index 62, whose insertion
    // evicts the entry its name came from.
    let mut d = Decoder::new(32 + 11);
    let mut block = hex("400a 6375 7374 6f6d 2d6b 6579 0161");
    block.extend(hex("7e 0162"));
    let fields = decode(&mut d, &block).unwrap();
    assert_eq!(pairs(&fields), [("custom-key", "a"), ("custom-key", "b")]);
    assert_eq!(d.table().len(), 1);
    assert_eq!(pairs(&decode(&mut d, &hex("be")).unwrap()), [("custom-key", "b")]);
}

#[test]
fn size_updates_shrink_the_table_and_are_bounded_and_placed() {
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    decode(&mut d, &hex("418c f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap();
    assert_eq!(d.table().len(), 1);
    // Size 0 empties it; the entry it held is gone (index 62 no longer exists).
    assert_eq!(decode(&mut d, &hex("20")).unwrap(), []);
    assert_eq!(d.table().len(), 0);
    assert_eq!(decode(&mut d, &hex("be")), Err(DecodeError::Index(62)));

    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    // 4097 = 31 + 4066 (e2 1f): above what this side allowed.
    assert_eq!(decode(&mut d, &hex("3f e2 1f")), Err(DecodeError::TableSize(4097, 4096)));
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    assert_eq!(decode(&mut d, &hex("82 20")), Err(DecodeError::LateSizeUpdate));
    // Two updates at the start are allowed (§4.2).
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    assert_eq!(pairs(&decode(&mut d, &hex("20 3f e1 1f 82")).unwrap()), [(":method", "GET")]);
}

#[test]
fn malformed_blocks_are_compression_errors() {
    let cases: [(&str, DecodeError); 7] = [
        ("80", DecodeError::Index(0)),
        ("be", DecodeError::Index(62)),
        ("ff 80 80 80 80 01", DecodeError::Integer),
        ("ff 80", DecodeError::Truncated),
        ("40 05 6162", DecodeError::Truncated),
        ("00 01 61 85 ffff", DecodeError::Truncated),
        // A Huffman value of one octet of zeros: padding that is not a prefix of EOS.
        ("04 81 00", DecodeError::Huffman),
    ];
    for (block, err) in cases {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decode(&mut d, &hex(block)), Err(err), "{block}");
    }
}

#[test]
fn what_the_encoder_writes_decodes_to_what_it_was_given() {
    let fields: [(&str, &str, bool); 9] = [
        (":method", "POST", false),
        (":scheme", "https", false),
        (":path", "/helloworld.Greeter/SayHello", false),
        (":authority", "grpc.test", false),
        ("content-type", "application/grpc", false),
        ("te", "trailers", false),
        ("authorization", "Bearer x", true),
        ("x-long", &"v".repeat(300), false),
        ("grpc-timeout", "", false),
    ];
    let mut out = BytesMut::new();
    put_status(&mut out, 200);
    put_status(&mut out, 418);
    for (n, v, s) in &fields {
        put_field(&mut out, n.as_bytes(), v.as_bytes(), *s);
    }
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let got = decode(&mut d, &out).unwrap();
    let mut want = vec![(":status".to_owned(), "200".to_owned(), false), (":status".into(), "418".into(), false)];
    want.extend(fields.iter().map(|(n, v, s)| (n.to_string(), v.to_string(), *s)));
    assert_eq!(got, want);
    assert_eq!(d.table().len(), 0, "the encoder never indexes");
    // :status 200, :method POST and :scheme https are one octet each.
    assert_eq!(&out[..1], [0x88]);
}

/// Decodes `block` with a decoder whose memo is a `String`: each field's memo as it was found (`None` for a
/// literal or an empty memo), then filled with "name: value" so that the next reference shows it.
fn memos(d: &mut Decoder<String>, block: &[u8]) -> Vec<(String, Option<String>)> {
    let mut seen = Vec::new();
    d.decode(block, |f| {
        let field = format!("{}: {}", String::from_utf8_lossy(f.name), String::from_utf8_lossy(f.value));
        let memo = match f.known {
            Known::Entry(memo) => {
                let found = memo.get().cloned();
                memo.get_or_init(|| field.clone());
                found
            }
            Known::StaticName(i) => Some(format!("static name {i}")),
            Known::Literal => None,
        };
        seen.push((field, memo));
    })
    .unwrap();
    seen
}

#[test]
fn an_entrys_memo_comes_back_with_every_reference_and_goes_with_the_entry() {
    // Room for one entry ("custom-key: a" is 32 + 11 octets).
    let mut d: Decoder<String> = Decoder::new(32 + 11);
    let key = |v: &str| format!("custom-key: {v}");
    // Inserted with incremental indexing (a literal: no memo yet), then referenced twice (62): the first
    // reference fills the memo, the second finds it. A static entry (2, :method GET) comes by its index.
    let mut block = hex("400a 6375 7374 6f6d 2d6b 6579 0161");
    block.extend(hex("be be 82"));
    let get = || (":method: GET".to_string(), Some("static name 2".to_string()));
    assert_eq!(memos(&mut d, &block), [(key("a"), None), (key("a"), None), (key("a"), Some(key("a"))), get()]);
    assert_eq!(memos(&mut d, &hex("be 82")), [(key("a"), Some(key("a"))), get()]);
    // "custom-key: b" under the name of entry 62 evicts "custom-key: a" and takes index 62: its memo starts
    // empty, whatever the entry before it held.
    assert_eq!(memos(&mut d, &hex("7e 0162 be")), [(key("b"), None), (key("b"), None)]);
    assert_eq!(memos(&mut d, &hex("be")), [(key("b"), Some(key("b")))]);
    // A literal under a static name says which (58: user-agent).
    assert_eq!(memos(&mut d, &hex("0f2b 0178")), [("user-agent: x".into(), Some("static name 58".into()))]);
}

/// Encodes one block of `fields` with `e`, decodes it with `d` (the peer's decoder), checks that both tables hold
/// the same entries, and gives the block's size.
fn round_trip(e: &mut Encoder, d: &mut Decoder, fields: &[(&str, &str, bool)]) -> usize {
    let mut out = BytesMut::new();
    e.begin(&mut out);
    for (n, v, s) in fields {
        e.put_field(&mut out, n.as_bytes(), v.as_bytes(), *s);
    }
    let got = decode(d, &out).unwrap();
    let want: Vec<_> = fields.iter().map(|(n, v, s)| (n.to_string(), v.to_string(), *s)).collect();
    assert_eq!(got, want);
    assert_eq!(e.entries(), d.table().len(), "the two tables stay in step");
    for i in 1..=e.entries() {
        let (name, value, _) = d.table().get(i).unwrap();
        assert_eq!(e.entry(i), (name, value), "entry {i}");
    }
    out.len()
}

#[test]
fn the_encoder_sends_a_repeated_field_by_index_and_keeps_its_table_in_step() {
    let mut e = Encoder::new(Indexing::Responses);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let fields = [
        (":status", "418", false),
        ("content-type", "application/grpc", false),
        ("grpc-status", "0", false),
        ("authorization", "Bearer x", true),
        ("x-secret", "s", true),
        ("content-length", "5", false),
        ("set-cookie", "a=1", false),
        ("x-long", &"v".repeat(1100), false),
    ];
    let first = round_trip(&mut e, &mut d, &fields);
    // :status 418, content-type and grpc-status were indexed; the sensitive fields, content-length, set-cookie
    // and one over a quarter of the table were not.
    assert_eq!(e.entries(), 3);
    let second = round_trip(&mut e, &mut d, &fields);
    // Each of the three is one octet now: `:status: 418` was 5 (name index, length, "418"), `content-type` 18
    // and `grpc-status: 0` 15 (a literal name).
    assert_eq!(first - second, (5 - 1) + (18 - 1) + (15 - 1));
    // Fields that change every time: each a new entry, the oldest evicted as the table fills, in step throughout.
    for i in 0..500 {
        round_trip(&mut e, &mut d, &[("content-type", "text/plain", false), ("x-each", &format!("value {i}"), false)]);
    }
    assert!(d.table().size() <= DEFAULT_TABLE_SIZE);
    assert!(e.entries() > 50, "{}", e.entries());
}

#[test]
fn requests_to_a_backend_index_only_fields_no_client_keeps_secret() {
    let mut e = Encoder::new(Indexing::Requests);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let fields = [
        (":method", "POST", false),
        (":scheme", "http", false),
        (":authority", "grpc.test", false),
        (":path", "/helloworld.Greeter/SayHello", false),
        ("content-type", "application/grpc", false),
        ("te", "trailers", false),
        ("user-agent", "grpc-go/1.60", false),
        ("x-api-key", "k-123", false),
        ("x-forwarded-for", "192.0.2.7", false),
        ("x-forwarded-proto", "https", false),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false),
    ];
    round_trip(&mut e, &mut d, &fields);
    let indexed: Vec<_> = (1..=e.entries()).map(|i| String::from_utf8(e.entry(i).0.to_vec()).unwrap()).collect();
    assert_eq!(indexed, ["x-forwarded-proto", "user-agent", "te", "content-type", ":authority"]);
    round_trip(&mut e, &mut d, &fields);
    assert_eq!(e.entries(), 5);
}

#[test]
fn a_smaller_table_the_peer_allows_is_said_at_the_next_block_and_kept() {
    let mut e = Encoder::new(Indexing::Responses);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    let fields = [("x-a", "1", false), ("x-b", "2", false)];
    round_trip(&mut e, &mut d, &fields);
    assert_eq!(d.table().len(), 2);
    // The peer allows none (its decoder: the new limit, once acknowledged): the next block starts with a size
    // update to 0, which empties the peer's table, and nothing is indexed after it.
    e.set_peer_limit(0);
    let mut out = BytesMut::new();
    e.begin(&mut out);
    assert_eq!(&out[..], [0x20]);
    decode(&mut d, &out).unwrap();
    assert_eq!(d.table().len(), 0);
    round_trip(&mut e, &mut d, &fields);
    round_trip(&mut e, &mut d, &fields);
    assert_eq!(e.entries(), 0);
    // Down to 0 and back up to 4096 between two blocks: both updates, the smallest first (§4.2), and the entries
    // the smaller size evicted are gone on both sides.
    let mut e = Encoder::new(Indexing::Responses);
    let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
    round_trip(&mut e, &mut d, &fields);
    e.set_peer_limit(0);
    e.set_peer_limit(8192);
    let mut out = BytesMut::new();
    e.begin(&mut out);
    assert_eq!(&out[..], hex("20 3f e1 1f"));
    decode(&mut d, &out).unwrap();
    assert_eq!(d.table().len(), 0);
    round_trip(&mut e, &mut d, &fields);
    assert_eq!(e.entries(), 2);
    // A limit above 4096 changes nothing: the table stays at the default size, and no update is sent.
    let mut out = BytesMut::new();
    e.set_peer_limit(65536);
    e.begin(&mut out);
    assert!(out.is_empty());
}
