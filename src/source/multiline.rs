//! Joins the lines of one event (a stack trace under its log line) into one record: an event
//! starts at a line matching the start pattern and takes every following line that does not,
//! until the next start line or until no line has come for the timeout.

use std::time::{Duration, Instant};

use regex::bytes::Regex;

use super::lines::{Lines, RefusedLine};

/// How a source joins lines.
#[derive(Debug, Clone)]
pub struct MultilineRule {
    /// A line matching it starts an event.
    pub start: Regex,
    /// An event with no line for this long is complete.
    pub timeout: Duration,
}

/// The event being collected.
#[derive(Debug)]
struct Event {
    data: Vec<u8>,
    /// File bytes its lines took.
    length: u64,
    /// File offset of its first line.
    offset: u64,
    /// Over the size limit: only its first bytes are kept, and it will be refused.
    too_long: bool,
    last_line: Instant,
}

/// Per-file state of the joining.
#[derive(Debug)]
pub struct Joiner {
    rule: MultilineRule,
    max_bytes: usize,
    /// File offset just past the last line taken in.
    offset: u64,
    /// File bytes of refused events that the next record accounts for.
    passed: u64,
    event: Option<Event>,
}

impl Joiner {
    /// A joiner for a file read from `offset`, refusing events over `max_bytes`.
    pub fn new(rule: MultilineRule, offset: u64, max_bytes: usize) -> Self {
        Self {
            rule,
            max_bytes,
            offset,
            passed: 0,
            event: None,
        }
    }

    /// Joins `lines` (read just now, at `now`) into events; completes the open event too
    /// when no line came and it has waited past the timeout.
    pub fn join(&mut self, lines: Lines, now: Instant) -> Lines {
        let mut out = Lines {
            refused: lines.refused.clone(),
            ..Lines::default()
        };
        let got_lines = !lines.ends.is_empty();
        for (line, &length) in lines.slices().into_iter().zip(&lines.lengths) {
            let starts = self.rule.start.is_match(line);
            if starts && let Some(event) = self.event.take() {
                self.finish(event, &mut out);
            }
            let event = self.event.get_or_insert_with(|| Event {
                data: Vec::new(),
                length: 0,
                offset: self.offset,
                too_long: false,
                last_line: now,
            });
            let joined = event.data.len() + usize::from(event.length > 0) + line.len();
            if !event.too_long {
                if event.length > 0 {
                    event.data.push(b'\n');
                }
                event.data.extend_from_slice(line);
                if joined > self.max_bytes {
                    event.too_long = true;
                    event.data.truncate(self.max_bytes);
                }
            }
            event.length += length;
            event.last_line = now;
            self.offset += length;
        }
        if !got_lines
            && self
                .event
                .as_ref()
                .is_some_and(|e| now.duration_since(e.last_line) >= self.rule.timeout)
        {
            let event = self.event.take().expect("checked");
            self.finish(event, &mut out);
        }
        out
    }

    /// Whether no event is waiting to be completed.
    pub fn is_idle(&self) -> bool {
        self.event.is_none()
    }

    fn finish(&mut self, event: Event, out: &mut Lines) {
        if event.too_long {
            out.refused.push(RefusedLine {
                offset: event.offset,
                length: event.length,
                head: event.data,
            });
            self.passed += event.length;
            return;
        }
        out.data.extend_from_slice(&event.data);
        out.ends.push(out.data.len());
        out.lengths.push(self.passed + event.length);
        self.passed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::lines::LineSplitter;

    fn joiner(max_bytes: usize) -> Joiner {
        let rule = MultilineRule {
            start: Regex::new(r"^\d{4}-\d{2}-\d{2} ").unwrap(),
            timeout: Duration::from_millis(1000),
        };
        Joiner::new(rule, 0, max_bytes)
    }

    fn lines(text: &[u8]) -> Lines {
        let mut out = Lines::default();
        LineSplitter::new(0, 1 << 20).feed(text, &mut out);
        out
    }

    fn records(out: &Lines) -> Vec<String> {
        out.slices()
            .into_iter()
            .map(|r| String::from_utf8(r.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn continuation_lines_join_their_event_which_ends_at_the_next_start() {
        let mut joiner = joiner(1 << 20);
        let start = Instant::now();
        let text = b"2026-11-30 boom\n  at a()\n  at b()\n2026-11-30 next\n";
        let out = joiner.join(lines(text), start);
        assert_eq!(records(&out), ["2026-11-30 boom\n  at a()\n  at b()"]);
        assert_eq!(out.lengths, [16 + 9 + 9]);
        // The last event waits: for a next start line, or for the timeout.
        let out = joiner.join(Lines::default(), start + Duration::from_millis(999));
        assert!(out.ends.is_empty());
        let out = joiner.join(Lines::default(), start + Duration::from_millis(1000));
        assert_eq!(records(&out), ["2026-11-30 next"]);
        assert_eq!(out.lengths, [16]);
    }

    #[test]
    fn an_event_over_the_limit_is_refused_and_the_next_accounts_for_its_bytes() {
        let mut joiner = joiner(20);
        let text = b"2026-11-30 big\n  at a()\n  at b()\n2026-11-30 ok\n2026-11-30 x\n";
        let out = joiner.join(lines(text), Instant::now());
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.refused[0].offset, 0);
        assert_eq!(out.refused[0].length, 15 + 9 + 9);
        assert_eq!(out.refused[0].head, b"2026-11-30 big\n  at ".to_vec());
        assert_eq!(records(&out), ["2026-11-30 ok"]);
        assert_eq!(out.lengths, [33 + 14]);
    }
}
