//! HPACK (RFC 7541), as much as the gRPC trace exporter needs: decoding the header blocks a
//! collector sends (static and dynamic table, Huffman-coded strings) and writing the literal
//! forms of the request's few fields (never indexed, never Huffman-coded, which every decoder
//! must accept).
//!
//! The collector is a peer like any other: integers stop at 2^21, strings at the block they
//! sit in, and the dynamic table at 4,096 bytes (HTTP/2's initial SETTINGS_HEADER_TABLE_SIZE,
//! which the exporter never raises).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The dynamic table's size at most (we never advertise a larger SETTINGS_HEADER_TABLE_SIZE).
const TABLE_SIZE: usize = 4096;
/// The largest integer a header block may hold (a table index, a length, a size).
const MAX_INTEGER: usize = 1 << 21;
/// The decoded fields of one block at most, counted as the table counts entries (name, value
/// and 32 bytes each): a small block of references to one big table entry would otherwise
/// decode to megabytes.
const MAX_LIST_SIZE: usize = 16 * 1024;

/// Appendix A; index 1 is the first entry.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Static-table indexes of the names the exporter writes.
pub const PATH: usize = 4;
pub const AUTHORITY: usize = 1;
pub const CONTENT_TYPE: usize = 31;
pub const USER_AGENT: usize = 58;

/// The length in bits of each symbol's Huffman code (Appendix B), bytes 0-255 and EOS (256).
/// The code is canonical (shorter codes first, equal lengths in symbol order), so the lengths
/// determine the codes; `canonical()` rebuilds them.
#[rustfmt::skip]
const HUFFMAN_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16
     6, 10, 10, 12, 13,  6,  8, 11, 10, 10,  8, 11,  8,  6,  6,  6, // 32 ' '
     5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8, 15,  6, 12, 10, // 48 '0'
    13,  6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, // 64 '@'
     7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8, 13, 19, 13, 14,  6, // 80 'P'
    15,  5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5, // 96 '`'
     6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7, 15, 11, 14, 13, 28, // 112 'p'
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240
    30,                                                             // 256 EOS
];

const EOS: u16 = 256;
const LONGEST: usize = 30;

/// The canonical code laid out for decoding: for each length, its first code, how many
/// symbols have it and where they start in `symbols` (sorted by length, then value).
struct Canonical {
    first: [u32; LONGEST + 1],
    count: [u32; LONGEST + 1],
    offset: [u32; LONGEST + 1],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut c = Canonical {
            first: [0; LONGEST + 1],
            count: [0; LONGEST + 1],
            offset: [0; LONGEST + 1],
            symbols: [0; 257],
        };
        for &bits in &HUFFMAN_BITS {
            c.count[usize::from(bits)] += 1;
        }
        let (mut code, mut at) = (0u32, 0u32);
        for len in 1..=LONGEST {
            c.first[len] = code;
            c.offset[len] = at;
            code = (code + c.count[len]) << 1;
            at += c.count[len];
        }
        let mut next = c.offset;
        for (symbol, &bits) in HUFFMAN_BITS.iter().enumerate() {
            let slot = &mut next[usize::from(bits)];
            c.symbols[*slot as usize] = symbol as u16;
            *slot += 1;
        }
        c
    })
}

