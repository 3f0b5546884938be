//! Length-prefixed frames: an 8-byte little-endian length followed by that many payload bytes.
//!
//! The announced length is checked against a maximum *before* anything is allocated, and the
//! payload buffer grows with the bytes that actually arrive (at most `GROW_STEP` ahead), so a
//! peer that announces a large frame and then sends nothing cannot make us allocate it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Default maximum payload of one frame (1 GiB).
pub const DEFAULT_MAX_FRAME: u64 = 1 << 30;
/// How far ahead of the received bytes a payload buffer may be reserved.
const GROW_STEP: usize = 1 << 20;

/// What can go wrong while decoding frames (the peer is named by the caller).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended inside a frame.
    #[error("short frame: the stream ended after {got} of {expected} bytes")]
    Short { got: u64, expected: u64 },
    /// The announced length is above the limit.
    #[error("frame of {len} bytes announced, above the limit of {max} bytes")]
    Oversized { len: u64, max: u64 },
    /// Reading or writing the underlying stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Encodes the header of a frame carrying `len` payload bytes.
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    (len as u64).to_le_bytes()
}

/// Writes one frame (header and payload).
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    w.write_all(&header(payload.len()))?;
    w.write_all(payload)
}

/// Incremental frame decoder: feed it bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    max: u64,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload being assembled and its announced length, once the header is complete.
    body: Option<(Vec<u8>, usize)>,
    ready: VecDeque<Vec<u8>>,
}

impl FrameDecoder {
    /// A decoder that refuses frames above `max` payload bytes.
    pub fn new(max: u64) -> Self {
        FrameDecoder {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            body: None,
            ready: VecDeque::new(),
        }
    }

    /// Consumes `data`; complete frames become available through [`FrameDecoder::next_frame`].
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        while !data.is_empty() {
            match &mut self.body {
                None => {
                    let take = (HEADER_LEN - self.header_len).min(data.len());
                    self.header[self.header_len..self.header_len + take]
                        .copy_from_slice(&data[..take]);
                    self.header_len += take;
                    data = &data[take..];
                    if self.header_len == HEADER_LEN {
                        let len = u64::from_le_bytes(self.header);
                        if len > self.max {
                            return Err(FrameError::Oversized { len, max: self.max });
                        }
                        let len = usize::try_from(len).map_err(|_| FrameError::Oversized {
                            len,
                            max: usize::MAX as u64,
                        })?;
                        self.header_len = 0;
                        if len == 0 {
                            self.ready.push_back(Vec::new());
                        } else {
                            self.body = Some((Vec::with_capacity(len.min(GROW_STEP)), len));
                        }
                    }
                }
                Some((buf, len)) => {
                    let take = (*len - buf.len()).min(data.len());
                    if buf.capacity() < buf.len() + take {
                        buf.reserve((*len - buf.len()).min(take.max(GROW_STEP)));
                    }
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() == *len {
                        let (buf, _) = self.body.take().expect("body present");
                        self.ready.push_back(buf);
                    }
                }
            }
        }
        Ok(())
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        self.ready.pop_front()
    }

    /// Whether the decoder is in the middle of a frame.
    pub fn is_partial(&self) -> bool {
        self.header_len > 0 || self.body.is_some()
    }

    /// Call at end of stream: an error if the stream ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.header_len > 0 {
            return Err(FrameError::Short {
                got: self.header_len as u64,
                expected: HEADER_LEN as u64,
            });
        }
        if let Some((buf, len)) = &self.body {
            return Err(FrameError::Short {
                got: (HEADER_LEN + buf.len()) as u64,
                expected: (HEADER_LEN + len) as u64,
            });
        }
        Ok(())
    }
}

