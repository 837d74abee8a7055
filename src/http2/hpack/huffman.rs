//! Huffman decoding of HPACK's string literals (RFC 7541 §5.2), with the code of its Appendix B.
//!
//! Decoding walks a table of 256 states (the code tree's inner nodes) by 4 bits at a time, built once at first
//! use from the code lengths below: each step emits at most one octet, because no code is shorter than 5 bits.
//! reveille does not Huffman-encode (its encoder writes literals as they are, as HAProxy's does): only the tests
//! encode, to check the decoder against the code.

use std::sync::OnceLock;

/// The code of each octet, right-aligned (RFC 7541, Appendix B; transcribed as the `h2` crate's generated table
/// has it).
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8, 0xffffea,
    0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0,
    0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9,
    0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16,
    0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
    0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4,
    0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3,
    0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8,
    0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8,
    0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0,
    0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8,
    0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2,
    0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8,
    0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7,
    0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec,
    0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// The length in bits of each octet's code.
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26,
];

/// EOS, the 257th symbol: thirty 1 bits. Decoding it is an error (§5.2); a prefix of it pads the last octet.
const EOS_CODE: u32 = 0x3fff_ffff;
const EOS_LENGTH: u8 = 30;

/// A string literal whose Huffman code does not decode: a bit sequence that is no code, EOS in the middle, or
/// padding that is longer than 7 bits or not a prefix of EOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadHuffman;

/// One step of the table: the state after 4 bits, the octet they completed (when `EMIT`), and whether the
/// string may end there.
#[derive(Clone, Copy, Default)]
struct Step {
    next: u8,
    octet: u8,
    flags: u8,
}

const EMIT: u8 = 1;
/// The 4 bits completed EOS, or no code: the string is malformed.
const FAIL: u8 = 2;
/// The state after them is the tree's root, or at most 7 bits of 1 below it (valid padding).
const ACCEPT: u8 = 4;

type Table = [[Step; 16]; 256];

fn table() -> &'static Table {
    static TABLE: OnceLock<Box<Table>> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// A child in the code tree: an inner node's index, or a leaf's symbol (`LEAF | symbol`, 256 being EOS).
const LEAF: u16 = 0x8000;
const NONE: u16 = u16::MAX;

fn build() -> Box<Table> {
    // The tree: 257 leaves make 256 inner nodes. Each node keeps its depth and whether its path is all 1 bits.
    let mut children: Vec<[u16; 2]> = vec![[NONE, NONE]];
    let mut depth: Vec<u8> = vec![0];
    let mut ones: Vec<bool> = vec![true];
    let symbols = CODES.iter().zip(LENGTHS).enumerate().map(|(s, (&c, l))| (s as u16, c, l));
    for (symbol, code, length) in symbols.chain([(256, EOS_CODE, EOS_LENGTH)]) {
        let mut node = 0usize;
        for i in (0..length).rev() {
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                assert_eq!(children[node][bit], NONE, "Huffman code of {symbol} overlaps another");
                children[node][bit] = LEAF | symbol;
            } else {
                if children[node][bit] == NONE {
                    children.push([NONE, NONE]);
                    depth.push(depth[node] + 1);
                    ones.push(ones[node] && bit == 1);
                    children[node][bit] = (children.len() - 1) as u16;
                }
                node = children[node][bit] as usize;
            }
        }
    }
    assert_eq!(children.len(), 256, "a Huffman code of 257 symbols has 256 inner nodes");

    let mut table = Box::new([[Step::default(); 16]; 256]);
    for (state, row) in table.iter_mut().enumerate() {
        for (nibble, step) in row.iter_mut().enumerate() {
            let mut node = state;
            for i in (0..4).rev() {
                let child = children[node][(nibble >> i) & 1];
                if child == NONE || child == LEAF | 256 {
                    step.flags = FAIL;
                    break;
                }
                if child & LEAF != 0 {
                    step.flags |= EMIT;
                    step.octet = child as u8;
                    node = 0;
                } else {
                    node = child as usize;
                }
            }
            step.next = node as u8;
            if node == 0 || (ones[node] && depth[node] <= 7) {
                step.flags |= ACCEPT;
            }
        }
    }
    table
}

/// Appends the octets `src` decodes to to `out`.
pub(crate) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), BadHuffman> {
    let table = table();
    // The shortest code is 5 bits: at most 8 octets for every 5 of input.
    out.reserve(src.len() * 8 / 5 + 1);
    let mut state = 0u8;
    let mut accept = true;
    for &b in src {
        for nibble in [b >> 4, b & 0x0f] {
            let step = table[state as usize][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(BadHuffman);
            }
            if step.flags & EMIT != 0 {
                out.push(step.octet);
            }
            state = step.next;
            accept = step.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else {
        Err(BadHuffman)
    }
}

/// Huffman-encodes `src` (the tests' encoder: reveille writes literals as they are).
#[cfg(test)]
pub(crate) fn encode(src: &[u8], out: &mut Vec<u8>) {
    let mut bits: u64 = 0;
    let mut count = 0u32;
    for &b in src {
        bits = (bits << LENGTHS[b as usize]) | u64::from(CODES[b as usize]);
        count += u32::from(LENGTHS[b as usize]);
        while count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    if count > 0 {
        // Padded with the most significant bits of EOS: 1s.
        out.push(((bits << (8 - count)) as u8) | (0xff >> count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(src: &[u8]) -> Result<Vec<u8>, BadHuffman> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    #[test]
    fn rfc_7541_examples_decode() {
        // Appendix C.4.1 and C.6.1's strings.
        let www = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(decoded(&www).unwrap(), b"www.example.com");
        assert_eq!(decoded(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(), b"no-cache");
        assert_eq!(decoded(&[0x64, 0x02]).unwrap(), b"302");
        assert_eq!(decoded(&[0xae, 0xc3, 0x77, 0x1a, 0x4b]).unwrap(), b"private");
    }

    #[test]
    fn every_octet_round_trips_alone_and_together() {
        for b in 0..=255u8 {
            let mut enc = Vec::new();
            encode(&[b], &mut enc);
            assert_eq!(decoded(&enc).unwrap(), [b], "octet {b}");
        }
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut enc = Vec::new();
        encode(&all, &mut enc);
        assert_eq!(decoded(&enc).unwrap(), all);
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // "0" is 00000 (5 bits): padded with 111 it is one octet; padded with 0s it is not.
        assert_eq!(decoded(&[0b0000_0111]).unwrap(), b"0");
        assert_eq!(decoded(&[0b0000_0000]), Err(BadHuffman), "padding that is not a prefix of EOS");
        // A whole octet of 1s after a complete code is padding longer than 7 bits.
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(BadHuffman));
        // EOS itself (thirty 1 bits) inside the string.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xfc]), Err(BadHuffman));
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(BadHuffman));
    }
}
