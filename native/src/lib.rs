//! Hot loops of the Cardo CDC decoder, called from `cardo_pipeline.cdc.native`.
//!
//! Three functions, each a strict subset of what the Python decoder does: whatever they accept, they decode
//! exactly as the Python path (pyarrow.json with an explicit schema) would; whatever they are unsure of, they
//! hand back by index, and the Python path decides (dead letter, normalisation, or a decode it knows better).
//! So the Python path stays the definition of the contract, and this crate only makes the common case fast.
//!
//! - `split_envelopes`: JsonConverter values -> (schema heads, head per value, payload start per value).
//! - `parse_payloads`: payload texts -> Arrow buffers for an explicit parse schema (ints, bools, strings, nulls,
//!   nested structs), with the rejected rows listed.
//! - `slice_keys`: key payload texts as one Arrow string column, checked to be JSON objects.

use memchr::memmem;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

const SCHEMA_START: &[u8] = b"{\"schema\":";
const PAYLOAD_KEY: &[u8] = b",\"payload\":";
const MAX_DEPTH: usize = 256;

// --- envelope splitting ----------------------------------------------------------------------------------

/// The payload start of a value that begins with `head` (the schema text up to the payload key), if the
/// layout is JsonConverter's: the payload object follows the head and closes the value.
fn payload_after(value: &[u8], head: &[u8]) -> Option<usize> {
    let size = head.len();
    if value.len() > size + 1 && value.starts_with(head) && value[value.len() - 1] == b'}' && value[size] == b'{'
    {
        Some(size)
    } else {
        None
    }
}

/// Where a value's payload starts when it has JsonConverter's layout: after the first payload key.
fn locate(value: &[u8]) -> Option<usize> {
    if !(value.starts_with(SCHEMA_START) && value.ends_with(b"}")) {
        return None;
    }
    let at = memmem::find(value, PAYLOAD_KEY)?;
    let start = at + PAYLOAD_KEY.len();
    (start < value.len() - 1 && value[start] == b'{').then_some(start)
}

fn as_bytes<'a>(item: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    item.cast::<PyBytes>().ok().map(|b| b.as_bytes())
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Group values by their schema text, as `decode_envelope.split_values` does on its fast path.
///
/// Returns (heads, group per value as int32 bytes, payload start per value as int64 bytes). Group -1 is a
/// tombstone (None), -2 a value for the Python path (not bytes, or not JsonConverter's layout).
#[pyfunction]
fn split_envelopes<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
) -> PyResult<(Vec<Bound<'py, PyBytes>>, Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
    // The values' bytes as (address, length), so the scan runs without the GIL (the Kafka reader thread needs
    // it meanwhile). The list keeps every bytes object alive and bytes never change, so the addresses hold.
    let spans: Vec<Span> = values
        .iter()
        .map(|item| {
            if item.is_none() {
                Span::Tombstone
            } else {
                as_bytes(&item).map_or(Span::Other, |b| Span::Bytes(b.as_ptr() as usize, b.len()))
            }
        })
        .collect();
    let (heads, groups, starts) = py.detach(move || split_spans(&spans));
    Ok((
        heads.iter().map(|h| PyBytes::new(py, h)).collect(),
        PyBytes::new(py, &i32_bytes(&groups)),
        PyBytes::new(py, &i64_bytes(&starts)),
    ))
}

enum Span {
    Tombstone,
    Other,
    Bytes(usize, usize),
}

fn split_spans(spans: &[Span]) -> (Vec<Vec<u8>>, Vec<i32>, Vec<i64>) {
    let n = spans.len();
    let mut heads: Vec<Vec<u8>> = Vec::new();
    let mut groups = vec![-2i32; n];
    let mut starts = vec![0i64; n];
    let mut current: Option<usize> = None;
    for (i, span) in spans.iter().enumerate() {
        let value: &[u8] = match *span {
            Span::Tombstone => {
                groups[i] = -1;
                continue;
            }
            Span::Other => continue,
            // SAFETY: see split_envelopes: the bytes object outlives this call and is immutable.
            Span::Bytes(address, len) => unsafe { std::slice::from_raw_parts(address as *const u8, len) },
        };
        if let Some(h) = current {
            if let Some(start) = payload_after(value, &heads[h]) {
                groups[i] = h as i32;
                starts[i] = start as i64;
                continue;
            }
        }
        let Some(start) = locate(value) else { continue };
        let head = &value[..start];
        let h = match heads.iter().position(|known| known.as_slice() == head) {
            Some(h) => h,
            None => {
                heads.push(head.to_vec());
                heads.len() - 1
            }
        };
        current = Some(h);
        groups[i] = h as i32;
        starts[i] = start as i64;
    }
    (heads, groups, starts)
}

