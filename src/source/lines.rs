//! Cuts a file's bytes into lines: one record per line without its newline, each with the
//! number of file bytes it accounts for, so a read position can move exactly past it.

/// Lines cut from one read, ready to be queued.
#[derive(Debug, Default)]
pub struct Lines {
    /// The lines' bytes, one after another.
    pub data: Vec<u8>,
    /// Where each line ends in `data`.
    pub ends: Vec<usize>,
    /// File bytes each line accounts for: the line, its newline, and any refused line
    /// just before it.
    pub lengths: Vec<u64>,
    /// Lines refused for being too long.
    pub refused: Vec<RefusedLine>,
}

/// A line (or event) refused for being longer than the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// File offset where it began.
    pub offset: u64,
    /// File bytes it took, with its newline.
    pub length: u64,
    /// Its first bytes, up to the limit: what the error output keeps of it.
    pub head: Vec<u8>,
}

impl Lines {
    /// Each line's bytes.
    pub fn slices(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let line = &self.data[start..end];
                start = end;
                line
            })
            .collect()
    }
}

/// State between reads: the unterminated end of the last read, or the refused line being
/// skipped.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    /// File offset of the next byte fed.
    offset: u64,
    /// Start of a line not yet terminated.
    carry: Vec<u8>,
    /// Bytes already passed (refused lines) that the next line accounts for.
    passed: u64,
    /// The line being skipped, while skipping one: where it began and its first bytes.
    skipping: Option<(u64, Vec<u8>)>,
}

impl LineSplitter {
    /// A splitter reading from file offset `offset`, refusing lines over `max_line` bytes.
    pub fn new(offset: u64, max_line: usize) -> Self {
        Self {
            max_line,
            offset,
            carry: Vec::new(),
            passed: 0,
            skipping: None,
        }
    }

    /// File offset of the next byte to feed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Cuts `data`, the file's bytes from [`offset`](Self::offset) on, into `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Lines) {
        let mut rest = data;
        while !rest.is_empty() {
            let line_start = self.offset - self.carry.len() as u64;
            match memchr::memchr(b'\n', rest) {
                Some(newline) => {
                    let taken = newline as u64 + 1;
                    if let Some((offset, head)) = self.skipping.take() {
                        out.refused.push(RefusedLine {
                            offset,
                            length: self.offset + taken - offset,
                            head,
                        });
                        self.passed += taken;
                    } else if self.carry.len() + newline > self.max_line {
                        let head = self.head_of(&rest[..newline]);
                        out.refused.push(RefusedLine {
                            offset: line_start,
                            length: self.carry.len() as u64 + taken,
                            head,
                        });
                        self.passed += self.carry.len() as u64 + taken;
                        self.carry.clear();
                    } else {
                        out.data.extend_from_slice(&self.carry);
                        out.data.extend_from_slice(&rest[..newline]);
                        out.ends.push(out.data.len());
                        out.lengths
                            .push(self.passed + self.carry.len() as u64 + taken);
                        self.passed = 0;
                        self.carry.clear();
                    }
                    self.offset += taken;
                    rest = &rest[newline + 1..];
                }
                None => {
                    if self.skipping.is_some() {
                        self.passed += rest.len() as u64;
                    } else if self.carry.len() + rest.len() > self.max_line {
                        let head = self.head_of(rest);
                        self.skipping = Some((line_start, head));
                        self.passed += (self.carry.len() + rest.len()) as u64;
                        self.carry.clear();
                    } else {
                        self.carry.extend_from_slice(rest);
                    }
                    self.offset += rest.len() as u64;
                    rest = &[];
                }
            }
        }
    }
}

impl LineSplitter {
    /// The first `max_line` bytes of the carried start of a line followed by `more`.
    fn head_of(&self, more: &[u8]) -> Vec<u8> {
        let mut head = self.carry.clone();
        let room = self.max_line.saturating_sub(head.len());
        head.extend_from_slice(&more[..more.len().min(room)]);
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunks: &[&[u8]], max_line: usize) -> (Vec<Vec<u8>>, Lines) {
        let mut splitter = LineSplitter::new(100, max_line);
        let mut out = Lines::default();
        for chunk in chunks {
            splitter.feed(chunk, &mut out);
        }
        let lines = out.slices().into_iter().map(<[u8]>::to_vec).collect();
        (lines, out)
    }

    #[test]
    fn lines_split_across_reads_are_joined_and_an_unterminated_end_waits() {
        let (lines, out) = cut(&[b"ab", b"c\nde\n\nf", b"g"], 10);
        assert_eq!(lines, vec![b"abc".to_vec(), b"de".to_vec(), b"".to_vec()]);
        assert_eq!(out.lengths, vec![4, 3, 1]);
        assert!(out.refused.is_empty());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_the_next_line_accounts_for_its_bytes() {
        // The long line arrives in pieces, the first already over the limit.
        let (lines, out) = cut(&[b"ok\n0123456", b"789abc", b"def\nnext\n"], 5);
        assert_eq!(lines, vec![b"ok".to_vec(), b"next".to_vec()]);
        let refused = RefusedLine {
            offset: 103,
            length: 17,
            head: b"01234".to_vec(),
        };
        assert_eq!(out.refused, vec![refused]);
        assert_eq!(out.lengths, vec![3, 17 + 5]);
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_taken() {
        let (lines, out) = cut(&[b"12345\n123456\n"], 5);
        assert_eq!(lines, vec![b"12345".to_vec()]);
        let refused = RefusedLine {
            offset: 106,
            length: 7,
            head: b"12345".to_vec(),
        };
        assert_eq!(out.refused, vec![refused]);
    }
}
