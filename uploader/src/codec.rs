//! Reading an object's records back: the one place that knows how each compression is undone
//! and how each format is parsed, so `verify --deep`, restore and anything else that reads
//! objects accept everything a rule can write (JSON Lines in gzip, zstd or none; Parquet).
//!
//! gzip is read with a multi-member decoder (concatenated members are one valid `.gz` file, and
//! other tools write them); zstd likewise reads every frame of the object, and fails on a cut
//! frame or a frame checksum that does not match.

use std::io::{Read as _, Write};

use bytes::Bytes;
use proto::types::parquet_record::read_records;
use proto::types::{decode_record, Compression, Format, Record};

/// An object whose bytes are not what its compression says.
#[derive(Debug, thiserror::Error)]
#[error("{key}: not {compression}: {source}")]
pub struct CodecError {
    pub key: String,
    pub compression: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The compression of an object: from the `content_encoding` its manifest entry or segment
/// records when there is one, else from the key's extension.
pub fn compression_of(content_encoding: &str, key: &str) -> Compression {
    if content_encoding.is_empty() {
        Compression::from_key(key)
    } else {
        Compression::from_content_encoding(content_encoding)
    }
}

/// Every record of an object read whole into memory, in the object's order: its JSON lines (in
/// any compression) or its Parquet rows. An error names the key and what is wrong.
pub fn records_of(key: &str, bytes: Bytes) -> Result<Vec<Record>, String> {
    if Format::from_key(key) == Format::Parquet {
        return read_records(bytes)
            .map_err(|e| format!("{key}: {e}"))?
            .map(|record| record.map_err(|e| format!("{key}: {e}")))
            .collect();
    }
    let text = decompress(compression_of("", key), key, &bytes).map_err(|e| e.to_string())?;
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| decode_record(line).map_err(|e| format!("{key}: {e}")))
        .collect()
}

/// The uncompressed bytes of a whole object read into memory.
pub fn decompress(
    compression: Compression,
    key: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let read = match compression {
        Compression::Gzip => flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out),
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
        }
        Compression::None => {
            out.extend_from_slice(bytes);
            Ok(out.len())
        }
    };
    read.map_err(|source| CodecError {
        key: key.to_string(),
        compression: compression.as_str(),
        source,
    })?;
    Ok(out)
}

/// Decompresses what is written to it into `W`, for objects read as a stream.
pub enum StreamDecoder<W: Write> {
    Gzip(Box<flate2::write::MultiGzDecoder<W>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, W>>),
    Plain(W),
}

impl<W: Write> StreamDecoder<W> {
    pub fn new(compression: Compression, out: W) -> std::io::Result<StreamDecoder<W>> {
        Ok(match compression {
            Compression::Gzip => {
                StreamDecoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(out)))
            }
            Compression::Zstd => {
                StreamDecoder::Zstd(Box::new(zstd::stream::write::Decoder::new(out)?))
            }
            Compression::None => StreamDecoder::Plain(out),
        })
    }

    pub fn write_all(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            StreamDecoder::Gzip(d) => d.write_all(chunk),
            StreamDecoder::Zstd(d) => d.write_all(chunk),
            StreamDecoder::Plain(w) => w.write_all(chunk),
        }
    }

    /// Ends the stream: an error if it stopped inside a gzip member or a zstd frame.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            StreamDecoder::Gzip(d) => d.finish(),
            StreamDecoder::Zstd(d) => d.finish(),
            StreamDecoder::Plain(w) => Ok(w),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &[u8] = b"{\"message_id\":\"1:0:-1:-1\"}\n{\"message_id\":\"1:1:-1:-1\"}\n";

    fn compressed(compression: Compression) -> Vec<u8> {
        match compression {
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(TEXT).expect("gzip");
                enc.finish().expect("gzip")
            }
            Compression::Zstd => zstd::encode_all(TEXT, 3).expect("zstd"),
            Compression::None => TEXT.to_vec(),
        }
    }

    #[test]
    fn every_compression_round_trips_whole_and_streamed() {
        for compression in Compression::ALL {
            let bytes = compressed(compression);
            assert_eq!(
                decompress(compression, "k", &bytes).expect("whole"),
                TEXT,
                "{compression:?}"
            );
            let mut stream = StreamDecoder::new(compression, Vec::new()).expect("decoder");
            for piece in bytes.chunks(7) {
                stream.write_all(piece).expect("write");
            }
            assert_eq!(stream.finish().expect("finish"), TEXT, "{compression:?}");
        }
    }

    #[test]
    fn a_cut_or_damaged_object_is_an_error_naming_the_key() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let bytes = compressed(compression);
            let cut = &bytes[..bytes.len() - 3];
            let err = decompress(compression, "a/b.x", cut).expect_err("cut");
            assert!(err.to_string().starts_with("a/b.x: not "), "{err}");
            let mut stream = StreamDecoder::new(compression, Vec::new()).expect("decoder");
            let early = stream.write_all(cut);
            assert!(
                early.is_err() || stream.finish().is_err(),
                "{compression:?}: a cut stream must not finish cleanly"
            );
        }
        // A flipped byte in zstd's content is caught by the frame checksum (or the format).
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.include_checksum(true).expect("checksum flag");
        enc.write_all(TEXT).expect("write");
        let mut bytes = enc.finish().expect("finish");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(decompress(Compression::Zstd, "k", &bytes).is_err());
    }

    #[test]
    fn the_encoding_wins_over_the_key_and_the_key_fills_in() {
        assert_eq!(compression_of("zstd", "x.jsonl"), Compression::Zstd);
        assert_eq!(compression_of("identity", "x.jsonl.gz"), Compression::None);
        assert_eq!(compression_of("", "x.jsonl.zst"), Compression::Zstd);
        assert_eq!(compression_of("", "x.jsonl.gz"), Compression::Gzip);
        assert_eq!(compression_of("", "x.jsonl"), Compression::None);
    }
}