/// The fields of one object seen so far: a bit set on the stack for up to 128 fields (no allocation per object).
enum Seen {
    Few(u128),
    Many(Vec<bool>),
}

impl Seen {
    fn new(fields: usize) -> Seen {
        if fields <= 128 {
            Seen::Few(0)
        } else {
            Seen::Many(vec![false; fields])
        }
    }

    fn get(&self, k: usize) -> bool {
        match self {
            Seen::Few(bits) => bits >> k & 1 == 1,
            Seen::Many(flags) => flags[k],
        }
    }

    fn set(&mut self, k: usize) {
        match self {
            Seen::Few(bits) => *bits |= 1 << k,
            Seen::Many(flags) => flags[k] = true,
        }
    }
}

// --- the parse schema and its column builders ------------------------------------------------------------

/// A column being built, one entry per accepted row (so a rejected row is undone by truncating to a length).
enum Column {
    Int { bits: u32, valid: Vec<u8>, data: Vec<i64> },
    Bool { valid: Vec<u8>, data: Vec<u8> },
    Str { valid: Vec<u8>, offsets: Vec<i64>, data: Vec<u8> },
    Null { len: usize },
    Struct { valid: Vec<u8>, names: Vec<Vec<u8>>, children: Vec<Column> },
}

impl Column {
    fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<Column> {
        let (kind, children): (String, Option<Bound<'_, PyList>>) = spec.extract()?;
        Ok(match kind.as_str() {
            "int8" => Column::Int { bits: 8, valid: vec![], data: vec![] },
            "int16" => Column::Int { bits: 16, valid: vec![], data: vec![] },
            "int32" => Column::Int { bits: 32, valid: vec![], data: vec![] },
            "int64" => Column::Int { bits: 64, valid: vec![], data: vec![] },
            "bool" => Column::Bool { valid: vec![], data: vec![] },
            "string" => Column::Str { valid: vec![], offsets: vec![0], data: vec![] },
            "null" => Column::Null { len: 0 },
            "struct" => {
                let mut names = Vec::new();
                let mut columns = Vec::new();
                for child in children.ok_or_else(|| PyValueError::new_err("a struct spec needs children"))?.iter() {
                    let (name, child_spec): (String, Bound<'_, PyAny>) = child.extract()?;
                    names.push(name.into_bytes());
                    columns.push(Column::from_spec(&child_spec)?);
                }
                Column::Struct { valid: vec![], names, children: columns }
            }
            other => return Err(PyValueError::new_err(format!("unsupported parse type {other}"))),
        })
    }

    /// Room for `rows` more rows in every fixed-width buffer: growing them row by row cost ~5% of a parse.
    fn reserve(&mut self, rows: usize) {
        match self {
            Column::Int { valid, data, .. } => {
                valid.reserve(rows);
                data.reserve(rows);
            }
            Column::Bool { valid, data } => {
                valid.reserve(rows);
                data.reserve(rows);
            }
            Column::Str { valid, offsets, .. } => {
                valid.reserve(rows);
                offsets.reserve(rows);
            }
            Column::Null { .. } => {}
            Column::Struct { valid, children, .. } => {
                valid.reserve(rows);
                children.iter_mut().for_each(|c| c.reserve(rows));
            }
        }
    }

    fn push_null(&mut self) {
        match self {
            Column::Int { valid, data, .. } => {
                valid.push(0);
                data.push(0);
            }
            Column::Bool { valid, data } => {
                valid.push(0);
                data.push(0);
            }
            Column::Str { valid, offsets, .. } => {
                valid.push(0);
                offsets.push(*offsets.last().unwrap());
            }
            Column::Null { len } => *len += 1,
            Column::Struct { valid, children, .. } => {
                valid.push(0);
                children.iter_mut().for_each(Column::push_null);
            }
        }
    }

    fn truncate(&mut self, rows: usize) {
        match self {
            Column::Int { valid, data, .. } => {
                valid.truncate(rows);
                data.truncate(rows);
            }
            Column::Bool { valid, data } => {
                valid.truncate(rows);
                data.truncate(rows);
            }
            Column::Str { valid, offsets, data } => {
                valid.truncate(rows);
                offsets.truncate(rows + 1);
                data.truncate(*offsets.last().unwrap() as usize);
            }
            Column::Null { len } => *len = rows,
            Column::Struct { valid, children, .. } => {
                valid.truncate(rows);
                children.iter_mut().for_each(|c| c.truncate(rows));
            }
        }
    }

    /// Python: (validity bitmap or None, data buffers..., children) as pyarrow's `Array.from_buffers` wants.
    fn into_py<'py>(self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let bitmap = |valid: &[u8]| -> Py<PyAny> {
            if valid.iter().all(|&v| v == 1) {
                py.None()
            } else {
                PyBytes::new(py, &pack_bits(valid)).into_any().unbind()
            }
        };
        match self {
            Column::Int { bits, valid, data } => {
                let bytes: Vec<u8> = match bits {
                    8 => data.iter().map(|&v| v as i8 as u8).collect(),
                    16 => data.iter().flat_map(|&v| (v as i16).to_le_bytes()).collect(),
                    32 => data.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
                    _ => i64_bytes(&data),
                };
                PyTuple::new(py, [bitmap(&valid), PyBytes::new(py, &bytes).into_any().unbind()])
            }
            Column::Bool { valid, data } => {
                PyTuple::new(py, [bitmap(&valid), PyBytes::new(py, &pack_bits(&data)).into_any().unbind()])
            }
            Column::Str { valid, offsets, data } => {
                // int32 offsets when they fit (pa.string()), else the caller gets int64 ones (pa.large_string())
                let offset_bytes = if data.len() <= i32::MAX as usize {
                    offsets.iter().flat_map(|&o| (o as i32).to_le_bytes()).collect()
                } else {
                    i64_bytes(&offsets)
                };
                PyTuple::new(
                    py,
                    [
                        bitmap(&valid),
                        PyBytes::new(py, &offset_bytes).into_any().unbind(),
                        PyBytes::new(py, &data).into_any().unbind(),
                    ],
                )
            }
            Column::Null { len } => PyTuple::new(py, [len.into_pyobject(py)?.into_any().unbind()]),
            Column::Struct { valid, children, .. } => {
                let converted: Vec<Py<PyAny>> = children
                    .into_iter()
                    .map(|c| c.into_py(py).map(|t| t.into_any().unbind()))
                    .collect::<PyResult<_>>()?;
                PyTuple::new(py, [bitmap(&valid), PyList::new(py, converted)?.into_any().unbind()])
            }
        }
    }
}

