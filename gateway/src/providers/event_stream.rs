//! An upstream's server-sent events, reduced to what the providers read: each event's `data`.
//! The rules are the WHATWG event-stream ones (lines end in LF, CRLF or CR; a leading BOM is
//! dropped; `:` starts a comment; one space after the field's colon is dropped; data lines join
//! with LF; a blank line dispatches; an unterminated last event is discarded). Written here
//! rather than taken from `eventsource-stream` because that crate's character-at-a-time parser
//! cost a sixth of a streamed request's instructions (`e2e/bench/instructions.sh`); this one
//! finds line ends with `memchr` and touches the other bytes only to copy them.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::BodyError;

/// Why an event stream stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the body failed (transport error or `max_response_bytes`).
    #[error("{0}")]
    Body(#[from] BodyError),
    /// An event's data is not UTF-8.
    #[error("an event's data is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

impl StreamError {
    /// Whether the body read timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, StreamError::Body(b) if b.is_timeout())
    }
}

/// The `data` of each event in `bytes`, in order. A body error is the last item; an event
/// whose data is not UTF-8 is an error item, and the events after it still come.
pub fn data_events(
    bytes: impl Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
) -> DataEvents {
    DataEvents {
        bytes: Box::pin(bytes),
        decoder: Decoder::default(),
        done: false,
    }
}

/// See [`data_events`].
pub struct DataEvents {
    bytes: Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>,
    decoder: Decoder,
    done: bool,
}

