//! The MP4 (ISO BMFF) container for one H.264 video track: `ftyp`, then `moov`, then `mdat`.
//!
//! `moov` comes first ("fast start") so that a browser can start playing while the file downloads; that needs
//! every sample size before writing, which the renderer has because it encodes into memory first. Only the
//! boxes players need are written; all timestamps are zero, so the same video gives the same bytes.

use std::io::{self, Write};

/// What the container needs to know about the encoded track.
pub struct Track<'a> {
    /// Visible picture size in pixels.
    pub width: u32,
    pub height: u32,
    /// Media time units per second; a frame lasts `sample_delta` units.
    pub timescale: u32,
    pub sample_delta: u32,
    /// The parameter set NAL units, header byte included, for the `avcC` box.
    pub sps: &'a [u8],
    pub pps: &'a [u8],
    /// Each sample's size in bytes, in decoding order; sample 1 is the only sync (IDR) sample.
    pub sample_sizes: &'a [u32],
}

/// The fixed identity matrix of `mvhd` and `tkhd` (16.16 and 2.30 fixed point).
const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];
/// Movie-level time units per second (mvhd, tkhd): milliseconds, like most muxers.
const MOVIE_TIMESCALE: u32 = 1000;

/// Writes the whole file: the headers for `track`, then `payload` (the samples, back to back) as `mdat`.
/// Returns the number of bytes written.
pub fn write(out: &mut impl Write, track: &Track<'_>, payload: &[u8]) -> io::Result<u64> {
    let ftyp = ftyp();
    // The chunk offset depends on moov's own size, which does not depend on the offset's value: build it once to
    // measure, then again with the real offset.
    let mdat_header = mdat_header(payload.len() as u64);
    let probe = moov(track, 0);
    let offset = (ftyp.len() + probe.len() + mdat_header.len()) as u32;
    let moov = moov(track, offset);
    debug_assert_eq!(moov.len(), probe.len());
    out.write_all(&ftyp)?;
    out.write_all(&moov)?;
    out.write_all(&mdat_header)?;
    out.write_all(payload)?;
    Ok((ftyp.len() + moov.len() + mdat_header.len() + payload.len()) as u64)
}

/// Builds a box: reserves the 32-bit size, runs `body`, then patches the size in.
fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    body(out);
    let size = u32::try_from(out.len() - start).expect("header boxes are small");
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A "full box": a box whose body starts with a version byte and 24 bits of flags.
fn full_box(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    boxed(out, kind, |b| {
        b.extend_from_slice(&((u32::from(version) << 24) | flags).to_be_bytes());
        body(b);
    });
}