fn pack_bits(flags: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; flags.len().div_ceil(8)];
    for (i, &f) in flags.iter().enumerate() {
        out[i >> 3] |= (f & 1) << (i & 7);
    }
    out
}

// --- a strict JSON reader ---------------------------------------------------------------------------------

/// Why a row is handed back: not an error to raise, only "let the Python path decide".
struct Reject;
type Parse<T> = Result<T, Reject>;

#[derive(Clone, Copy)]
enum Text {
    Span(usize, usize),
    Scratch,
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
    scratch: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn new(text: &'a [u8]) -> Self {
        Reader { text, at: 0, scratch: Vec::new() }
    }

    /// Whitespace, except raw line breaks: pyarrow.json reads lines, so a payload with one is the Python
    /// path's to normalise.
    fn skip_space(&mut self) {
        while self.at < self.text.len() && matches!(self.text[self.at], b' ' | b'\t') {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Parse<u8> {
        self.skip_space();
        self.text.get(self.at).copied().ok_or(Reject)
    }

    fn expect(&mut self, byte: u8) -> Parse<()> {
        if self.peek()? == byte {
            self.at += 1;
            Ok(())
        } else {
            Err(Reject)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Parse<()> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Reject)
        }
    }

    /// A string: its content as a span of the text when it has no escapes (the common case), else unescaped
    /// into `scratch`. Valid UTF-8, no lone surrogates, no raw control characters.
    fn string(&mut self) -> Parse<Text> {
        self.expect(b'"')?;
        let start = self.at;
        let mut ascii = true;
        let mut i = start;
        let t = self.text;
        loop {
            let b = *t.get(i).ok_or(Reject)?;
            if b == b'"' {
                if !ascii {
                    std::str::from_utf8(&t[start..i]).map_err(|_| Reject)?;
                }
                self.at = i + 1;
                return Ok(Text::Span(start, i));
            }
            if b == b'\\' {
                break;
            }
            if b < 0x20 {
                return Err(Reject);
            }
            ascii &= b < 0x80;
            i += 1;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&t[start..i]);
        self.at = i;
        loop {
            let rest = &self.text[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest).ok_or(Reject)?;
            let plain = &rest[..stop];
            if plain.iter().any(|&b| b < 0x20) {
                return Err(Reject);
            }
            self.scratch.extend_from_slice(plain);
            self.at += stop + 1;
            if rest[stop] == b'"' {
                break;
            }
            let escape = *self.text.get(self.at).ok_or(Reject)?;
            self.at += 1;
            match escape {
                b'"' => self.scratch.push(b'"'),
                b'\\' => self.scratch.push(b'\\'),
                b'/' => self.scratch.push(b'/'),
                b'b' => self.scratch.push(0x08),
                b'f' => self.scratch.push(0x0c),
                b'n' => self.scratch.push(b'\n'),
                b'r' => self.scratch.push(b'\r'),
                b't' => self.scratch.push(b'\t'),
                b'u' => {
                    let mut code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        if !self.text[self.at..].starts_with(b"\\u") {
                            return Err(Reject);
                        }
                        self.at += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(Reject);
                        }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    } else if (0xDC00..0xE000).contains(&code) {
                        return Err(Reject);
                    }
                    let c = char::from_u32(code).ok_or(Reject)?;
                    let mut buf = [0u8; 4];
                    self.scratch.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                _ => return Err(Reject),
            }
        }
        std::str::from_utf8(&self.scratch).map_err(|_| Reject)?;
        Ok(Text::Scratch)
    }

