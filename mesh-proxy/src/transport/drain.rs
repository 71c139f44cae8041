//! Notices a graceful GOAWAY on a client connection. hyper does not tell a failed request
//! whether its connection had been drained, so the connector's stream scans the HTTP/2 frame
//! headers it reads (nine bytes per frame, payloads skipped) and records a GOAWAY with
//! NO_ERROR in a flag. The connection pool (`pool`) sends no new request on a connection so
//! flagged, and a request's `SendError` carries the flag of the connection it failed on.
//!
//! Why that flag matters: a peer that sends a graceful GOAWAY promises to finish every stream
//! it accepted before it closes the connection. A stream that dies with such a connection
//! before any response headers was therefore never accepted by the peer, even when hyper saw
//! only the closed socket (the final GOAWAY naming the last accepted stream can sit unread
//! when the client fails on a write first). Envoy calls such a request `reset_before_request`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// HTTP/2 frame header length (RFC 9113 §4.1).
const FRAME_HEADER_LEN: usize = 9;
/// Frame type of GOAWAY.
const GOAWAY: u8 = 0x7;
/// Bytes of a GOAWAY payload we need: last stream id (4) and error code (4).
const GOAWAY_FIXED_LEN: usize = 8;
/// Error code NO_ERROR: a graceful shutdown.
const NO_ERROR: u32 = 0;

/// Shared per-connection drain state, attached to the connection's `Connected` info.
#[derive(Clone, Debug, Default)]
pub struct DrainState(Arc<AtomicBool>);

impl DrainState {
    /// True once the peer announced a graceful shutdown of this connection.
    pub fn drained(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Incremental scanner over the bytes read from a connection.
#[derive(Debug, Default)]
pub struct FrameScanner {
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: usize,
    /// The current frame is a GOAWAY; its first bytes are collected here.
    goaway: Option<([u8; GOAWAY_FIXED_LEN], usize)>,
    pub state: DrainState,
}

impl FrameScanner {
    /// Feeds bytes the client just read (server-to-client direction: no preface to skip).
    pub fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            if self.header_len < FRAME_HEADER_LEN {
                let n = (FRAME_HEADER_LEN - self.header_len).min(buf.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&buf[..n]);
                self.header_len += n;
                buf = &buf[n..];
                if self.header_len == FRAME_HEADER_LEN {
                    let h = &self.header;
                    self.remaining =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    self.goaway = (h[3] == GOAWAY).then_some(([0; GOAWAY_FIXED_LEN], 0));
                    if self.remaining == 0 {
                        self.end_frame();
                    }
                }
                continue;
            }
            let n = self.remaining.min(buf.len());
            if let Some((fixed, got)) = &mut self.goaway {
                let take = (GOAWAY_FIXED_LEN - *got).min(n);
                fixed[*got..*got + take].copy_from_slice(&buf[..take]);
                *got += take;
            }
            self.remaining -= n;
            buf = &buf[n..];
            if self.remaining == 0 {
                self.end_frame();
            }
        }
    }

    fn end_frame(&mut self) {
        if let Some((fixed, got)) = self.goaway.take()
            && got == GOAWAY_FIXED_LEN
            && u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) == NO_ERROR
        {
            self.state.mark();
        }
        self.header_len = 0;
        self.remaining = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn goaway(last: u32, code: u32) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(b"debug");
        frame(GOAWAY, 0, &p)
    }

    #[test]
    fn a_graceful_goaway_marks_the_connection_drained_whatever_the_read_sizes() {
        let mut bytes = frame(0x4, 0, &[0; 6]); // SETTINGS
        bytes.extend(frame(0x0, 1, b"not a goaway: \x00\x00\x00\x07")); // DATA
        bytes.extend(goaway(i32::MAX as u32, NO_ERROR));
        for chunk in [1, 2, 5, 9, 13, bytes.len()] {
            let mut s = FrameScanner::default();
            for c in bytes.chunks(chunk) {
                s.feed(c);
            }
            assert!(s.state.drained(), "chunk size {chunk}");
        }
    }

    #[test]
    fn data_that_looks_like_a_goaway_or_an_error_goaway_does_not_count() {
        let mut s = FrameScanner::default();
        // A DATA payload holding the bytes of a GOAWAY frame.
        s.feed(&frame(0x0, 1, &goaway(0, NO_ERROR)));
        assert!(!s.state.drained());
        // GOAWAY with an error code: streams at or below its last id may have been processed.
        s.feed(&goaway(3, 0x2));
        assert!(!s.state.drained());
        s.feed(&goaway(3, NO_ERROR));
        assert!(s.state.drained());
    }
}
