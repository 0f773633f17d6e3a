//! A minimal HTTP/1.1 client connection for the generator: one task writes a prepared request
//! and reads its response, nothing else runs per request.
//!
//! hyper's client splits a request over two tasks (the caller and the connection's dispatcher,
//! joined by a channel) and builds a `Request` and a `HeaderMap` each time; at tens of thousands
//! of requests a second on a load CPU shared with the upstream that was the largest cost on it.
//! Here the request's bytes are built once per connection, and a response is parsed in place
//! with httparse.
//!
//! Invariants: a response is complete only when its whole body has been read (Content-Length or
//! chunked; a response without either is an error, since its end would be the connection's);
//! bytes after it stay buffered for the next one; a connection the server marked
//! `Connection: close` (or that failed) is never used again.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Io;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

pub struct Conn {
    io: Box<dyn Io>,
    request: Vec<u8>,
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
    closed: bool,
}

/// A complete response: its status and, when asked for, its body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Conn {
    pub fn new(io: Box<dyn Io>, request: Vec<u8>) -> Conn {
        Conn {
            io,
            request,
            buf: vec![0; 16 * 1024],
            pos: 0,
            end: 0,
            closed: false,
        }
    }

    /// Sends the connection's request and reads the response; the body is kept when `keep_body`.
    pub async fn exchange(&mut self, keep_body: bool) -> io::Result<Response> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed by the server after its last response",
            ));
        }
        let r = self.exchange_inner(keep_body).await;
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    async fn exchange_inner(&mut self, keep_body: bool) -> io::Result<Response> {
        self.io.write_all(&self.request).await?;
        self.io.flush().await?;
        let (status, length, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf[self.pos..self.end]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = res.code.unwrap_or(0);
                    let head = Head::of(res.headers)?;
                    self.pos += n;
                    if (100..200).contains(&status) {
                        continue; // an interim response: the final one follows
                    }
                    break (status, head.length, head.close);
                }
                Ok(httparse::Status::Partial) => {
                    if self.end - self.pos >= MAX_HEAD {
                        return Err(invalid("response head too large"));
                    }
                    self.fill().await?;
                }
                Err(e) => return Err(invalid(format!("bad response head: {e}"))),
            }
        };
        let length = if status == 204 || status == 304 {
            Length::Fixed(0)
        } else {
            length
        };
        let mut body = Vec::new();
        match length {
            Length::Fixed(n) => self.body(n, keep_body.then_some(&mut body)).await?,
            Length::Chunked => self.chunked(keep_body.then_some(&mut body)).await?,
            Length::None => return Err(invalid("response without a length (needs the close)")),
        }
        self.closed = close;
        Ok(Response { status, body })
    }

    /// Reads more bytes after the unread ones, compacting or growing the buffer as needed.
    async fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response was complete",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Consumes `n` body bytes, appending them to `keep` if given.
    async fn body(&mut self, mut n: u64, mut keep: Option<&mut Vec<u8>>) -> io::Result<()> {
        loop {
            let have = ((self.end - self.pos) as u64).min(n) as usize;
            if let Some(k) = keep.as_deref_mut() {
                k.extend_from_slice(&self.buf[self.pos..self.pos + have]);
            }
            self.pos += have;
            n -= have as u64;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Consumes a chunked body and its trailer section.
    async fn chunked(&mut self, mut keep: Option<&mut Vec<u8>>) -> io::Result<()> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[self.pos..self.end]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.pos += used;
                        break size;
                    }
                    Ok(httparse::Status::Partial) => self.fill().await?,
                    Err(_) => return Err(invalid("bad chunk size")),
                }
            };
            if size == 0 {
                return self.trailers().await;
            }
            self.body(size, keep.as_deref_mut()).await?;
            self.crlf().await?;
        }
    }

    async fn crlf(&mut self) -> io::Result<()> {
        while self.end - self.pos < 2 {
            self.fill().await?;
        }
        if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
            return Err(invalid("chunk not followed by CRLF"));
        }
        self.pos += 2;
        Ok(())
    }

    /// Skips trailer lines up to and including the empty line.
    async fn trailers(&mut self) -> io::Result<()> {
        loop {
            match self.buf[self.pos..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                Some(0) => {
                    self.pos += 2;
                    return Ok(());
                }
                Some(i) => self.pos += i + 2,
                None if self.end - self.pos >= MAX_HEAD => {
                    return Err(invalid("trailers too large"))
                }
                None => self.fill().await?,
            }
        }
    }
}

enum Length {
    Fixed(u64),
    Chunked,
    None,
}

struct Head {
    length: Length,
    close: bool,
}

impl Head {
    fn of(headers: &[httparse::Header]) -> io::Result<Head> {
        let mut head = Head {
            length: Length::None,
            close: false,
        };
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| invalid("bad content-length"))?;
                if !matches!(head.length, Length::Chunked) {
                    head.length = Length::Fixed(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    head.length = Length::Chunked;
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                head.close |= h
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        Ok(head)
    }
}
