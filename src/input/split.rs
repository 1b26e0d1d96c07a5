//! Cutting a stream of alert JSON into units (an NDJSON line, an array element, a whole
//! object) without holding more than one unit in memory: the buffer keeps the unit being
//! scanned and one read ahead, so it is bounded by `max_alert_bytes` whatever the input size.
//!
//! Which shape the input has is decided from its first lines, as the whole-input decoder did:
//! NDJSON when the first line is a whole JSON value and more lines follow (or, the first line
//! being broken, the next ones are whole objects), a document otherwise. A document is scanned
//! structurally (depth, strings, escapes; the grammar is serde_json's job later, per unit): a
//! top-level array's elements are units, and so are the elements of a top-level object's
//! `"value": [...]` (an API page, kept out of memory); any other top-level object is one unit.
//! NDJSON is cut at line ends, so a broken line costs that line only.

use std::io::{self, Read};

use super::{Limits, Problem};
use crate::pool::BufferPool;

/// Bytes asked of the source per read.
const READ_SIZE: usize = 256 * 1024;
/// A chunk closes once it holds this many bytes of units, or this many units.
const CHUNK_BYTES: usize = 256 * 1024;
const CHUNK_UNITS: usize = 1024;
/// How far the shape detection looks for the first three lines.
const PEEK_LINES: usize = 3;
/// Chunk buffers kept for the next chunks: as many as can be in flight at once (read ahead,
/// decoding, waiting to be written) on two cores.
const CHUNKS_KEPT: usize = 8;

/// Whole units of the input, in input order, owning their bytes: what one worker decodes.
#[derive(Debug, Default)]
pub struct Chunk {
    pub(super) text: Vec<u8>,
    pub(super) units: Vec<Unit>,
    /// Where `text` goes back to when the chunk is dropped. A fresh 270 KiB buffer per chunk
    /// was memory glibc had given back to the kernel: every 4 KiB copied into it was a page
    /// fault (see `crate::pool`).
    pool: Option<BufferPool>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(std::mem::take(&mut self.text));
        }
    }
}

#[derive(Debug)]
pub(super) struct Unit {
    /// Line of the input the unit starts on.
    pub line: usize,
    /// Its bytes in `text` (empty for a problem).
    pub start: usize,
    pub end: usize,
    /// Something the splitter refused (too large, not an object, broken structure).
    pub problem: Option<String>,
}

impl Chunk {
    /// Bytes of input held.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Units (alerts or pages, and problems) held.
    pub fn units(&self) -> usize {
        self.units.len()
    }

    fn full(&self) -> bool {
        self.text.len() >= CHUNK_BYTES || self.units.len() >= CHUNK_UNITS
    }

    fn push(&mut self, line: usize, bytes: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        self.units.push(Unit {
            line,
            start,
            end: self.text.len(),
            problem: None,
        });
    }

    fn problem(&mut self, line: usize, message: String) {
        let at = self.text.len();
        self.units.push(Unit {
            line,
            start: at,
            end: at,
            problem: Some(message),
        });
    }

