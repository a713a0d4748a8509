//! A gzip writer that compresses on several cores and still writes one ordinary gzip member.
//!
//! gzip at the fastest level is the largest part of the ingester's CPU, and a single stream
//! compresses on one core. When a large segment is sealed, what its presealing has not yet
//! compressed is done at the end, while the uploader waits for it (the `big` bench: ≈1.4 s for
//! a 500 MB segment). As in pigz, the data is cut into [`BLOCK`]-sized blocks compressed
//! independently, side by side: each block's raw deflate output ends in a sync flush (an empty
//! stored block, so the next block starts on a byte boundary) except the last one's, which ends
//! the stream. Their concatenation is one valid deflate stream; the gzip trailer's CRC32 is
//! combined from the blocks' CRCs. Readers see a plain single-member `.gz` file.
//!
//! Blocks start at fixed offsets of the uncompressed stream, so the output depends only on the
//! bytes written, not on how they were split into writes or on the number of workers. Each
//! block starts with an empty window, which costs about 0.1 % of output size at 1 MiB blocks.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Uncompressed bytes per independently compressed block.
pub const BLOCK: usize = 1 << 20;

/// gzip header as flate2 writes it for the fastest level: no name or time, XFL 4 (fastest),
/// OS 255 (unknown). [`header`] sets XFL for other levels.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// The header for `level`: XFL says "fastest" (4) for level 1, "best" (2) for 9, else 0, as
/// flate2 and gzip(1) write it. Informational only: readers ignore it.
fn header(level: u32) -> [u8; 10] {
    let mut header = HEADER;
    header[8] = match level {
        1 => 4,
        9 => 2,
        _ => 0,
    };
    header
}

pub struct ParallelGzip<W: Write> {
    out: W,
    /// Uncompressed bytes not compressed yet; always starts on a block boundary.
    pending: Vec<u8>,
    /// CRC32 and length of everything compressed so far.
    crc: Crc,
    header_written: bool,
    workers: usize,
    level: Compression,
}

impl<W: Write> ParallelGzip<W> {
    /// Compresses up to `workers` blocks at once (the calling thread is one of them), at
    /// deflate `level` (1 fastest ..= 9 smallest).
    pub fn new(out: W, workers: usize, level: u32) -> ParallelGzip<W> {
        ParallelGzip {
            out,
            pending: Vec::new(),
            crc: Crc::new(),
            header_written: false,
            workers: workers.max(1),
            level: Compression::new(level.clamp(1, 9)),
        }
    }

    /// Takes `data`; once `workers` blocks are complete they are compressed and written.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        if self.pending.len() > BLOCK * self.workers {
            // Whole blocks, but never the last byte: the stream's last block must be the one
            // `finish` compresses. Were the data a whole number of blocks all compressed here,
            // `finish` would end the stream with an extra empty block, and the output would
            // depend on how the bytes were split into writes.
            let whole = (self.pending.len() - 1) / BLOCK * BLOCK;
            self.compress(whole, false)?;
        }
        Ok(())
    }

    /// Compresses what is left, ends the stream with the gzip trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let all = self.pending.len();
        self.compress(all, true)?;
        // ISIZE is the length modulo 2^32, which is what `amount` keeps.
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        self.out.write_all(&trailer)?;
        Ok(self.out)
    }

    /// Compresses and writes `pending[..len]` (whole blocks, or everything when `last`).
    fn compress(&mut self, len: usize, last: bool) -> io::Result<()> {
        if !self.header_written {
            self.out.write_all(&header(self.level.level()))?;
            self.header_written = true;
        }
        let data = &self.pending[..len];
        // At least one block, so that an empty remainder still ends the stream.
        let mut blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
        if blocks.is_empty() {
            blocks.push(&[]);
        }
        let batches: Vec<&[&[u8]]> = blocks.chunks(self.workers).collect();
        let final_batch = batches.len() - 1;
        for (i, batch) in batches.iter().enumerate() {
            for (bytes, crc) in compress_batch(batch, last && i == final_batch, self.level)? {
                self.out.write_all(&bytes)?;
                self.crc.combine(&crc);
            }
        }
        self.pending.drain(..len);
        Ok(())
    }
}