    fn content(&self, text: Text) -> &[u8] {
        match text {
            Text::Span(a, b) => &self.text[a..b],
            Text::Scratch => &self.scratch,
        }
    }

    fn hex4(&mut self) -> Parse<u32> {
        let digits = self.text.get(self.at..self.at + 4).ok_or(Reject)?;
        let text = std::str::from_utf8(digits).map_err(|_| Reject)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Reject);
        }
        self.at += 4;
        u32::from_str_radix(text, 16).map_err(|_| Reject)
    }

    /// A JSON number; returns its text span and whether it is a plain integer (no fraction, no exponent).
    fn number(&mut self) -> Parse<(usize, usize, bool)> {
        self.skip_space();
        let start = self.at;
        let t = self.text;
        let mut i = self.at;
        if t.get(i) == Some(&b'-') {
            i += 1;
        }
        match t.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while matches!(t.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => return Err(Reject),
        }
        let mut integer = true;
        if t.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            if !matches!(t.get(i), Some(b'0'..=b'9')) {
                return Err(Reject);
            }
            while matches!(t.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        if matches!(t.get(i), Some(b'e' | b'E')) {
            integer = false;
            i += 1;
            if matches!(t.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if !matches!(t.get(i), Some(b'0'..=b'9')) {
                return Err(Reject);
            }
            while matches!(t.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        self.at = i;
        Ok((start, i, integer))
    }

    /// Any JSON value, checked and skipped.
    fn skip_value(&mut self, depth: usize) -> Parse<()> {
        if depth > MAX_DEPTH {
            return Err(Reject);
        }
        match self.peek()? {
            b'{' => {
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.string()?;
                    self.expect(b':')?;
                    self.skip_value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Reject),
                    }
                }
            }
            b'[' => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Ok(());
                        }
                        _ => return Err(Reject),
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(|_| ()),
        }
    }

    /// One value into `column` (exactly one entry appended on success).
    fn value_into(&mut self, column: &mut Column, depth: usize) -> Parse<()> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            column.push_null();
            return Ok(());
        }
        match column {
            Column::Int { bits, valid, data } => {
                let (start, end, integer) = self.number()?;
                if !integer {
                    return Err(Reject);
                }
                let text = std::str::from_utf8(&self.text[start..end]).map_err(|_| Reject)?;
                let value: i64 = text.parse().map_err(|_| Reject)?;
                let limit = 1i128 << (*bits - 1);
                if (value as i128) < -limit || (value as i128) >= limit {
                    return Err(Reject);
                }
                valid.push(1);
                data.push(value);
            }
            Column::Bool { valid, data } => {
                let flag = match self.peek()? {
                    b't' => self.literal(b"true").map(|_| 1)?,
                    b'f' => self.literal(b"false").map(|_| 0)?,
                    _ => return Err(Reject),
                };
                valid.push(1);
                data.push(flag);
            }
            Column::Str { valid, offsets, data } => {
                if self.peek()? != b'"' {
                    return Err(Reject);
                }
                let text = self.string()?;
                data.extend_from_slice(self.content(text));
                valid.push(1);
                offsets.push(data.len() as i64);
            }
            Column::Null { .. } => return Err(Reject), // only null fits, and null was handled above
            Column::Struct { .. } => {
                if self.peek()? != b'{' {
                    return Err(Reject);
                }
                self.object_into(column, depth)?;
            }
        }
        Ok(())
    }

    /// An object into a struct column: known fields parsed, others checked and skipped, missing ones null.
    fn object_into(&mut self, column: &mut Column, depth: usize) -> Parse<()> {
        if depth > MAX_DEPTH {
            return Err(Reject);
        }
        let Column::Struct { valid, names, children } = column else { return Err(Reject) };
        self.expect(b'{')?;
        let mut seen = Seen::new(children.len());
        // Debezium writes a struct's fields in one order, the parse schema's: the field after the last one found
        // is tried first, so a key is usually one comparison.
        let mut next = 0usize;
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.string()?;
                let key = self.content(key);
                let found = match names.get(next) {
                    Some(name) if name.as_slice() == key => Some(next),
                    _ => names.iter().position(|name| name.as_slice() == key),
                };
                if let Some(k) = found {
                    next = k + 1;
                }
                self.expect(b':')?;
                match found {
                    Some(k) => {
                        if seen.get(k) {
                            return Err(Reject); // the same field twice: the Python path decides
                        }
                        seen.set(k);
                        self.value_into(&mut children[k], depth + 1)?;
                    }
                    None => self.skip_value(depth + 1)?,
                }
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Reject),
                }
            }
        }
        for (k, child) in children.iter_mut().enumerate() {
            if !seen.get(k) {
                child.push_null();
            }
        }
        valid.push(1);
        Ok(())
    }

    fn at_end(&mut self) -> bool {
        self.skip_space();
        self.at == self.text.len()
    }
}

