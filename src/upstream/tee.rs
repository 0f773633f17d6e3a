//! A request body taken for a shadow copy as the live request sends it (`serve::shadow`).
//!
//! Invariants: a `Tee` never holds the live body back: it is fed the bytes as the live request
//! relays them (by the HTTP/1.1 engine's body relay, or by `RequestBody` as hyper's client takes
//! each frame), each byte once whatever the live request's retries, copies at most the declared length, and hands the whole body over the moment the last
//! declared byte has passed (hyper's client stops polling a body whose length is met, so an end
//! of stream may never be seen). Fed more than declared, or dropped before the last byte, it hands
//! nothing over and the copy is abandoned.

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

/// The live body's bytes for its copy (see the module doc).
pub struct Tee {
    buf: BytesMut,
    /// Bytes still expected: the declared length minus what passed.
    left: usize,
    to: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    /// A tee for a body of `len` bytes (at least 1), and where the whole body arrives.
    pub fn new(len: usize) -> (Tee, oneshot::Receiver<Bytes>) {
        let (to, from) = oneshot::channel();
        let tee = Tee {
            buf: BytesMut::with_capacity(len),
            left: len,
            to: Some(to),
        };
        (tee, from)
    }

    /// Takes `data`, the next bytes the live request sent upstream.
    pub fn push(&mut self, data: &[u8]) {
        if self.to.is_none() {
            return;
        }
        if data.len() > self.left {
            self.to = None;
            return;
        }
        self.left -= data.len();
        self.buf.extend_from_slice(data);
        if self.left == 0 {
            if let Some(to) = self.to.take() {
                let _ = to.send(std::mem::take(&mut self.buf).freeze());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_handed_over_when_its_last_byte_passes() {
        let (mut tee, mut from) = Tee::new(5);
        tee.push(b"he");
        assert!(from.try_recv().is_err(), "not before the last byte");
        tee.push(b"llo");
        assert_eq!(from.try_recv().unwrap(), Bytes::from_static(b"hello"));
    }

    #[test]
    fn more_than_declared_or_too_little_hands_nothing_over() {
        let (mut tee, mut from) = Tee::new(3);
        tee.push(b"abcd");
        assert!(matches!(
            from.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        let (mut tee, mut from) = Tee::new(3);
        tee.push(b"ab");
        drop(tee);
        assert!(matches!(
            from.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
