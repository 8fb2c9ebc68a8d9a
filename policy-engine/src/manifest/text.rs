//! Where things are in a manifest's text: YAML documents with the line each
//! starts on, and the line of a field given its path (`spec.ingress[0]`),
//! so every message can say `file:line`.
//!
//! The parsers give values without positions; the line of a field is found
//! again in the text by following its path key by key (block and flow
//! style, YAML and JSON). Where the text cannot be followed (an unusual
//! layout) the line of the closest enclosing field found is used.

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Formats a path the way the API server does: `spec.ingress[0].from`.
pub fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses `spec.ingress[0].from[1..2]` back into segments (a range keeps
/// its first index).
pub fn parse_path(field: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut key = String::new();
    let mut chars = field.chars().peekable();
    let flush = |key: &mut String, out: &mut Vec<Segment>| {
        if !key.is_empty() {
            out.push(Segment::Key(std::mem::take(key)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush(&mut key, &mut out),
            '[' => {
                flush(&mut key, &mut out);
                let mut inside = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inside.push(c);
                }
                let digits: String = inside.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(i) = digits.parse() {
                    out.push(Segment::Index(i));
                }
            }
            c => key.push(c),
        }
    }
    flush(&mut key, &mut out);
    out
}

/// One YAML document of a file.
#[derive(Clone, Copy, Debug)]
pub struct Document<'a> {
    /// Its text.
    pub text: &'a str,
    /// The 1-based line of the file its text starts on.
    pub first_line: usize,
    /// The byte offset of its text in the file.
    pub offset: usize,
}

impl Document<'_> {
    /// The 1-based file line of byte offset `pos` of the document.
    pub fn line_at(&self, pos: usize) -> usize {
        let pos = pos.min(self.text.len());
        self.first_line
            + self.text.as_bytes()[..pos]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
    }

    /// The byte offset where the document's content starts (first line that
    /// is neither blank nor a comment nor a `---` marker).
    pub fn content_start(&self) -> usize {
        let mut pos = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            if !(t.is_empty() || t.starts_with('#') || t == "---") {
                return pos;
            }
            pos += line.len();
        }
        0
    }

    /// The file line of `path` within the object starting at byte `anchor`.
    pub fn line_of(&self, anchor: usize, path: &[Segment]) -> usize {
        self.line_at(locate(self.text, anchor, path))
    }
}

/// Splits a multi-document YAML text at its `---` (and `...`) markers.
pub fn split_yaml(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut start, mut start_line) = (0usize, 1usize);
    let (mut pos, mut line_no) = (0usize, 1usize);
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        let marker = t == "---" || t.starts_with("--- ") || t.starts_with("---\t") || t == "...";
        if marker {
            docs.push(Document {
                text: &text[start..pos],
                first_line: start_line,
                offset: start,
            });
            if t.len() > 3 && t != "..." {
                // `--- {kind: Pod}`: the content starts on the marker line.
                start = pos;
                start_line = line_no;
            } else {
                start = pos + line.len();
                start_line = line_no + 1;
            }
        }
        pos += line.len();
        line_no += 1;
    }
    docs.push(Document {
        text: &text[start..],
        first_line: start_line,
        offset: start,
    });
    docs.retain(|d| {
        d.text
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with('#') && l.trim() != "---")
    });
    docs
}

/// The byte offset of `path` in `text`, searching from `from`.
fn locate(text: &str, from: usize, path: &[Segment]) -> usize {
    let mut cursor = from;
    let mut after_key = from;
    for seg in path {
        match seg {
            Segment::Key(k) => match find_key(text, after_key, k) {
                Some((at, value)) => {
                    cursor = at;
                    after_key = value;
                }
                None => return cursor,
            },
            Segment::Index(i) => match find_item(text, after_key, *i) {
                Some(at) => {
                    cursor = at;
                    after_key = at;
                }
                None => return cursor,
            },
        }
    }
    cursor
}

/// The next `key:` (bare or quoted) at or after `from`: (offset of the
/// key, offset just past its colon).
fn find_key(text: &str, from: usize, key: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut search = from;
    while let Some(rel) = text.get(search..)?.find(key) {
        let at = search + rel;
        search = at + 1;
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let quote = matches!(before, Some(b'"' | b'\''));
        let start_ok = match before {
            None => true,
            Some(b) => b.is_ascii_whitespace() || matches!(b, b'{' | b',' | b'-' | b'"' | b'\''),
        };
        if !start_ok {
            continue;
        }
        let mut end = at + key.len();
        if quote {
            if bytes.get(end) != before.as_ref() {
                continue;
            }
            end += 1;
        }
        while bytes.get(end).is_some_and(|b| *b == b' ' || *b == b'\t') {
            end += 1;
        }
        if bytes.get(end) == Some(&b':') {
            let key_at = if quote { at - 1 } else { at };
            return Some((key_at, end + 1));
        }
    }
    None
}

