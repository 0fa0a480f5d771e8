//! Located diagnostics: every problem in a rules file as `file:line:col: sentence`.
//!
//! serde_yaml reports where a *syntax* or *type* error is, but a semantic
//! problem ("shard 37 is owned by both …") is found after deserialising, when
//! positions are gone. So each source is also read once with yaml-rust2's
//! event parser into a [`Marks`] index from a value's path (`cells[2].zone`)
//! to the line and column where that value starts. Validation names the path
//! of the value it complains about and the index turns it into a position.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One problem, at one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: Arc<str>,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// Every problem found, in file and position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn sort(&mut self) {
        self.0.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.message).cmp(&(&b.file, b.line, b.col, &b.message))
        });
        self.0.dedup();
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Path → position of every value in one YAML document.
#[derive(Debug, Default, Clone)]
pub(crate) struct Marks {
    at: HashMap<String, (usize, usize)>,
    /// Where the first repeated mapping key is, if any.
    duplicate: Option<(usize, usize)>,
}

impl Marks {
    /// Indexes `text`. Where yaml-rust2 stops on an error (serde_yaml, which
    /// decides what is valid, may accept more), the index holds what came
    /// before it.
    pub(crate) fn index(text: &str) -> Marks {
        let mut b = MarkBuilder::default();
        let mut parser = Parser::new_from_str(text);
        // On a parse error keep what was indexed up to it: positions before
        // the error stay exact, later ones fall back to an ancestor.
        let _ = parser.load(&mut b, false);
        Marks {
            at: b.at,
            duplicate: b.duplicate,
        }
    }

    /// The position of `path`, or of its nearest ancestor that has one
    /// (a defaulted field points at the mapping that lacks it).
    pub(crate) fn get(&self, mut path: &str) -> (usize, usize) {
        loop {
            if let Some(&p) = self.at.get(path) {
                return p;
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return self.at.get("").copied().unwrap_or((1, 1)),
            }
        }
    }
}

enum Frame {
    /// `start` is where the parser said the mapping starts; for block
    /// mappings that can be late, so the first key's position wins.
    Map {
        key: Option<String>,
        path: String,
        start: Option<(usize, usize)>,
        /// Keys seen so far, to locate a duplicate key exactly (serde_yaml
        /// reports it at the enclosing mapping).
        seen: HashSet<String>,
    },
    Seq {
        next: usize,
        path: String,
    },
}

#[derive(Default)]
struct MarkBuilder {
    stack: Vec<Frame>,
    at: HashMap<String, (usize, usize)>,
    duplicate: Option<(usize, usize)>,
}

impl MarkBuilder {
    /// The path of a value starting now, or `None` when the event is a
    /// mapping key (which sets the key instead).
    fn value_path(&mut self, key_scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { next, path }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { key, path, .. }) => match key.take() {
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
                None => {
                    // Complex (non-scalar) keys get a placeholder name.
                    *key = Some(key_scalar.unwrap_or("?").to_owned());
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for MarkBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(ref s, ..) => {
                if let Some(Frame::Map {
                    key: None, seen, ..
                }) = self.stack.last_mut()
                {
                    if !seen.insert(s.clone()) && self.duplicate.is_none() {
                        self.duplicate = Some(pos);
                    }
                }
                if let Some(p) = self.value_path(Some(s)) {
                    self.at.entry(p).or_insert(pos);
                } else if let Some(Frame::Map { path, start, .. }) = self.stack.last_mut() {
                    if start.take().is_some() {
                        self.at.entry(path.clone()).or_insert(pos);
                    }
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.value_path(Some("*")) {
                    self.at.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path(None).unwrap_or_else(|| "?".to_owned());
                self.stack.push(Frame::Map {
                    key: None,
                    path,
                    start: Some(pos),
                    seen: HashSet::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(None).unwrap_or_else(|| "?".to_owned());
                self.at.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { next: 0, path });
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    path,
                    start: Some(p),
                    ..
                }) = self.stack.pop()
                {
                    self.at.entry(path).or_insert(p);
                }
            }
            Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// One YAML source: its name (as shown in diagnostics), text and marks.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) file: Arc<str>,
    pub(crate) marks: Marks,
}

impl Source {
    pub(crate) fn new(file: &str, text: &str) -> Source {
        Source {
            file: Arc::from(file),
            marks: Marks::index(text),
        }
    }

    /// A diagnostic at the value `path`.
    pub(crate) fn at(&self, path: &str, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.marks.get(path);
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: one_line(message.into()),
        }
    }

    /// A serde_yaml error as a diagnostic, without serde_yaml's own
    /// "at line L column C" suffix (the position goes in front instead).
    pub(crate) fn serde_error(&self, e: &serde_yaml::Error) -> Diagnostic {
        let message = one_line(strip_positions(&e.to_string()));
        let located = e.location().map(|l| (l.line(), l.column()));
        let (line, col) = match self.marks.duplicate {
            Some(dup) if message.contains("duplicate") => dup,
            _ => located.unwrap_or((1, 1)),
        };
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message,
        }
    }
}

/// Removes serde_yaml's " at line L column C" (it may occur twice).
fn strip_positions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " at line ".len()..];
        let skip = |s: &str| s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after_line = &tail[tail.len() - skip(tail)..];
        match after_line.strip_prefix(" column ") {
            Some(col) => rest = &col[col.len() - skip(col)..],
            None => {
                out.push_str(" at line ");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A diagnostic is one line: control characters from the YAML (a folded
/// scalar's newline, say) are escaped, so they can neither break the
/// `file:line:col:` format nor inject log lines.
fn one_line(msg: String) -> String {
    if !msg.chars().any(char::is_control) {
        return msg;
    }
    msg.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_serde_positions_and_escapes_controls() {
        assert_eq!(
            strip_positions("bad thing at line 3 column 7, while scanning at line 1 column 2"),
            "bad thing, while scanning"
        );
        assert_eq!(strip_positions("at line X"), "at line X");
        assert_eq!(one_line("GZone GZ\n99 is".into()), "GZone GZ\\n99 is");
    }

    #[test]
    fn indexes_nested_paths() {
        let text = "a: 1\nlist:\n  - name: x\n    zone: R\n  - name: y\nmap: {k: v}\n";
        let m = Marks::index(text);
        assert_eq!(m.get("a"), (1, 4));
        assert_eq!(m.get("list[0].name"), (3, 11));
        assert_eq!(m.get("list[0].zone"), (4, 11));
        assert_eq!(m.get("list[1].name"), (5, 11));
        assert_eq!(m.get("map.k"), (6, 10));
        // A missing field falls back to its nearest ancestor.
        assert_eq!(m.get("list[1].zone"), (5, 5));
    }
}
