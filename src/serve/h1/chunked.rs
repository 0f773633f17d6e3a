//! Finds the end of a chunked message body (RFC 9112 §7.1) in a byte stream that is relayed
//! verbatim: chunk sizes, extensions, data and trailers pass through untouched; this only tracks
//! where the message ends, so a kept-alive upstream connection is never desynchronised.
//!
//! Invariants: strict framing (CRLF line ends, hex sizes that fit in a u64); anything else is an
//! error and the connection carrying it is not reused. `scan` never looks past the end of the
//! message: the bytes after it belong to the next one. No allocation, O(1) state. `data` walks the
//! same states for a client that takes the body without its framing (HTTP/2): trailers are
//! skipped, as hyper's client drops them for a downstream that did not ask for them.

/// Where in the chunked framing the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line (no digit seen yet).
    SizeStart,
    /// Inside the hex size.
    Size,
    /// After the size: whitespace or extensions, up to CR.
    Ext,
    /// CR of the size line seen; LF expected.
    SizeLf,
    /// Inside chunk data; this many bytes left.
    Data(u64),
    /// After chunk data: CR expected.
    DataCr,
    /// After chunk data: LF expected.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// CR of a trailer line seen; LF expected.
    TrailerLf,
    /// CR of the final empty line seen; LF expected.
    EndLf,
    /// The message is complete.
    Done,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct ChunkError;

/// Tracks one chunked body.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    size: u64,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::SizeStart,
            size: 0,
        }
    }
}

impl Scanner {
    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes; returns how many of them belong to this body (all of them, unless the
    /// body ends inside `buf`).
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                State::SizeStart | State::Size => {
                    let digit = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match digit {
                        Some(d) => {
                            if self.size >> 60 != 0 {
                                return Err(ChunkError);
                            }
                            self.size = self.size << 4 | u64::from(d);
                            self.state = State::Size;
                        }
                        None if self.state == State::SizeStart => return Err(ChunkError),
                        None if b == b'\r' => self.state = State::SizeLf,
                        None if b == b';' || b == b' ' || b == b'\t' => self.state = State::Ext,
                        None => return Err(ChunkError),
                    }
                }
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' {
                        State::EndLf
                    } else if b == b'\n' {
                        return Err(ChunkError);
                    } else {
                        State::Trailer
                    };
                }
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => return Err(ChunkError),
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// Whether the last chunk has been seen: what follows is the trailer section (its fields,
    /// then an empty line).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::Trailer | State::TrailerLf | State::EndLf | State::Done
        )
    }

    /// Decodes the framing at the start of `buf`: returns how many bytes of it are framing
    /// (consumed, never data) and how many data bytes follow them (not yet consumed: the caller
    /// takes them, then calls again after them). `(n, 0)` when no data byte follows: `buf` is
    /// all framing, or the body is `done()`, or the last chunk's size line ended at `n` (the
    /// trailer section, `in_trailers`, is the next call's).
    pub fn data(&mut self, buf: &[u8]) -> Result<(usize, usize), ChunkError> {
        let mut i = 0;
        while i < buf.len() && !self.done() {
            if self.state == State::TrailerStart && i > 0 {
                // The last chunk's size line ends here: the trailers are the next call's.
                return Ok((i, 0));
            }
            if let State::Data(left) = self.state {
                let take = left.min((buf.len() - i) as u64);
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                return Ok((i, take as usize));
            }
            i += self.scan(&buf[i..i + 1])?;
        }
        Ok((i, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<usize, ChunkError> {
        let mut s = Scanner::default();
        let n = s.scan(body)?;
        assert!(s.done(), "not done after {n} of {}", body.len());
        Ok(n)
    }

    #[test]
    fn simple_and_trailers() {
        let b = b"5\r\nhello\r\n0\r\n\r\nNEXT";
        assert_eq!(whole(b), Ok(b.len() - 4));
        let b = b"5;ext=1\r\nhello\r\n6 ; x\r\n world\r\n0\r\nx-sum: 1\r\nx-b: 2\r\n\r\n";
        assert_eq!(whole(b), Ok(b.len()));
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let b = b"a\r\n0123456789\r\nFF\r\n".to_vec();
        let mut b = b;
        b.extend(std::iter::repeat_n(b'x', 255));
        b.extend_from_slice(b"\r\n0\r\nt: v\r\n\r\nrest");
        let mut s = Scanner::default();
        let mut n = 0;
        for (i, byte) in b.iter().enumerate() {
            let k = s.scan(std::slice::from_ref(byte)).unwrap();
            n += k;
            if s.done() {
                assert_eq!(i + 1, b.len() - 4);
                break;
            }
        }
        assert_eq!(n, b.len() - 4);
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"0\r\n\n",
            b"0\r\nbad\n",
            b"11111111111111111\r\n",
        ] {
            let mut s = Scanner::default();
            assert_eq!(
                s.scan(bad),
                Err(ChunkError),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// `data` yields exactly the chunks' payload, whatever the reads' boundaries.
    #[test]
    fn data_decodes_across_splits() {
        let b = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nt: v\r\n\r\nNEXT";
        for split in 1..b.len() {
            let mut s = Scanner::default();
            let (mut out, mut used) = (Vec::new(), 0);
            for part in [&b[..split], &b[split..]] {
                let mut at = 0;
                while at < part.len() && !s.done() {
                    let (framing, data) = s.data(&part[at..]).unwrap();
                    at += framing;
                    out.extend_from_slice(&part[at..at + data]);
                    at += data;
                }
                used += at;
            }
            assert_eq!(out, b"hello world", "split at {split}");
            assert!(s.done());
            assert_eq!(used, b.len() - 4, "split at {split}");
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let mut s = Scanner::default();
        assert_eq!(s.scan(b"5\r\nhel"), Ok(6));
        assert!(!s.done());
        assert_eq!(s.scan(b"lo\r\n0\r\n"), Ok(7));
        assert!(!s.done());
        assert_eq!(s.scan(b"\r\n"), Ok(2));
        assert!(s.done());
    }
}