fn read_i64s(bytes: &[u8]) -> Vec<i64> {
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// One payload object into the top-level struct; false (and nothing appended) when the row is rejected.
fn parse_row(text: &[u8], top: &mut Column, rows: usize) -> bool {
    let mut reader = Reader::new(text);
    let ok = reader.peek().ok() == Some(b'{') && reader.object_into(top, 0).is_ok() && reader.at_end();
    if !ok {
        top.truncate(rows);
    }
    ok
}

/// Parse payload texts against an explicit parse schema, as pyarrow.json would.
///
/// `values[rows[k]][starts[k] : -1]` is row k's payload object (rows and starts: int64 bytes); a None value
/// is a tombstone: a row of nulls. `spec` is ("struct", [(name, (kind, children)), ...]) with kinds int8,
/// int16, int32, int64, bool, string, null and struct. Returns (top-level struct as buffers, rejected row
/// positions): rejected rows are left out of the buffers.
#[pyfunction]
fn parse_payloads<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyList>,
    rows: &[u8],
    starts: &[u8],
    spec: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyTuple>, Vec<usize>)> {
    let rows = read_i64s(rows);
    let starts = read_i64s(starts);
    if rows.len() != starts.len() {
        return Err(PyValueError::new_err("rows and starts differ in length"));
    }
    let mut top = Column::from_spec(spec)?;
    if !matches!(top, Column::Struct { .. }) {
        return Err(PyValueError::new_err("the top-level spec must be a struct"));
    }
    top.reserve(rows.len());
    let items: Vec<Bound<'py, PyAny>> = rows
        .iter()
        .map(|&r| values.get_item(r as usize))
        .collect::<PyResult<_>>()?;
    // Slices of immutable bytes objects the caller's list keeps alive: safe to read without the GIL.
    let texts: Vec<Option<&[u8]>> = items
        .iter()
        .zip(&starts)
        .map(|(item, &start)| {
            if item.is_none() {
                Ok(None)
            } else {
                let value = as_bytes(item).ok_or_else(|| PyValueError::new_err("a value is not bytes"))?;
                let start = start as usize;
                if start >= value.len() {
                    return Err(PyValueError::new_err("a payload start is out of range"));
                }
                Ok(Some(&value[start..value.len() - 1]))
            }
        })
        .collect::<PyResult<_>>()?;
    let (top, rejected) = py.detach(move || {
        let mut rejected = Vec::new();
        let mut accepted = 0usize;
        for (k, text) in texts.iter().enumerate() {
            match text {
                None => {
                    // a tombstone: an empty payload, as `{}` would parse
                    if let Column::Struct { valid, children, .. } = &mut top {
                        children.iter_mut().for_each(Column::push_null);
                        valid.push(1);
                    }
                    accepted += 1;
                }
                Some(text) => {
                    if parse_row(text, &mut top, accepted) {
                        accepted += 1;
                    } else {
                        rejected.push(k);
                    }
                }
            }
        }
        (top, rejected)
    });
    Ok((top.into_py(py)?, rejected))
}

