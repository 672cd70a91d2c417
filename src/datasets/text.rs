//! Text clean-up and line numbers shared by the converters.

/// Collapses whitespace runs (spaces, tabs, newlines) to one space and trims the ends.
pub fn clean_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1-based line numbers of byte offsets into a text, asked for in increasing order (the csv
/// crate's own line counter does not count blank lines).
pub(super) struct LineCounter<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    pub(super) fn new(text: &'a str, first_line: usize) -> Self {
        Self { text: text.as_bytes(), pos: 0, line: first_line }
    }

    pub(super) fn line_at(&mut self, rec: &csv::StringRecord) -> usize {
        let mut byte = (rec.position().map(|p| p.byte() as usize).unwrap_or(0)).min(self.text.len());
        // The position may be that of blank lines the reader skipped before the record.
        while byte < self.text.len() && matches!(self.text[byte], b'\n' | b'\r') {
            byte += 1;
        }
        if byte > self.pos {
            self.line += self.text[self.pos..byte].iter().filter(|&&b| b == b'\n').count();
            self.pos = byte;
        }
        self.line
    }
}
