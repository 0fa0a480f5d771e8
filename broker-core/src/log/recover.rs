//! Recovery: scanning the log from a known-good position, verifying every
//! record, and cutting a torn or corrupt tail (see the invariants in the
//! parent module).

use std::sync::Arc;

use super::LogShared;
use crate::error::{Error, Result};
use crate::record::{self, Frame, RecordMeta};
use crate::segment::Segment;

/// Scans from `from` to the end of the log, zeroes what follows the last
/// valid record and deletes later segments. Returns the end of the log.
pub(super) fn recover(
    shared: &LogShared,
    from: u64,
    mut on_record: impl FnMut(u64, usize, RecordMeta) -> Result<()>,
) -> Result<u64> {
    let segs: Vec<Arc<Segment>> = match shared.segments.read() {
        Ok(s) => s.range(..).map(|(_, s)| s.clone()).collect(),
        Err(_) => return Err(Error::Closed),
    };
    let Some(start) = segs.iter().rposition(|s| s.base <= from) else {
        return Err(Error::Config(format!("no segment holds position {from}")));
    };
    let mut pos = from;
    let mut last = start;
    for (i, seg) in segs.iter().enumerate().skip(start) {
        last = i;
        pos = pos.max(seg.base);
        let end = scan_segment(seg, pos, &mut on_record)?;
        pos = end.end;
        if end.torn {
            tracing::warn!(pos, segment = %seg.path.display(), "torn or corrupt log tail; truncating");
            seg.zero_from(pos)?;
            break;
        }
        if !end.segment_done {
            break;
        }
        if i + 1 == segs.len() {
            // The marker ended the last segment: the next append rolls.
            pos = seg.end();
        }
    }
    for seg in &segs[last + 1..] {
        tracing::warn!(segment = %seg.path.display(), "removing a segment past the end of the log");
        std::fs::remove_file(&seg.path).map_err(Error::io(&seg.path))?;
        if let Ok(mut s) = shared.segments.write() {
            s.remove(&seg.base);
        }
    }
    Ok(pos)
}

struct SegmentEnd {
    end: u64,
    torn: bool,
    /// Ended by an end-of-segment marker: the log continues in the next.
    segment_done: bool,
}

/// Scans one segment from `pos` in large reads.
/// How far past the chunk being checked recovery asks to read ahead.
const READ_AHEAD: u64 = 32 << 20;

fn scan_segment(
    seg: &Segment,
    mut pos: u64,
    on_record: &mut impl FnMut(u64, usize, RecordMeta) -> Result<()>,
) -> Result<SegmentEnd> {
    const CHUNK: usize = 4 << 20;
    let mut buf = vec![0u8; CHUNK];
    let (mut filled, mut buf_pos) = (0usize, pos);
    let max_record = seg.size as usize;
    loop {
        let at = (pos - buf_pos) as usize;
        if pos >= seg.end() {
            return Ok(SegmentEnd {
                end: pos,
                torn: false,
                segment_done: true,
            });
        }
        let frame = record::frame(&buf[at..filled], max_record);
        let need = match frame {
            Ok(Frame::Record(n)) if at + n <= filled => {
                // Verified like a read would (without copying the body).
                match record::decode_meta(&buf[at..at + n]) {
                    Ok(m) => {
                        on_record(pos, n, m)?;
                        pos += n as u64;
                        continue;
                    }
                    Err(_) => {
                        return Ok(SegmentEnd {
                            end: pos,
                            torn: true,
                            segment_done: false,
                        })
                    }
                }
            }
            Ok(Frame::Record(n)) => n,
            Ok(Frame::Empty) => {
                return Ok(SegmentEnd {
                    end: pos,
                    torn: false,
                    segment_done: false,
                })
            }
            Ok(Frame::EndOfSegment) => {
                return Ok(SegmentEnd {
                    end: pos,
                    torn: false,
                    segment_done: true,
                })
            }
            Err(crate::DecodeError::Truncated { .. }) => 4,
            Err(_) => {
                return Ok(SegmentEnd {
                    end: pos,
                    torn: true,
                    segment_done: false,
                })
            }
        };
        // Refill from `pos`, large enough for the record.
        if buf.len() < need {
            buf.resize(need, 0);
        }
        // Ask the kernel to read ahead while this chunk is checked: with
        // the files out of the page cache, reading and checking overlap
        // instead of taking turns.
        seg.will_need(pos + buf.len() as u64, READ_AHEAD);
        buf_pos = pos;
        filled = seg.read_at(pos, &mut buf)?;
        if filled < need {
            // The record claims to run past the segment: torn.
            return Ok(SegmentEnd {
                end: pos,
                torn: true,
                segment_done: false,
            });
        }
    }
}