/// Compresses `batch` side by side, in order; the batch's last block ends the stream when
/// `ends_stream`.
///
/// Every allocation (compressor state, output buffer sized for the worst case) is made here, on
/// the calling thread: a short-lived thread that allocates gets its own glibc arena, and the
/// memory freed in those arenas stayed in the ingester's RSS (tens of MB in the bench).
fn compress_batch(
    batch: &[&[u8]],
    ends_stream: bool,
    level: Compression,
) -> io::Result<Vec<(Vec<u8>, Crc)>> {
    let last_index = batch.len().saturating_sub(1);
    let mut jobs: Vec<Job<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, data)| Job {
            data,
            last: ends_stream && i == last_index,
            deflate: Compress::new(level, false),
            out: Vec::with_capacity(deflate_bound(data.len())),
        })
        .collect();
    std::thread::scope(|scope| -> io::Result<()> {
        let mut jobs = jobs.iter_mut();
        let first = jobs.next();
        let others: Vec<_> = jobs.map(|job| scope.spawn(move || job.run())).collect();
        if let Some(job) = first {
            job.run()?;
        }
        for handle in others {
            handle
                .join()
                .map_err(|_| io::Error::other("a gzip worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(jobs
        .into_iter()
        .map(|job| {
            let mut crc = Crc::new();
            crc.update(job.data);
            (job.out, crc)
        })
        .collect())
}

/// Room for a block's deflate output whatever the data: stored blocks add 5 bytes per 64 KiB,
/// plus the flush's empty block and the final block's header.
fn deflate_bound(len: usize) -> usize {
    len + len / 1024 + 1024
}

/// One block as raw deflate: ends in a sync flush, or ends the stream when `last`.
struct Job<'a> {
    data: &'a [u8],
    last: bool,
    deflate: Compress,
    out: Vec<u8>,
}

impl Job<'_> {
    fn run(&mut self) -> io::Result<()> {
        let flush = if self.last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                // Not expected with `deflate_bound`; correct anyway.
                self.out.reserve(64 * 1024);
            }
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(usize::MAX);
            let rest = self.data.get(consumed..).unwrap_or(&[]);
            let status = self
                .deflate
                .compress_vec(rest, &mut self.out, flush)
                .map_err(io::Error::other)?;
            let all_in = usize::try_from(self.deflate.total_in()).ok() == Some(self.data.len());
            // A flush is complete once all input is in and the output was not filled up.
            let done = match status {
                Status::StreamEnd => true,
                Status::Ok | Status::BufError => {
                    !self.last && all_in && self.out.len() < self.out.capacity()
                }
            };
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// JSON-ish lines: compressible, but not trivially.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 100);
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut n = 0u64;
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(format!("{{\"n\":{n},\"d\":\"{:016x}\"}}\n", x).as_bytes());
            n += 1;
        }
        out.truncate(len);
        out
    }

    fn gzip_in_pieces(data: &[u8], piece: usize, workers: usize) -> Vec<u8> {
        let mut gz = ParallelGzip::new(Vec::new(), workers, 1);
        for chunk in data.chunks(piece.max(1)) {
            gz.write_all(chunk).expect("write to a Vec");
        }
        if data.is_empty() {
            gz.write_all(&[]).expect("write to a Vec");
        }
        gz.finish().expect("finish")
    }

    fn gunzip(file: &[u8]) -> Vec<u8> {
        // A single-member decoder: the output must be one gzip member, not several.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut out)
            .expect("a valid gzip file (CRC and length checked)");
        out
    }

    #[test]
    fn round_trips_at_every_block_boundary_as_one_gzip_member() {
        for len in [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            3 * BLOCK + 12_345,
            7 * BLOCK + 3,
        ] {
            let data = sample(len, len as u64);
            for workers in [1, 2, 3] {
                let file = gzip_in_pieces(&data, 100_003, workers);
                assert_eq!(&file[..10], &HEADER);
                assert_eq!(gunzip(&file), data, "len {len}, {workers} workers");
                // Nothing after the member's trailer.
                let mut decoder = flate2::bufread::GzDecoder::new(&file[..]);
                std::io::copy(&mut decoder, &mut std::io::sink()).expect("decode");
                assert!(
                    decoder.into_inner().is_empty(),
                    "one member, no trailing bytes"
                );
            }
        }
    }

    #[test]
    fn incompressible_data_round_trips() {
        let mut x = 88172645463325252u64;
        let data: Vec<u8> = (0..2 * BLOCK + 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect();
        let file = gzip_in_pieces(&data, 65_536, 2);
        assert_eq!(gunzip(&file), data);
        assert!(file.len() <= deflate_bound(data.len()) + 18);
    }

    #[test]
    fn output_depends_only_on_the_bytes_not_on_writes_or_workers() {
        let data = sample(5 * BLOCK + 777, 9);
        let reference = gzip_in_pieces(&data, data.len(), 1);
        for (piece, workers) in [(1 << 16, 1), (4096, 2), (3 * BLOCK, 4), (BLOCK, 2)] {
            assert_eq!(gzip_in_pieces(&data, piece, workers), reference);
        }
        // A length that is a whole number of blocks: whether the last block was compressed by a
        // write (then an empty block ends the stream) or by `finish` must not show.
        for len in [BLOCK, 2 * BLOCK, 4 * BLOCK] {
            let data = sample(len, 3);
            let reference = gzip_in_pieces(&data, data.len(), 8);
            for (piece, workers) in [(BLOCK, 1), (len, 1), (4096, 2), (len, 4), (BLOCK / 2, 3)] {
                let got = gzip_in_pieces(&data, piece, workers);
                assert!(
                    got == reference,
                    "len {len}: writes of {piece}, {workers} workers: {} bytes, not the {} of \
                     one write",
                    got.len(),
                    reference.len()
                );
                assert_eq!(gunzip(&got), data);
            }
        }
        // About as small as one flate2 stream at the same level.
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::fast());
        single.write_all(&data).expect("write to a Vec");
        let single = single.finish().expect("finish");
        assert!(
            reference.len() as f64 <= single.len() as f64 * 1.01,
            "{} vs {}",
            reference.len(),
            single.len()
        );
    }

    #[test]
    fn a_higher_level_is_smaller_and_still_one_member() {
        // Records much alike, as a topic's are (the random `sample` is mostly hex digits, where
        // the levels differ by little and not always in this direction).
        let data: Vec<u8> = (0..60_000u32)
            .flat_map(|n| {
                format!(
                    "{{\"message_id\":\"7:{n}:-1:-1\",\"topic\":\"persistent://public/default/orders\",\"payload\":\"order {} for customer {}\"}}\n",
                    n % 977,
                    n % 89
                )
                .into_bytes()
            })
            .collect();
        let fast = gzip_in_pieces(&data, 65_536, 2);
        let mut gz = ParallelGzip::new(Vec::new(), 2, 9);
        for chunk in data.chunks(65_536) {
            gz.write_all(chunk).expect("write to a Vec");
        }
        let best = gz.finish().expect("finish");
        assert_eq!(best[8], 2, "XFL says best compression");
        assert_eq!(gunzip(&best), data);
        assert!(best.len() < fast.len(), "{} vs {}", best.len(), fast.len());
    }
}