impl Stream for DataEvents {
    type Item = Result<String, StreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.decoder.next_event() {
                return Poll::Ready(Some(event.map_err(StreamError::from)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(this.bytes.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => this.decoder.feed(&chunk),
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                // An event without its blank line is discarded, as the rules say.
                None => {
                    this.done = true;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// The incremental parser: feed bytes as they arrive, take events as they complete.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes received; those before `read` are already cut into lines.
    pending: Vec<u8>,
    read: usize,
    /// Where the search for the next line end resumes: an unfinished line arriving in many
    /// pieces is searched once, not again from its start on every piece.
    scanned: usize,
    /// The current event's data lines, each followed by LF.
    data: Vec<u8>,
    /// Past the optional BOM.
    started: bool,
    /// The last line ended in a CR that was the last byte received: a LF arriving next is
    /// that line's CRLF, not a blank line.
    after_cr: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Decoder {
    /// Adds bytes from the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        // Compacting here, not per event, keeps a chunk of many events linear.
        self.pending.drain(..self.read);
        self.scanned = self.scanned.saturating_sub(self.read);
        self.read = 0;
        self.pending.extend_from_slice(chunk);
    }

    /// The next complete event's data, if one is complete.
    pub fn next_event(&mut self) -> Option<Result<String, std::string::FromUtf8Error>> {
        if !self.started {
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return None;
            }
            if self.pending.starts_with(BOM) {
                self.read = BOM.len();
            }
            self.started = true;
        }
        if self.after_cr && self.read < self.pending.len() {
            self.after_cr = false;
            if self.pending[self.read] == b'\n' {
                self.read += 1;
            }
        }
        loop {
            let from = self.scanned.max(self.read);
            let Some(i) = memchr::memchr2(b'\n', b'\r', &self.pending[from..]) else {
                self.scanned = self.pending.len();
                return None;
            };
            let (start, end) = (self.read, from + i);
            self.read = end + 1;
            self.scanned = self.read;
            if self.pending[end] == b'\r' {
                match self.pending.get(self.read) {
                    Some(b'\n') => self.read += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line(start, end) {
                return Some(self.take_data());
            }
        }
    }

    /// Reads the line `pending[start..end]`; true when it is blank and an event is ready.
    fn line(&mut self, start: usize, end: usize) -> bool {
        let line = &self.pending[start..end];
        if line.is_empty() {
            return !self.data.is_empty();
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return false,
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        if field == b"data" {
            self.data.extend_from_slice(value);
            self.data.push(b'\n');
        }
        false
    }

    fn take_data(&mut self) -> Result<String, std::string::FromUtf8Error> {
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the last line's LF
        String::from_utf8(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `input`, fed in pieces of `step` bytes.
    fn events(input: &[u8], step: usize) -> Vec<String> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            d.feed(piece);
            while let Some(e) = d.next_event() {
                out.push(e.unwrap());
            }
        }
        out
    }

    #[test]
    fn events_are_the_same_however_the_bytes_are_split() {
        let input = "\u{FEFF}: a comment\r\ndata: {\"a\":1}\r\n\r\nevent: delta\ndata:two\ndata:  lines\n\n\
                     id: 7\rdata\r\rdata: é\n\ndata: [DONE]\n\ndata: cut off"
            .as_bytes();
        let want = ["{\"a\":1}", "two\n lines", "", "é", "[DONE]"];
        for step in 1..=input.len() {
            assert_eq!(events(input, step), want, "fed {step} bytes at a time");
        }
    }

    #[test]
    fn a_crlf_split_across_reads_is_one_line_end() {
        let mut d = Decoder::default();
        d.feed(b"data: a\r");
        assert!(d.next_event().is_none());
        d.feed(b"\ndata: b\n\n");
        assert_eq!(d.next_event().unwrap().unwrap(), "a\nb");
        let mut d = Decoder::default();
        d.feed(b"data: a\r");
        assert!(d.next_event().is_none());
        d.feed(b"\r");
        assert_eq!(
            d.next_event().unwrap().unwrap(),
            "a",
            "CR CR is a line and a blank line"
        );
    }

    #[test]
    fn a_long_line_in_many_pieces_is_searched_once() {
        let mut d = Decoder::default();
        d.feed(b"data: ");
        for _ in 0..1000 {
            d.feed(&[b'x'; 100]);
            assert!(d.next_event().is_none());
            assert_eq!(d.scanned, d.pending.len(), "no byte is searched twice");
        }
        d.feed(b"\n\n");
        assert_eq!(d.next_event().unwrap().unwrap().len(), 100_000);
    }

    #[test]
    fn blank_lines_without_data_and_unknown_fields_dispatch_nothing() {
        assert!(events(b"\n\nevent: ping\n\nretry: 10\nid: 1\n\n:x\n\n", 3).is_empty());
        assert_eq!(
            events(b"data\n\n", 1),
            [""],
            "a field without a colon has no value"
        );
        assert_eq!(events(b"datum: x\ndata:x:y\n\n", 4), ["x:y"]);
    }

    #[test]
    fn a_bom_only_counts_at_the_start_and_bad_utf8_is_an_error() {
        assert_eq!(events(b"\xEF\xBB", 1), Vec::<String>::new());
        for step in [1, 2, 3, 4, 100] {
            assert_eq!(events("\u{FEFF}data: x\n\n".as_bytes(), step), ["x"]);
            assert!(
                events("\u{FEFF}\u{FEFF}data: x\n\n".as_bytes(), step).is_empty(),
                "a second BOM makes the field name `\u{FEFF}data`"
            );
        }
        assert_eq!(
            events("data: \u{FEFF}x\n\n".as_bytes(), 2),
            ["\u{FEFF}x"],
            "a BOM inside the stream is data"
        );
        let mut d = Decoder::default();
        d.feed(b"data: \xff\n\ndata: ok\n\n");
        assert!(d.next_event().unwrap().is_err());
        assert_eq!(
            d.next_event().unwrap().unwrap(),
            "ok",
            "the next event still reads"
        );
    }

    #[test]
    fn any_mix_of_lines_in_any_pieces_gives_the_events_of_the_whole() {
        // Tokens, not bytes, so that most inputs hold real `data` lines and line-end mixes.
        let tokens: [&[u8]; 10] = [
            b"data",
            b":",
            b" ",
            b"x",
            b"\r",
            b"\n",
            b"\r\n",
            b"\xEF\xBB\xBF",
            b"\xff",
            b"data: y\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        let mut with_events = 0;
        for _ in 0..2000 {
            let input: Vec<u8> = (0..rng.usize(0..24))
                .flat_map(|_| tokens[rng.usize(..tokens.len())].iter().copied())
                .collect();
            let all = |step: usize| {
                let mut d = Decoder::default();
                let mut out = Vec::new();
                for piece in input.chunks(step) {
                    d.feed(piece);
                    while let Some(e) = d.next_event() {
                        out.push(e.map_err(|e| e.into_bytes()));
                    }
                }
                out
            };
            let whole = all(input.len().max(1));
            with_events += usize::from(!whole.is_empty());
            for step in [1, 2, 3, 7] {
                assert_eq!(all(step), whole, "{input:?} in pieces of {step}");
            }
        }
        assert!(with_events > 500, "only {with_events} inputs had events");
    }

    #[tokio::test]
    async fn the_stream_ends_at_a_body_error_and_drops_an_unfinished_event() {
        let chunks = vec![
            Ok(Bytes::from_static(b"data: 1\n\nda")),
            Ok(Bytes::from_static(b"ta: 2\n\ndata: 3")),
        ];
        let got: Vec<_> = data_events(futures::stream::iter(chunks)).collect().await;
        let got: Vec<String> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, ["1", "2"]);

        let chunks = vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Err(BodyError::TooLarge),
            Ok(Bytes::from_static(b"data: 2\n\n")),
        ];
        let got: Vec<_> = data_events(futures::stream::iter(chunks)).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), "1");
        let err = got[1].as_ref().unwrap_err();
        assert!(!err.is_timeout());
        assert!(err.to_string().contains("max_response_bytes"), "{err}");
    }
}
