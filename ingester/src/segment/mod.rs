//! A segment from its cut to its file: `cutter` decides where one segment ends and the next
//! begins, `segment_writer` turns a segment's record log into the object's bytes, compressing
//! on every core with `parallel_gzip`.

pub mod cutter;
pub mod parallel_gzip;
pub mod segment_writer;