    /// The problems the splitter found, as the decoder reports them.
    pub(super) fn unit_problem(unit: &Unit) -> Option<Problem> {
        unit.problem.as_ref().map(|m| Problem {
            line: unit.line,
            message: m.clone(),
            rejected: true,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    Lines,
    Document,
    Done,
}

/// A unit being scanned: where it starts in the stream, its line, its first byte, and
/// whether its bytes are still kept (not once it is known to be too large, or to be a page).
#[derive(Debug, Clone, Copy)]
struct Open {
    start: usize,
    line: usize,
    first: u8,
    kept: bool,
}

/// The structural scan of a document, resumable at any byte.
#[derive(Debug, Default)]
struct Doc {
    depth: usize,
    in_string: bool,
    escape: bool,
    /// The top-level value is an object (keys at depth 1 are watched for `"value"`).
    top_object: bool,
    /// The depth directly inside the array whose elements are alerts: 1 for a top-level
    /// array, 2 for a page's `value`.
    elements_at: Option<usize>,
    element: Option<Open>,
    /// The top-level object, until it turns out to be a page.
    object: Option<Open>,
    /// Stream offset of a string directly inside the top-level object being read.
    key_start: Option<usize>,
    last_string_is_value: bool,
    /// Just after `"value":` in the top-level object.
    value_key: bool,
    /// Skipping the rest of a line of bytes that cannot start a document.
    garbage: bool,
}

/// Reads units from `R`, a chunk at a time.
pub struct Reader<R> {
    src: R,
    limits: Limits,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    base: usize,
    /// Next byte to look at, in `buf`.
    pos: usize,
    /// Line of `buf[pos]`.
    line: usize,
    eof: bool,
    mode: Mode,
    doc: Doc,
    /// Lines: an over-long line being skipped (its line and the bytes seen).
    skipping: Option<(usize, usize)>,
    scratch: Vec<u8>,
    /// The last read returned less than asked: the source has nothing more for now (a pipe),
    /// so a chunk with units goes out rather than waiting to fill up.
    short_read: bool,
    /// A step stopped for that reason.
    yield_chunk: bool,
    /// The buffers of dropped chunks.
    chunk_buffers: BufferPool,
}

impl<R: Read> Reader<R> {
    pub fn new(src: R, limits: Limits) -> Self {
        Reader {
            src,
            limits,
            buf: Vec::with_capacity(READ_SIZE),
            base: 0,
            pos: 0,
            line: 1,
            eof: false,
            mode: Mode::Start,
            doc: Doc::default(),
            skipping: None,
            scratch: vec![0; READ_SIZE],
            short_read: false,
            yield_chunk: false,
            chunk_buffers: BufferPool::new(CHUNKS_KEPT),
        }
    }

    /// The next units, or `None` at the end of the input.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        // Sized for a full chunk, so that it is not grown (copied) as units come.
        let mut chunk = Chunk {
            text: self.chunk_buffers.take(CHUNK_BYTES + 16 * 1024),
            units: Vec::new(),
            pool: Some(self.chunk_buffers.clone()),
        };
        while !chunk.full() {
            let more = match self.mode {
                Mode::Start => {
                    self.start()?;
                    true
                }
                Mode::Lines => self.lines(&mut chunk)?,
                Mode::Document => self.document(&mut chunk)?,
                Mode::Done => false,
            };
            if !more {
                self.mode = Mode::Done;
                break;
            }
            if std::mem::take(&mut self.yield_chunk) {
                break;
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    /// The earliest byte still needed.
    fn keep_from(&self) -> usize {
        let abs = self.base + self.pos;
        let d = &self.doc;
        [d.element, d.object]
            .into_iter()
            .flatten()
            .filter(|o| o.kept)
            .map(|o| o.start)
            .chain(d.key_start)
            .fold(abs, usize::min)
    }

    /// Reads more, first dropping what is no longer needed. False at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let abs = self.base + self.pos;
        let max = self.limits.max_alert_bytes;
        // A unit past the limit is no longer kept: the buffer stays bounded.
        let d = &mut self.doc;
        for open in [&mut d.element, &mut d.object].into_iter().flatten() {
            if open.kept && abs - open.start > max {
                open.kept = false;
            }
        }
        // A string longer than "value" is not that key.
        if d.key_start.is_some_and(|k| abs - k > 8) {
            d.key_start = None;
            d.last_string_is_value = false;
        }
        let keep = self.keep_from() - self.base;
        if keep > 0 {
            self.buf.drain(..keep);
            self.base += keep;
            self.pos -= keep;
        }
        // Into a buffer zeroed once, then appended: a short read (a pipe) costs its own size.
        let n = loop {
            match self.src.read(&mut self.scratch) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.buf.extend_from_slice(&self.scratch[..n]);
        self.short_read = n < READ_SIZE;
        if n == 0 {
            self.eof = true;
        }
        Ok(n > 0)
    }

    /// Skips a byte-order mark and leading white space, then decides the shape.
    fn start(&mut self) -> io::Result<()> {
        while self.buf.len() < 3 && self.fill()? {}
        if self.buf.starts_with(b"\xEF\xBB\xBF") {
            self.pos = 3;
        }
        loop {
            while let Some(&b) = self.buf.get(self.pos) {
                if !b.is_ascii_whitespace() {
                    break;
                }
                if b == b'\n' {
                    self.line += 1;
                }
                self.pos += 1;
            }
            if self.pos < self.buf.len() {
                break;
            }
            if !self.fill()? {
                self.mode = Mode::Done;
                return Ok(());
            }
        }
        self.mode = if self.buf[self.pos] == b'{' && self.first_lines_are_ndjson()? {
            Mode::Lines
        } else {
            Mode::Document
        };
        Ok(())
    }

    /// NDJSON rather than one document: the first line is a whole JSON object, or it is
    /// broken and the next (up to two) are whole objects. A first line that is a whole object
    /// decodes the same either way, so no more is read to decide (a slow pipe's first alert
    /// goes out at once).
    fn first_lines_are_ndjson(&mut self) -> io::Result<bool> {
        let max = self.limits.max_alert_bytes;
        loop {
            let text = &self.buf[self.pos..];
            let lines = non_empty_lines(text, self.eof);
            let whole = |&(s, e): &(usize, usize)| {
                let line = trim(&text[s..e]);
                line.first() == Some(&b'{')
                    && serde_json::from_str::<serde::de::IgnoredAny>(&String::from_utf8_lossy(line))
                        .is_ok()
            };
            if lines.first().is_some_and(whole) {
                return Ok(true);
            }
            if lines.len() >= PEEK_LINES || self.eof || text.len() > max {
                return Ok(lines.len() > 1 && lines[1..].iter().all(whole));
            }
            // `pos` does not move, so the line ranges (relative to it) stay valid.
            self.fill()?;
        }
    }

    /// NDJSON: one unit per line. False at the end of the input.
    fn lines(&mut self, chunk: &mut Chunk) -> io::Result<bool> {
        let max = self.limits.max_alert_bytes;
        while !chunk.full() {
            let rest = self.buf.len() - self.pos;
            let newline = memchr::memchr(b'\n', &self.buf[self.pos..]);
            if let Some((line, seen)) = self.skipping {
                match newline {
                    Some(i) => {
                        chunk.problem(line, too_long("line", seen + i, max));
                        self.skipping = None;
                        self.pos += i + 1;
                        self.line += 1;
                    }
                    None if self.waiting(chunk) => return Ok(true),
                    None => {
                        self.skipping = Some((line, seen + rest));
                        self.pos = self.buf.len();
                        if !self.fill()? {
                            let (line, seen) = self.skipping.take().unwrap_or((line, seen));
                            chunk.problem(line, too_long("line", seen, max));
                            return Ok(false);
                        }
                    }
                }
                continue;
            }
            match newline {
                Some(i) => {
                    let (s, e) = (self.pos, self.pos + i);
                    self.line_unit(chunk, s, e);
                    self.pos = e + 1;
                    self.line += 1;
                }
                None if self.eof => {
                    let (s, e) = (self.pos, self.buf.len());
                    self.line_unit(chunk, s, e);
                    self.pos = e;
                    return Ok(false);
                }
                None if rest > max => {
                    self.skipping = Some((self.line, rest));
                    self.pos = self.buf.len();
                }
                None if self.waiting(chunk) => return Ok(true),
                None => {
                    self.fill()?;
                }
            }
        }
        Ok(true)
    }

    /// The chunk should go out before the next read, which may block.
    fn waiting(&mut self, chunk: &Chunk) -> bool {
        self.yield_chunk = self.short_read && !chunk.is_empty();
        self.yield_chunk
    }

    fn line_unit(&self, chunk: &mut Chunk, s: usize, e: usize) {
        let max = self.limits.max_alert_bytes;
        let line = trim(&self.buf[s..e]);
        if line.is_empty() {
        } else if line.len() > max {
            chunk.problem(self.line, too_long("line", line.len(), max));
        } else if line[0] != b'{' {
            chunk.problem(self.line, "expected an alert object".to_string());
        } else {
            chunk.push(self.line, line);
        }
    }

    /// A document: the structural scan. False at the end of the input.
    fn document(&mut self, chunk: &mut Chunk) -> io::Result<bool> {
        while !chunk.full() {
            if self.pos >= self.buf.len() {
                if self.waiting(chunk) {
                    return Ok(true);
                }
                if !self.fill()? {
                    self.end_of_document(chunk);
                    return Ok(false);
                }
                continue;
            }
            if self.doc.in_string {
                self.string();
                continue;
            }
            let b = self.buf[self.pos];
            let at = self.base + self.pos;
            self.pos += 1;
            if self.doc.garbage {
                if b == b'\n' {
                    self.doc.garbage = false;
                    self.line += 1;
                }
                continue;
            }
            match b {
                b'\n' => {
                    self.line += 1;
                    continue;
                }
                b' ' | b'\t' | b'\r' => continue,
                _ => {}
            }
            let line = self.line;
            let d = &mut self.doc;
            if Some(d.depth) == d.elements_at && d.element.is_none() && b != b',' && b != b']' {
                d.element = Some(Open {
                    start: at,
                    line,
                    first: b,
                    kept: true,
                });
            }
            let in_top_object = d.depth == 1 && d.top_object;
            match b {
                b'"' => {
                    d.in_string = true;
                    if in_top_object {
                        d.key_start = Some(at + 1);
                    }
                }
                b':' if in_top_object => d.value_key = d.last_string_is_value,
                b',' => {
                    d.value_key = false;
                    if Some(d.depth) == d.elements_at {
                        self.end_element(chunk, at);
                    }
                }
                b'{' | b'[' => {
                    if d.depth == 0 {
                        d.top_object = b == b'{';
                        if d.top_object {
                            d.object = Some(Open {
                                start: at,
                                line,
                                first: b,
                                kept: true,
                            });
                        } else {
                            d.elements_at = Some(1);
                        }
                    } else if in_top_object && b == b'[' && d.value_key && d.elements_at.is_none() {
                        // An API page: its alerts are the units, the page around them is not
                        // kept (`@odata.context`, `@odata.nextLink`).
                        d.elements_at = Some(2);
                        d.object = None;
                    }
                    d.value_key = false;
                    d.depth += 1;
                }
                b'}' | b']' => {
                    if d.depth == 0 {
                        chunk.problem(line, format!("invalid JSON: unexpected `{}`", b as char));
                        continue;
                    }
                    if Some(d.depth) == d.elements_at {
                        self.end_element(chunk, at);
                        self.doc.elements_at = None;
                    }
                    let d = &mut self.doc;
                    d.depth -= 1;
                    if d.depth == 0 {
                        if let Some(object) = d.object.take() {
                            self.unit(chunk, object, at + 1, "alert");
                        }
                        self.doc = Doc::default();
                    }
                }
                _ if d.depth == 0 => {
                    chunk.problem(line, "expected an alert object, a JSON array of alerts, or an API page {\"value\": [...]}".to_string());
                    d.garbage = true;
                }
                _ => d.value_key = false,
            }
        }
        Ok(true)
    }

    /// Inside a string: to its end, an escape, or a line end, whichever comes first.
    fn string(&mut self) {
        let d = &mut self.doc;
        if d.escape {
            d.escape = false;
            self.pos += 1;
            return;
        }
        match memchr::memchr3(b'"', b'\\', b'\n', &self.buf[self.pos..]) {
            None => self.pos = self.buf.len(),
            Some(i) => {
                let at = self.pos + i;
                match self.buf[at] {
                    b'\\' => d.escape = true,
                    b'\n' => self.line += 1,
                    _ => {
                        d.in_string = false;
                        if let Some(k) = d.key_start.take() {
                            d.last_string_is_value = &self.buf[k - self.base..at] == b"value";
                        }
                    }
                }
                self.pos = at + 1;
            }
        }
    }

    /// The element being scanned ends before `at` (a comma or the array's end).
    fn end_element(&mut self, chunk: &mut Chunk, at: usize) {
        if let Some(element) = self.doc.element.take() {
            self.unit(chunk, element, at, "alert");
        }
    }

    /// A unit from `open` to `end` (stream offsets).
    fn unit(&self, chunk: &mut Chunk, open: Open, end: usize, what: &str) {
        let max = self.limits.max_alert_bytes;
        if !open.kept || end - open.start > max {
            chunk.problem(open.line, too_long(what, end - open.start, max));
        } else if open.first != b'{' {
            chunk.problem(open.line, "expected an alert object".to_string());
        } else {
            let bytes = &self.buf[open.start - self.base..end - self.base];
            chunk.push(open.line, trim(bytes));
        }
    }

    /// The input ended: what was open is a unit as far as it went (serde_json then says what
    /// is missing), and an unclosed list is a problem of its own.
    fn end_of_document(&mut self, chunk: &mut Chunk) {
        let end = self.base + self.buf.len();
        let doc = std::mem::take(&mut self.doc);
        if let Some(element) = doc.element {
            self.unit(chunk, element, end, "alert");
        }
        if let Some(object) = doc.object {
            self.unit(chunk, object, end, "alert");
        } else if doc.depth > 0 {
            chunk.problem(
                self.line,
                "invalid JSON: the input ends before the document does".to_string(),
            );
        }
    }
}

fn too_long(what: &str, size: usize, max: usize) -> String {
    format!("{what} of {size} bytes is larger than the limit of {max} bytes")
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// The first few non-empty lines of `text` as ranges (the last one only at the end of the
/// input, where it needs no line end).
fn non_empty_lines(text: &[u8], eof: bool) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut from = 0;
    while lines.len() < PEEK_LINES {
        let end = match memchr::memchr(b'\n', &text[from..]) {
            Some(i) => from + i,
            None if eof && from < text.len() => text.len(),
            None => break,
        };
        if !trim(&text[from..end]).is_empty() {
            lines.push((from, end));
        }
        from = end + 1;
        if from > text.len() {
            break;
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Decoded;

    /// A source that hands out its bytes a few at a time, so that every unit, key and escape
    /// is cut across reads somewhere.
    struct Trickle<'a> {
        bytes: &'a [u8],
        sizes: std::iter::Cycle<std::slice::Iter<'a, usize>>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = (*self.sizes.next().unwrap_or(&1))
                .min(out.len())
                .min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// What decoding gives, as text: one line per alert (line, id) or problem.
    fn outcome(reader: &mut Reader<impl Read>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().expect("read") {
            chunk.decode(&mut |d| match d {
                Decoded::Alert(line, a) => out.push(format!("{line}: alert {}", a.id)),
                Decoded::Problem(p) => {
                    out.push(format!("{}: {} {}", p.line, p.rejected, p.message))
                }
            });
        }
        out
    }

    fn whole(input: &[u8], limits: Limits) -> Vec<String> {
        outcome(&mut Reader::new(input, limits))
    }

    fn trickled(input: &[u8], limits: Limits, sizes: &[usize]) -> Vec<String> {
        let src = Trickle {
            bytes: input,
            sizes: sizes.iter().cycle(),
        };
        outcome(&mut Reader::new(src, limits))
    }

    const A: &str = r#"{"id":"a1","title":"t \"q\" \\","severity":"low"}"#;
    const B: &str = r#"{"id":"b2","title":"{[,]}","severity":"high"}"#;

    fn inputs() -> Vec<(&'static str, String)> {
        let data = |name: &str| {
            let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
            String::from_utf8_lossy(&std::fs::read(path).expect("test data")).into_owned()
        };
        vec![
            ("ndjson", format!("{A}\n\n{B}\r\n{A}")),
            ("ndjson, broken first line", format!("{{\"id\": broken\n{A}\n{B}\n")),
            ("ndjson with a page line", format!("{A}\n{{\"value\":[{B},{A}]}}\n{{\"value\":[]}}\n")),
            ("array", format!("\u{FEFF} [\n {A} ,\n\n{B}\n]\n")),
            ("pretty page", format!("{{\n \"@odata.context\": \"x,[{{\",\n \"value\": [\n  {A},\n  {B}\n ],\n \"@odata.nextLink\": \"y\"\n}}")),
            ("page on one line", format!("{{\"value\":[{A},{B}]}}")),
            ("single alert", "{\n \"id\": \"s\",\n \"title\": \"x\"\n}\n".to_string()),
            ("truncated array", format!("[{A},\n{B}")),
            ("truncated object", "{\n\"id\": \"x\",\n\"title\": \"y".to_string()),
            ("non-objects", format!("[1, \"s\", [{A}], {A}, null]")),
            ("top-level garbage", format!("42\n{A}\n")),
            ("stray closer", format!("]{A}")),
            ("two documents", format!("[{A}]\n[{B}]")),
            ("page with alerts named value", "{\"value\":[{\"id\":\"v\",\"title\":\"t\",\"value\":[1]}]}".to_string()),
            ("mde page", data("mde-alerts-list-docs-expand-evidence.json")),
            ("graph page", data("graph-alerts-v2-list-docs.json")),
            ("edge ndjson", data("mde-alerts-edge-cases.ndjson")),
            ("single graph alert", data("realistic-graph-alert.json")),
        ]
    }

    #[test]
    fn reads_cut_anywhere_change_nothing() {
        let limits = Limits::default();
        for (name, input) in inputs() {
            let expected = whole(input.as_bytes(), limits);
            assert!(!expected.is_empty(), "{name}");
            // One byte a read for the small ones (each read costs a buffer's worth here).
            let tiny: &[usize] = if input.len() < 20_000 { &[1] } else { &[61, 3] };
            for sizes in [tiny, &[2, 3, 5, 7], &[64, 1, 4093]] {
                assert_eq!(
                    trickled(input.as_bytes(), limits, sizes),
                    expected,
                    "{name}, reads of {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn shapes_give_these_units() {
        let limits = Limits::default();
        let get = |name: &str| {
            let input = inputs()
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect(name)
                .1;
            whole(input.as_bytes(), limits)
        };
        assert_eq!(get("ndjson"), ["1: alert a1", "3: alert b2", "4: alert a1"]);
        assert_eq!(
            get("ndjson, broken first line"),
            [
                "1: true invalid JSON: expected value",
                "2: alert a1",
                "3: alert b2"
            ]
        );
        assert_eq!(
            get("ndjson with a page line"),
            ["1: alert a1", "2: alert b2", "2: alert a1"]
        );
        assert_eq!(get("array"), ["2: alert a1", "4: alert b2"]);
        assert_eq!(get("pretty page"), ["4: alert a1", "5: alert b2"]);
        assert_eq!(get("page on one line"), ["1: alert a1", "1: alert b2"]);
        assert_eq!(get("single alert"), ["1: alert s"]);
        assert_eq!(
            get("truncated array"),
            [
                "1: alert a1",
                "2: alert b2",
                "2: true invalid JSON: the input ends before the document does"
            ]
        );
        assert_eq!(
            get("truncated object"),
            ["3: true invalid JSON: EOF while parsing a string"]
        );
        let not_object = "1: true expected an alert object";
        assert_eq!(
            get("non-objects"),
            [
                not_object,
                not_object,
                not_object,
                "1: alert a1",
                not_object
            ]
        );
        assert_eq!(
            get("top-level garbage"),
            [
                "1: true expected an alert object, a JSON array of alerts, or an API page {\"value\": [...]}",
                "2: alert a1"
            ]
        );
        assert_eq!(
            get("stray closer"),
            ["1: true invalid JSON: unexpected `]`", "1: alert a1"]
        );
        assert_eq!(get("two documents"), ["1: alert a1", "2: alert b2"]);
        assert_eq!(get("page with alerts named value"), ["1: alert v"]);
    }

    /// A page of many alerts, pretty-printed as an API client writes it.
    fn big_page(n: usize) -> String {
        let mut s = String::from("{\n  \"@odata.context\": \"https://graph.microsoft.com/v1.0/$metadata#alerts\",\n  \"value\": [\n");
        for i in 0..n {
            if i > 0 {
                s.push_str(",\n");
            }
            s.push_str(&format!(
                "    {{\n      \"id\": \"da{i:08}\",\n      \"title\": \"{}\",\n      \"severity\": \"medium\"\n    }}",
                "x".repeat(200)
            ));
        }
        s.push_str("\n  ]\n}\n");
        s
    }

    #[test]
    fn a_dropped_chunks_buffer_holds_the_next_chunk() {
        let line = format!("{{\"id\":\"x\",\"title\":\"{}\"}}\n", "y".repeat(1000));
        let input = line.repeat(3 * CHUNK_BYTES / line.len());
        let mut reader = Reader::new(input.as_bytes(), Limits::default());
        let first = reader.next_chunk().expect("read").expect("a chunk");
        let at = first.text.as_ptr();
        let second = reader.next_chunk().expect("read").expect("a chunk");
        assert_ne!(second.text.as_ptr(), at, "the first is still held");
        drop(first);
        let third = reader.next_chunk().expect("read").expect("a chunk");
        assert_eq!(third.text.as_ptr(), at, "the first chunk's allocation");
        assert!(third.units() > 0 && third.text.starts_with(line.trim_end().as_bytes()));
    }

    #[test]
    fn the_buffer_does_not_grow_with_the_input() {
        let n = 20_000;
        let page = big_page(n);
        assert!(page.len() > 4_000_000);
        let limits = Limits {
            max_alert_bytes: 64 * 1024,
        };
        for input in [page.clone(), {
            let mut ndjson = String::new();
            for i in 0..n {
                ndjson.push_str(&format!(
                    "{{\"id\":\"n{i}\",\"title\":\"{}\"}}\n",
                    "y".repeat(200)
                ));
            }
            ndjson
        }] {
            let mut reader = Reader::new(input.as_bytes(), limits);
            let mut alerts = 0;
            let mut most = 0;
            while let Some(chunk) = reader.next_chunk().expect("read") {
                most = most.max(reader.buf.capacity()).max(chunk.text.capacity());
                chunk.decode(&mut |d| {
                    if let Decoded::Alert(..) = d {
                        alerts += 1
                    }
                });
            }
            assert_eq!(alerts, n);
            // A read ahead, a unit and a chunk: not the input.
            assert!(
                most <= 2 * READ_SIZE + CHUNK_BYTES + limits.max_alert_bytes,
                "{most}"
            );
        }
    }

    #[test]
    fn a_unit_larger_than_the_limit_is_skipped_without_being_kept() {
        let limits = Limits {
            max_alert_bytes: 1000,
        };
        let huge = format!(
            "{{\"id\":\"big\",\"title\":\"{}\"}}",
            "z".repeat(3 * READ_SIZE)
        );
        let array = format!("[{A},\n{huge},\n{B}]");
        let ndjson = format!("{A}\n{huge}\n{B}\n");
        let object = format!("{huge}\n");
        let too_big = |what: &str, line: usize| {
            format!(
                "{line}: true {what} of {} bytes is larger than the limit of 1000 bytes",
                huge.len()
            )
        };
        assert_eq!(
            whole(array.as_bytes(), limits),
            [
                "1: alert a1".to_string(),
                too_big("alert", 2),
                "3: alert b2".into()
            ]
        );
        assert_eq!(
            trickled(ndjson.as_bytes(), limits, &[100_000]),
            [
                "1: alert a1".to_string(),
                too_big("line", 2),
                "3: alert b2".into()
            ]
        );
        assert_eq!(whole(object.as_bytes(), limits), [too_big("alert", 1)]);
        let mut reader = Reader::new(array.as_bytes(), limits);
        while reader.next_chunk().expect("read").is_some() {
            assert!(
                reader.buf.capacity() <= 3 * READ_SIZE,
                "{}",
                reader.buf.capacity()
            );
        }
    }

    /// `tail -f | send`: what has arrived goes out without waiting for a chunk to fill.
    #[test]
    fn a_pipe_with_nothing_more_for_now_gets_its_chunk_out() {
        struct Pipe(Vec<Vec<u8>>);
        impl Read for Pipe {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let Some(next) = self.0.pop() else {
                    return Err(io::Error::other("nothing more yet"));
                };
                out[..next.len()].copy_from_slice(&next);
                Ok(next.len())
            }
        }
        for first in [format!("{A}\n"), format!("[{A},")] {
            let mut reader = Reader::new(Pipe(vec![first.into_bytes()]), Limits::default());
            let chunk = reader.next_chunk().expect("a chunk").expect("not the end");
            assert_eq!(chunk.units.len(), 1);
            assert!(reader.next_chunk().is_err());
        }
    }

    #[test]
    fn an_error_of_the_source_is_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let e = Reader::new(Broken, Limits::default())
            .next_chunk()
            .expect_err("an error");
        assert_eq!(e.to_string(), "disk on fire");
    }
}