/// Decodes a Huffman-coded string: bit by bit against the canonical code; the padding must be
/// at most 7 bits, all ones (a prefix of EOS), and EOS itself must not appear.
fn huffman_decode(data: &[u8]) -> Result<Vec<u8>, String> {
    let c = canonical();
    let mut out = Vec::with_capacity(data.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in data {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let rank = code.wrapping_sub(c.first[len]);
            if code >= c.first[len] && rank < c.count[len] {
                let symbol = c.symbols[(c.offset[len] + rank) as usize];
                if symbol == EOS {
                    return Err("a Huffman-coded string holds EOS".into());
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err("a Huffman-coded string ends with bad padding".into());
    }
    Ok(out)
}

/// Reads an integer with an N-bit prefix (5.1).
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, String> {
    let short = "a header block ends inside an integer";
    let mask = (1u8 << prefix) - 1;
    let (&first, rest) = block.split_first().ok_or(short)?;
    *block = rest;
    let mut value = usize::from(first & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first().ok_or(short)?;
        *block = rest;
        value += usize::from(b & 0x7f) << shift;
        if value > MAX_INTEGER || shift > 14 {
            return Err(format!(
                "a header block holds an integer over {MAX_INTEGER}"
            ));
        }
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Reads a string literal (5.2), Huffman-coded or not.
fn string(block: &mut &[u8]) -> Result<String, String> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err("a header block ends inside a string".into());
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    let bytes = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes an integer with an N-bit prefix after `flags` (the bits above the prefix).
fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, mut value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes a string literal, not Huffman-coded.
fn put_string(out: &mut Vec<u8>, s: &str) {
    put_integer(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// Writes "literal header field without indexing" with a static-table name (6.2.2).
pub fn put_field(out: &mut Vec<u8>, name_index: usize, value: &str) {
    put_integer(out, 0, 4, name_index);
    put_string(out, value);
}

/// Writes "literal header field without indexing" with a literal name.
pub fn put_new_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    put_string(out, name);
    put_string(out, value);
}

/// The decoding side of one connection: its dynamic table lives as long as the connection.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<(String, String)>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

fn entry_size(name: &str, value: &str) -> usize {
    name.len() + value.len() + 32
}

impl Decoder {
    /// The header fields of one complete block, in order.
    pub fn decode(&mut self, mut block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut fields: Vec<(String, String)> = Vec::new();
        let mut list_size = 0;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                fields.push((name.to_string(), value.to_string()));
            } else if first & 0xe0 == 0x20 {
                // Only at the start of a block (4.2).
                if !fields.is_empty() {
                    return Err("a table size update after a header field".into());
                }
                let size = integer(&mut block, 5)?;
                if size > TABLE_SIZE {
                    return Err(format!(
                        "the peer sized its header table to {size} bytes (limit {TABLE_SIZE})"
                    ));
                }
                self.max = size;
                self.evict(0);
            } else {
                // With incremental indexing (01xxxxxx, 6-bit index), else without or never
                // indexed (0000xxxx / 0001xxxx, 4-bit index); index 0: the name is literal.
                let indexing = first & 0xc0 == 0x40;
                let index = integer(&mut block, if indexing { 6 } else { 4 })?;
                let name = if index == 0 {
                    string(&mut block)?
                } else {
                    self.get(index)?.0.to_string()
                };
                let value = string(&mut block)?;
                if indexing {
                    self.insert(name.clone(), value.clone());
                }
                fields.push((name, value));
            }
            if let Some((name, value)) = fields.last() {
                list_size += entry_size(name, value);
                if list_size > MAX_LIST_SIZE {
                    return Err(format!(
                        "a header block decodes to more than {MAX_LIST_SIZE} bytes"
                    ));
                }
            }
        }
        Ok(fields)
    }

    fn get(&self, index: usize) -> Result<(&str, &str), String> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
            return Ok((name, value));
        }
        index
            .checked_sub(STATIC.len() + 1)
            .and_then(|i| self.table.get(i))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .ok_or_else(|| format!("a header block names table entry {index}, which is not there"))
    }

    fn insert(&mut self, name: String, value: String) {
        let size = entry_size(&name, &value);
        self.evict(size);
        // An entry larger than the table empties it and is not kept (4.4).
        if size <= self.max {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= entry_size(&name, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn the_huffman_code_is_complete_and_matches_the_rfc_examples() {
        // Kraft: a complete prefix code fills the code space exactly.
        let space: u64 = HUFFMAN_BITS.iter().map(|&b| 1u64 << (30 - b)).sum();
        assert_eq!(space, 1 << 30);
        // C.4 and C.6 of RFC 7541.
        for (coded, plain) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
        ] {
            assert_eq!(huffman_decode(&unhex(coded)).unwrap(), plain.as_bytes());
        }
        // Padding of 8 bits, padding with a zero, EOS: all refused.
        assert!(huffman_decode(&unhex("6402 ff")).is_err());
        assert!(huffman_decode(&unhex("a8eb 1064 9cbe")).is_err());
        assert!(huffman_decode(&unhex("ffff ffff")).is_err());
    }

    #[test]
    fn blocks_decode_with_the_dynamic_table_across_them() {
        // RFC 7541 C.4.1-C.4.3: three requests on one connection, Huffman-coded.
        let mut d = Decoder::default();
        let first = d
            .decode(&unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(first[3], (":authority".into(), "www.example.com".into()));
        let second = d.decode(&unhex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        let third = d
            .decode(&unhex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(third[1], (":scheme".into(), "https".into()));
        assert_eq!(third[2], (":path".into(), "/index.html".into()));
        assert_eq!(third[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
        // A size update to 0 empties the table: index 62 is gone.
        assert!(d.decode(&unhex("20 be")).is_err());
    }

    #[test]
    fn hostile_blocks_are_refused() {
        let mut d = Decoder::default();
        for bad in [
            "ff ff ff ff ff 0f", // an endless integer
            "ff",                // a block ending inside one
            "c0",                // table entry 64, not there
            "80",                // index 0
            "3f e2 1f",          // a table of 4,097 bytes
            "40 0a 63 75",       // a string longer than the block
            "82 20",             // a size update after a field
        ] {
            assert!(d.decode(&unhex(bad)).is_err(), "{bad}");
        }
        // One big entry referenced over and over: refused past the list size, not copied.
        let mut block = Vec::new();
        put_integer(&mut block, 0x40, 6, 0);
        put_string(&mut block, "x");
        put_string(&mut block, &"y".repeat(4000));
        block.extend(std::iter::repeat_n(0xbe, 4000));
        let err = Decoder::default().decode(&block).unwrap_err();
        assert!(err.contains("more than 16384 bytes"), "{err}");
    }

    #[test]
    fn what_we_write_reads_back() {
        let mut out = Vec::new();
        put_field(&mut out, PATH, "/a/b");
        put_new_field(&mut out, "te", "trailers");
        put_field(&mut out, USER_AGENT, &"x".repeat(300));
        let fields = Decoder::default().decode(&out).unwrap();
        assert_eq!(fields[0], (":path".into(), "/a/b".into()));
        assert_eq!(fields[1], ("te".into(), "trailers".into()));
        assert_eq!(fields[2].0, "user-agent");
        assert_eq!(fields[2].1.len(), 300);
        let mut n = Vec::new();
        put_integer(&mut n, 0, 5, 1337);
        assert_eq!(n, [31, 154, 10]);
    }
}