/// Reads one frame from a blocking stream. `Ok(None)` means the stream ended cleanly before
/// the first byte of a frame.
pub fn read_frame<R: Read>(r: &mut R, max: u64) -> Result<Option<Vec<u8>>, FrameError> {
    let mut dec = FrameDecoder::new(max);
    let mut buf = [0u8; 8192];
    loop {
        if let Some(f) = dec.next_frame() {
            return Ok(Some(f));
        }
        // Read no further than the current frame so bytes of the next one stay in the stream.
        let want = match &dec.body {
            None => HEADER_LEN - dec.header_len,
            Some((b, len)) => len - b.len(),
        }
        .min(buf.len());
        let n = match r.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if dec.is_partial() {
                dec.finish()?;
            }
            return Ok(None);
        }
        dec.push(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            write_frame(&mut out, f).unwrap();
        }
        out
    }

    #[test]
    fn round_trip_and_byte_by_byte() {
        let frames: Vec<Vec<u8>> = vec![vec![], vec![7], (0..5000u32).map(|i| i as u8).collect()];
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let bytes = encode(&refs);
        let mut dec = FrameDecoder::new(1 << 20);
        for b in &bytes {
            dec.push(std::slice::from_ref(b)).unwrap();
        }
        for f in &frames {
            assert_eq!(dec.next_frame().as_ref(), Some(f));
        }
        assert!(dec.next_frame().is_none());
        dec.finish().unwrap();
        let mut cur = Cursor::new(bytes);
        for f in &frames {
            assert_eq!(read_frame(&mut cur, 1 << 20).unwrap().as_ref(), Some(f));
        }
        assert!(read_frame(&mut cur, 1 << 20).unwrap().is_none());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut dec = FrameDecoder::new(1000);
        match dec.push(&bytes) {
            Err(FrameError::Oversized { len, max }) => {
                assert_eq!(len, u64::MAX);
                assert_eq!(max, 1000);
            }
            other => panic!("expected Oversized, got {other:?}"),
        }
        let err = read_frame(&mut Cursor::new(1001u64.to_le_bytes()), 1000).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Oversized {
                    len: 1001,
                    max: 1000
                }
            ),
            "{err}"
        );
        // Exactly at the limit is fine.
        let ok = encode(&[&[0u8; 1000]]);
        assert_eq!(
            read_frame(&mut Cursor::new(ok), 1000)
                .unwrap()
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn large_announced_frame_does_not_reserve_its_length() {
        let mut dec = FrameDecoder::new(1 << 40);
        dec.push(&(1u64 << 39).to_le_bytes()).unwrap();
        dec.push(&[0u8; 10]).unwrap();
        let cap = dec.body.as_ref().unwrap().0.capacity();
        assert!(cap <= 2 * GROW_STEP, "reserved {cap} bytes for 10 received");
    }

    #[test]
    fn short_frames_are_reported() {
        // Truncated header.
        let err = read_frame(&mut Cursor::new(vec![5u8, 0, 0]), 100).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Short {
                    got: 3,
                    expected: 8
                }
            ),
            "{err}"
        );
        // Truncated payload.
        let mut bytes = encode(&[&[9u8; 50]]);
        bytes.truncate(HEADER_LEN + 20);
        let err = read_frame(&mut Cursor::new(bytes.clone()), 100).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Short {
                    got: 28,
                    expected: 58
                }
            ),
            "{err}"
        );
        let mut dec = FrameDecoder::new(100);
        dec.push(&bytes).unwrap();
        assert!(dec.next_frame().is_none());
        assert!(dec.is_partial());
        assert!(matches!(dec.finish(), Err(FrameError::Short { .. })));
        // Empty stream is a clean end, not an error.
        assert!(read_frame(&mut Cursor::new(Vec::<u8>::new()), 100)
            .unwrap()
            .is_none());
    }

    #[test]
    fn read_frame_leaves_following_bytes_in_the_stream() {
        let bytes = encode(&[b"abc", b"defg"]);
        let mut cur = Cursor::new(bytes);
        assert_eq!(read_frame(&mut cur, 10).unwrap().unwrap(), b"abc");
        assert_eq!(cur.position() as usize, HEADER_LEN + 3);
        assert_eq!(read_frame(&mut cur, 10).unwrap().unwrap(), b"defg");
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Arbitrary bytes in arbitrary chunks: never a panic, never more than the limit.
            #[test]
            fn random_streams_decode_or_fail_cleanly(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
                cuts in proptest::collection::vec(1usize..64, 1..20),
                max in 0u64..300,
            ) {
                let mut dec = FrameDecoder::new(max);
                let mut rest = &bytes[..];
                let mut ci = 0;
                while !rest.is_empty() {
                    let n = cuts[ci % cuts.len()].min(rest.len());
                    ci += 1;
                    if dec.push(&rest[..n]).is_err() {
                        break;
                    }
                    rest = &rest[n..];
                    while let Some(f) = dec.next_frame() {
                        prop_assert!(f.len() as u64 <= max);
                    }
                }
                let _ = dec.finish();
                let _ = read_frame(&mut Cursor::new(bytes.clone()), max);
            }

            /// Well-formed frames survive any chunking; truncating the stream is reported.
            #[test]
            fn frames_round_trip_under_any_chunking(
                frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..8),
                chunk in 1usize..40,
                cut in any::<prop::sample::Index>(),
            ) {
                let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
                let bytes = encode(&refs);
                let mut dec = FrameDecoder::new(100);
                for c in bytes.chunks(chunk) {
                    dec.push(c).unwrap();
                }
                for f in &frames {
                    let got = dec.next_frame();
                    prop_assert_eq!(got.as_ref(), Some(f));
                }
                prop_assert!(dec.finish().is_ok());
                if !bytes.is_empty() {
                    let at = cut.index(bytes.len());
                    let mut dec = FrameDecoder::new(100);
                    dec.push(&bytes[..at]).unwrap();
                    let whole = std::iter::from_fn(|| dec.next_frame()).count();
                    // Either the cut fell between frames or it is a short frame.
                    prop_assert!(dec.finish().is_ok() || whole < frames.len());
                }
            }
        }
    }
}