fn u16s(out: &mut Vec<u8>, values: &[u16]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn ftyp() -> Vec<u8> {
    let mut out = Vec::new();
    boxed(&mut out, b"ftyp", |b| {
        b.extend_from_slice(b"isom");
        u32s(b, &[0x200]);
        b.extend_from_slice(b"isomiso2avc1mp41");
    });
    out
}

fn mdat_header(payload_len: u64) -> Vec<u8> {
    match u32::try_from(payload_len + 8) {
        Ok(size) => [&size.to_be_bytes()[..], b"mdat"].concat(),
        // size 1 means a 64-bit size follows the type.
        Err(_) => [&1u32.to_be_bytes()[..], b"mdat", &(payload_len + 16).to_be_bytes()].concat(),
    }
}

fn moov(t: &Track<'_>, chunk_offset: u32) -> Vec<u8> {
    let frames = t.sample_sizes.len() as u64;
    let media_duration = frames * u64::from(t.sample_delta);
    let movie_duration = media_duration * u64::from(MOVIE_TIMESCALE) / u64::from(t.timescale);
    let movie_duration = u32::try_from(movie_duration).expect("videos are at most minutes long");
    let media_duration = u32::try_from(media_duration).expect("videos are at most minutes long");
    let mut out = Vec::new();
    boxed(&mut out, b"moov", |b| {
        full_box(b, b"mvhd", 0, 0, |b| {
            u32s(b, &[0, 0, MOVIE_TIMESCALE, movie_duration]); // creation, modification, timescale, duration
            u32s(b, &[0x0001_0000]); // rate 1.0
            u16s(b, &[0x0100, 0]); // volume 1.0, reserved
            u32s(b, &[0, 0]);
            u32s(b, &MATRIX);
            u32s(b, &[0; 6]); // pre_defined
            u32s(b, &[2]); // next_track_ID
        });
        boxed(b, b"trak", |b| {
            // flags: track enabled, in movie.
            full_box(b, b"tkhd", 0, 0x3, |b| {
                u32s(b, &[0, 0, 1, 0, movie_duration]); // creation, modification, track_ID, reserved, duration
                u32s(b, &[0, 0]);
                u16s(b, &[0, 0, 0, 0]); // layer, alternate_group, volume (0 for video), reserved
                u32s(b, &MATRIX);
                u32s(b, &[t.width << 16, t.height << 16]);
            });
            boxed(b, b"mdia", |b| {
                full_box(b, b"mdhd", 0, 0, |b| {
                    u32s(b, &[0, 0, t.timescale, media_duration]);
                    u16s(b, &[0x55C4, 0]); // language "und" (packed ISO 639-2/T), pre_defined
                });
                full_box(b, b"hdlr", 0, 0, |b| {
                    u32s(b, &[0]);
                    b.extend_from_slice(b"vide");
                    u32s(b, &[0, 0, 0]);
                    b.extend_from_slice(b"VideoHandler\0");
                });
                boxed(b, b"minf", |b| {
                    full_box(b, b"vmhd", 0, 1, |b| u16s(b, &[0, 0, 0, 0]));
                    boxed(b, b"dinf", |b| {
                        full_box(b, b"dref", 0, 0, |b| {
                            u32s(b, &[1]);
                            full_box(b, b"url ", 0, 1, |_| {}); // flag 1: the media is in this file
                        });
                    });
                    stbl(b, t, chunk_offset);
                });
            });
        });
    });
    out
}

fn stbl(b: &mut Vec<u8>, t: &Track<'_>, chunk_offset: u32) {
    let frames = t.sample_sizes.len() as u32;
    boxed(b, b"stbl", |b| {
        full_box(b, b"stsd", 0, 0, |b| {
            u32s(b, &[1]);
            avc1(b, t);
        });
        // One run of equally long samples.
        full_box(b, b"stts", 0, 0, |b| u32s(b, &[1, frames, t.sample_delta]));
        // Only the first sample is a sync sample (the IDR picture); seeking decodes forward from it.
        full_box(b, b"stss", 0, 0, |b| u32s(b, &[1, 1]));
        // All samples in one chunk: a single-track file has nothing to interleave with.
        full_box(b, b"stsc", 0, 0, |b| u32s(b, &[1, 1, frames, 1]));
        full_box(b, b"stsz", 0, 0, |b| {
            u32s(b, &[0, frames]);
            u32s(b, t.sample_sizes);
        });
        full_box(b, b"stco", 0, 0, |b| u32s(b, &[1, chunk_offset]));
    });
}

fn avc1(b: &mut Vec<u8>, t: &Track<'_>) {
    let width = u16::try_from(t.width).expect("validated: at most 8688 pixels");
    let height = u16::try_from(t.height).expect("validated: at most 8688 pixels");
    boxed(b, b"avc1", |b| {
        b.extend_from_slice(&[0; 6]); // reserved
        u16s(b, &[1]); // data_reference_index
        u16s(b, &[0, 0]);
        u32s(b, &[0, 0, 0]);
        u16s(b, &[width, height]);
        u32s(b, &[0x0048_0000, 0x0048_0000, 0]); // 72 dpi, 72 dpi, reserved
        u16s(b, &[1]); // frame_count
        let mut name = [0u8; 32]; // compressorname: a length byte, then the name
        let label = b"reelgate";
        name[0] = label.len() as u8;
        name[1..=label.len()].copy_from_slice(label);
        b.extend_from_slice(&name);
        u16s(b, &[0x0018, 0xFFFF]); // depth 24, pre_defined -1
        boxed(b, b"avcC", |b| {
            // configurationVersion, then profile, compatibility flags and level copied from the SPS.
            b.extend_from_slice(&[1, t.sps[1], t.sps[2], t.sps[3]]);
            b.push(0xFC | 3); // reserved bits, lengthSizeMinusOne: 4-byte NAL lengths
            b.push(0xE0 | 1); // reserved bits, one SPS
            u16s(b, &[t.sps.len() as u16]);
            b.extend_from_slice(t.sps);
            b.push(1); // one PPS
            u16s(b, &[t.pps.len() as u16]);
            b.extend_from_slice(t.pps);
        });
        // The same colour description as the SPS's VUI, for players that read it from the container.
        boxed(b, b"colr", |b| {
            b.extend_from_slice(b"nclx");
            u16s(b, &[1, 1, 1]); // BT.709 primaries, transfer, matrix
            b.push(0); // limited range
        });
        boxed(b, b"pasp", |b| u32s(b, &[1, 1]));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds the first box of `kind` at any depth in `data`, descending into the container boxes written here.
    fn find<'a>(data: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
        let mut at = 0;
        while at + 8 <= data.len() {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            let this = &data[at + 4..at + 8];
            let body = &data[at + 8..at + size];
            if this == kind {
                return Some(body);
            }
            if [&b"moov"[..], b"trak", b"mdia", b"minf", b"stbl"].contains(&this) {
                if let Some(found) = find(body, kind) {
                    return Some(found);
                }
            }
            at += size;
        }
        None
    }

    #[test]
    fn boxes_are_sized_and_moov_precedes_mdat() {
        let sizes = [10, 4, 4];
        let payload = vec![7u8; 18];
        let track = Track {
            width: 1366,
            height: 768,
            timescale: 12288,
            sample_delta: 512,
            sps: &[0x67, 66, 0xC0, 32, 1],
            pps: &[0x68, 2],
            sample_sizes: &sizes,
        };
        let mut file = Vec::new();
        let n = write(&mut file, &track, &payload).unwrap();
        assert_eq!(n as usize, file.len());
        assert_eq!(&file[4..8], b"ftyp");
        let moov_at = 4 + u32::from_be_bytes(file[..4].try_into().unwrap()) as usize;
        assert_eq!(&file[moov_at..moov_at + 4], b"moov");
        let mvhd = find(&file, b"mvhd").unwrap();
        assert_eq!(&mvhd[12..20], &[0, 0, 0x03, 0xE8, 0, 0, 0, 125], "timescale 1000, 3 frames = 125 ms");
        let stco = find(&file, b"stco").unwrap();
        let offset = u32::from_be_bytes(stco[8..12].try_into().unwrap()) as usize;
        assert_eq!(&file[offset - 4..offset], b"mdat");
        assert_eq!(&file[offset..], &payload[..]);
        let stsz = find(&file, b"stsz").unwrap();
        assert_eq!(&stsz[8..], &[0, 0, 0, 3, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0, 0, 4]);
    }

    #[test]
    fn huge_payloads_get_a_64_bit_mdat_size() {
        assert_eq!(mdat_header(10), [0, 0, 0, 18, b'm', b'd', b'a', b't']);
        let big = mdat_header(u64::from(u32::MAX));
        assert_eq!(&big[..8], &[0, 0, 0, 1, b'm', b'd', b'a', b't']);
        assert_eq!(u64::from_be_bytes(big[8..].try_into().unwrap()), u64::from(u32::MAX) + 16);
    }
}