/// Item `index` of the sequence that starts right after `from` (the
/// position past a key's colon), block or flow style.
fn find_item(text: &str, from: usize, index: usize) -> Option<usize> {
    let rest = text.get(from..)?;
    let skip = rest.len() - rest.trim_start().len();
    let start = from + skip;
    if text.as_bytes().get(start) == Some(&b'[') {
        return find_flow_item(text, start, index);
    }
    // Block style: lines `- item` at the indentation of the first one.
    let mut pos = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let mut indent = None;
    let mut seen = 0usize;
    for line in text[pos..].split_inclusive('\n') {
        let here = pos;
        pos += line.len();
        let body = line.trim_start_matches(' ');
        let ind = line.len() - body.len();
        let t = body.trim_end();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let is_item = t == "-" || t.starts_with("- ");
        let first = *indent.get_or_insert(ind);
        if !is_item && ind <= first || ind < first {
            return None;
        }
        if ind == first && is_item {
            if seen == index {
                return Some(here + ind + if t == "-" { 1 } else { 2 });
            }
            seen += 1;
        }
    }
    None
}

/// Item `index` of the flow sequence whose `[` is at `open`.
fn find_flow_item(text: &str, open: usize, index: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut seen) = (0usize, 0usize);
    let mut in_str: Option<u8> = None;
    let mut i = open;
    let next_item = |mut j: usize| {
        while bytes.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
            j += 1;
        }
        j
    };
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = in_str {
            if b == b'\\' && q == b'"' {
                i += 1;
            } else if b == q {
                in_str = None;
            }
        } else {
            match b {
                b'"' | b'\'' => in_str = Some(b),
                b'[' | b'{' => {
                    depth += 1;
                    if depth == 1 && index == 0 {
                        return Some(next_item(i + 1));
                    }
                }
                b']' | b'}' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return None;
                    }
                }
                b',' if depth == 1 => {
                    seen += 1;
                    if seen == index {
                        return Some(next_item(i + 1));
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# leading comment\nkind: NetworkPolicy\nmetadata:\n  name: foo\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n    ports: [{port: 80}, {port: http}]\n  ingres: []\n---\nkind: Pod\nmetadata: {name: a}\n";

    #[test]
    fn documents_know_their_lines() {
        let docs = split_yaml(TEXT);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].first_line, 15);
        let d = docs[0];
        let line = |p: &str| d.line_of(d.content_start(), &parse_path(p));
        assert_eq!(d.line_at(d.content_start()), 2);
        assert_eq!(line("spec.ingres"), 13);
        assert_eq!(line("spec.ingress[1].from[0].ipBlock.cidr"), 11);
        assert_eq!(line("spec.ingress[0].from[0]"), 9);
        assert_eq!(line("spec.ingress[1].ports[1].port"), 12);
        assert_eq!(line("spec.nothing.here"), 5);
        let p = docs[1];
        assert_eq!(
            p.line_of(p.content_start(), &parse_path("metadata.name")),
            16
        );
    }

    #[test]
    fn json_arrays_and_quoted_keys() {
        let json = "{\n \"items\": [\n  {\"kind\": \"Pod\"},\n  {\"kind\": \"Pod\",\n   \"spec\": {\"x\": 1}}\n ]\n}\n";
        let d = Document {
            text: json,
            first_line: 1,
            offset: 0,
        };
        assert_eq!(d.line_of(0, &parse_path("items[1].spec.x")), 5);
        assert_eq!(d.line_of(0, &parse_path("items[1]")), 4);
    }

    #[test]
    fn paths_round_trip() {
        let p = parse_path("spec.ingress[0].from[1..2]");
        assert_eq!(
            p,
            vec![
                Segment::Key("spec".into()),
                Segment::Key("ingress".into()),
                Segment::Index(0),
                Segment::Key("from".into()),
                Segment::Index(1)
            ]
        );
        assert_eq!(format_path(&p), "spec.ingress[0].from[1]");
    }
}