// --- keys ----------------------------------------------------------------------------------------------------

/// Each key's payload text, sliced verbatim, as one Arrow string column (`decode_envelope.slice_keys`), checked
/// the way `check_key_slices` checks: a JSON object, UTF-8, a top-level "_" only as null.
///
/// Returns (validity bitmap or None, int32 offsets, data, positions for the Python path). A position for the
/// Python path has an empty, valid text here, to be replaced.
#[pyfunction]
fn slice_keys<'py>(
    py: Python<'py>,
    keys: &Bound<'py, PyList>,
) -> PyResult<(Py<PyAny>, Bound<'py, PyBytes>, Bound<'py, PyBytes>, Vec<usize>)> {
    let mut valid = Vec::with_capacity(keys.len());
    let mut offsets: Vec<i64> = vec![0];
    let mut data = Vec::new();
    let mut for_python = Vec::new();
    let mut head: Option<Vec<u8>> = None;
    let mut check = Column::Struct { valid: vec![], names: vec![b"_".to_vec()], children: vec![Column::Null { len: 0 }] };
    for (i, item) in keys.iter().enumerate() {
        if item.is_none() {
            valid.push(0);
            offsets.push(data.len() as i64);
            continue;
        }
        valid.push(1);
        let text = as_bytes(&item).and_then(|key| {
            let start = head.as_deref().and_then(|h| payload_after(key, h)).or_else(|| {
                let start = locate(key)?;
                head = Some(key[..start].to_vec());
                Some(start)
            })?;
            Some(&key[start..key.len() - 1])
        });
        match text {
            Some(text) if parse_row(text, &mut check, 0) => {
                check.truncate(0);
                data.extend_from_slice(text);
            }
            _ => for_python.push(i),
        }
        offsets.push(data.len() as i64);
    }
    if data.len() > i32::MAX as usize {
        return Err(PyValueError::new_err("key texts exceed 2 GiB"));
    }
    let bitmap = if valid.iter().all(|&v| v == 1) {
        py.None()
    } else {
        PyBytes::new(py, &pack_bits(&valid)).into_any().unbind()
    };
    let offsets: Vec<i32> = offsets.iter().map(|&o| o as i32).collect();
    Ok((bitmap, PyBytes::new(py, &i32_bytes(&offsets)), PyBytes::new(py, &data), for_python))
}

#[pymodule]
fn cardo_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(split_envelopes, m)?)?;
    m.add_function(wrap_pyfunction!(parse_payloads, m)?)?;
    m.add_function(wrap_pyfunction!(slice_keys, m)?)?;
    Ok(())
}
