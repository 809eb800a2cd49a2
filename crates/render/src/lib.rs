//! Renders real, playable H.264 MP4 files for the MiniMax sandbox.
//!
//! A video moves from a first picture to a last one with a wipe: the first picture is the i2v input image or a
//! scene drawn from the prompt's hash, the last is the FL2V end image or another prompt-drawn scene. Output is
//! Constrained Baseline H.264 at 24 fps in an MP4 with `moov` first, which Chromium plays while downloading.
//! The first frame is intra-coded at a fine quantiser (about one level of error per sample); the last frame
//! holds the last picture's samples losslessly.
//!
//! Pure and deterministic: no I/O but the writer it is given, no clock, no randomness but the prompt's hash, so
//! the same request gives the same bytes and the sandbox can cache by `cache_key`.
//!
//! Modules: `input` owns the input images (sniffing, probing, decoding); `picture` the RGB pictures and their
//! YUV planes; `schedule` which macroblock changes when; `bits`, `cavlc`, `intra` and `h264` the bitstream;
//! `mp4` the container.

#![forbid(unsafe_code)]

mod bits;
mod cavlc;
mod h264;
mod input;
mod intra;
mod mp4;
mod picture;
mod schedule;

use std::io::Write;

use sha2::{Digest, Sha256};

pub use input::{decode_image, probe_image, DecodedImage, ImageFormat, ImageInfo, MAX_INPUT_SIDE};

use crate::h264::Encoder;
use crate::picture::{Rng, Yuv420};
use crate::schedule::Schedule;

/// Frames per second of every rendered video.
pub const FPS: u32 = 24;
/// The longest video `render_mp4` accepts, in seconds.
pub const MAX_SECONDS: u32 = 60;
/// Media time units per second in the MP4 track: 512 per frame at 24 fps, the value FFmpeg picks too.
const TIMESCALE: u32 = 12_288;
/// Bumped whenever the output for the same request changes, so caches keyed by `cache_key` never serve stale
/// renders.
const RENDER_VERSION: &str = "reelgate-render/3";
/// Quantisers tried for the intra-coded first picture, finest first; the first whose picture is at most a
/// quarter of the raw size is kept. QP 14 is visually lossless (about one level of error per sample); a quarter
/// of raw meets MinCR at every level (A.3.1), and the coarser steps only matter for noise-like images.
const IDR_QPS: [i32; 4] = [14, 20, 26, 29];
/// How much of the prompt's scene is mixed into the input image to make the last picture of an image-to-video
/// render without an end image (out of 255): enough to see the prompt, little enough to recognise the image.
const I2V_END_BLEND: u8 = 110;

/// Everything that determines a rendered video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderRequest {
    /// Output width in pixels: even, at least 16.
    pub width: u32,
    /// Output height in pixels: even, at least 16.
    pub height: u32,
    /// Length in seconds, 1 ..= 60 (MiniMax makes 6 or 10).
    pub seconds: u32,
    /// Seeds the synthetic pictures and the wipe: different prompts give visibly different frames.
    pub prompt: String,
    /// Image-to-video: the first frame shows this image, scaled and centre-cropped to fill the frame.
    pub first_frame: Option<DecodedImage>,
    /// First-and-last-frame video: the last frame shows this image, scaled and centre-cropped to fill the frame.
    pub last_frame: Option<DecodedImage>,
}

/// Why a render, or reading an input image, failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The bytes are not a JPEG, PNG or WebP file.
    #[error("unsupported image format: expected JPEG, PNG or WebP, but the file starts with [{leading_bytes}]")]
    UnsupportedImageFormat { leading_bytes: String },
    /// The bytes look like a supported format but do not decode.
    #[error("invalid {format} image: {reason}")]
    InvalidImage { format: ImageFormat, reason: String },
    /// The image is wider or taller than `MAX_INPUT_SIDE`, or would need too much memory to decode.
    #[error("{format} image too large: each side must be at most {max_side} pixels")]
    ImageTooLarge { format: ImageFormat, max_side: u32 },
    /// The request's size or length cannot be rendered.
    #[error("invalid render request: {0}")]
    InvalidRequest(String),
    /// The output writer failed.
    #[error("writing the video failed: {0}")]
    Io(#[from] std::io::Error),
}

/// MiniMax's output size for a resolution's P number (768 for 768P, 1080 for 1080P) and, for image-to-video, the
/// first frame's size.
///
/// Without an image the video is 16:9 (1366x768, 1920x1080). With one it keeps the image's aspect ratio with the
/// short side equal to `p` (864x768 from a 9:8 image, 768x1366 from a 9:16 one). Both sides are even (the long
/// one rounded to the nearest even number) and at least 16. The caller checks the image's aspect ratio is
/// sensible (MiniMax accepts 2:5 to 5:2); a very elongated one gives a size `render_mp4` refuses.
pub fn output_size(p: u32, first_frame: Option<(u32, u32)>) -> (u32, u32) {
    let short = p.max(16).next_multiple_of(2);
    let (long_ratio, short_ratio, landscape) = match first_frame {
        Some((w, h)) if w > 0 && h > 0 => (w.max(h), w.min(h), w >= h),
        _ => (16, 9, true),
    };
    // The nearest even number to short * long_ratio / short_ratio, in integers so it is exact.
    let (num, den) = (u64::from(short) * u64::from(long_ratio), u64::from(short_ratio));
    let long = ((num + den) / (2 * den) * 2).max(u64::from(short));
    let long = u32::try_from(long).unwrap_or(u32::MAX - 1);
    if landscape {
        (long, short)
    } else {
        (short, long)
    }
}

/// A stable hex SHA-256 of everything that determines `render_mp4`'s output: the renderer version, size, length,
/// prompt and the input images' pixels. Cheap: the image digests are computed once, when they are decoded.
pub fn cache_key(req: &RenderRequest) -> String {
    let image = |img: &Option<DecodedImage>| img.as_ref().map(|i| *i.digest());
    key(b"pixels", req.width, req.height, req.seconds, &req.prompt, [image(&req.first_frame), image(&req.last_frame)])
}

/// Like `cache_key`, but from the input images' file bytes (as fetched, before `decode_image`), so a cache can be
/// consulted without decoding anything. Decoding is deterministic, so equal bytes mean equal output. The two kinds
/// of key never coincide: a cache must use one kind throughout.
pub fn cache_key_from_image_bytes(
    width: u32,
    height: u32,
    seconds: u32,
    prompt: &str,
    first_frame: Option<&[u8]>,
    last_frame: Option<&[u8]>,
) -> String {
    let digest = |bytes: Option<&[u8]>| bytes.map(|b| Sha256::digest(b).into());
    key(b"bytes", width, height, seconds, prompt, [digest(first_frame), digest(last_frame)])
}

fn key(kind: &[u8], width: u32, height: u32, seconds: u32, prompt: &str, images: [Option<[u8; 32]>; 2]) -> String {
    let mut h = Sha256::new();
    h.update(RENDER_VERSION);
    h.update(kind);
    for n in [width, height, seconds, FPS] {
        h.update(n.to_be_bytes());
    }
    // Length-prefixed, so no prompt can run into the image fields.
    h.update((prompt.len() as u64).to_be_bytes());
    h.update(prompt);
    for image in images {
        match image {
            Some(digest) => {
                h.update([1]);
                h.update(digest);
            }
            None => h.update([0]),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn validate(req: &RenderRequest) -> Result<(), RenderError> {
    let invalid = |msg: String| Err(RenderError::InvalidRequest(msg));
    let (w, h) = (req.width, req.height);
    if w < 16 || h < 16 || w & 1 != 0 || h & 1 != 0 {
        return invalid(format!("size {w}x{h}: both sides must be even and at least 16"));
    }
    let (mbw, mbh) = (w.div_ceil(16), h.div_ceil(16));
    if mbw > h264::MAX_SIDE_MBS || mbh > h264::MAX_SIDE_MBS || mbw * mbh > h264::MAX_FRAME_MBS {
        return invalid(format!(
            "size {w}x{h} is beyond H.264 level 5.1 (at most {} pixels a side and {} pixels in all)",
            h264::MAX_SIDE_MBS * 16,
            h264::MAX_FRAME_MBS * 256
        ));
    }
    if !(1..=MAX_SECONDS).contains(&req.seconds) {
        return invalid(format!("{} seconds: must be 1 to {MAX_SECONDS}", req.seconds));
    }
    Ok(())
}

/// Renders the whole MP4 into `out` and returns the number of bytes written. Deterministic: the same request
/// gives the same bytes.
///
/// The video is encoded into memory first (at most a raw picture and a compressed one, some 1.7 MB at 768p and
/// 3.3 MB at 1080p) because the MP4 index, written before the samples, needs every sample's size.
pub fn render_mp4(req: &RenderRequest, out: &mut impl Write) -> Result<u64, RenderError> {
    validate(req)?;
    let (w, h) = (req.width, req.height);
    let frames = req.seconds * FPS;

    let first_rgb = match &req.first_frame {
        Some(img) => picture::cover(img.image(), w, h),
        None => picture::synthetic(&mut Rng::from_text("first", &req.prompt), w, h),
    };
    let last_rgb = match (&req.last_frame, &req.first_frame) {
        (Some(img), _) => picture::cover(img.image(), w, h),
        (None, Some(_)) => {
            let scene = picture::synthetic(&mut Rng::from_text("last", &req.prompt), w, h);
            picture::blend(&first_rgb, &scene, I2V_END_BLEND)
        }
        (None, None) => picture::synthetic(&mut Rng::from_text("last", &req.prompt), w, h),
    };
    let first = Yuv420::from_rgb(&first_rgb);
    drop(first_rgb);
    let last = Yuv420::from_rgb(&last_rgb);
    drop(last_rgb);

    let mut encoder = Encoder::new(w, h, FPS);
    let (mbw, mbh) = (encoder.mb_width(), encoder.mb_height());
    let plan = Schedule::new(&mut Rng::from_text("sweep", &req.prompt), mbw, mbh, frames);
    // One raw picture for the switch-over, the intra picture, and slack for headers and emulation prevention.
    let raw_picture = (mbw * mbh) as usize * 384;
    let mut samples = Vec::with_capacity(raw_picture + raw_picture / 2 + frames as usize * 64);
    let mut sizes = Vec::with_capacity(frames as usize);
    let mut shown = None;
    for qp in IDR_QPS {
        samples.clear();
        let (size, reconstructed) = encoder.idr(&first, qp, &mut samples);
        shown = Some(reconstructed);
        if size as usize <= raw_picture / 4 {
            break;
        }
    }
    sizes.push(samples.len() as u32);
    // What the decoder shows after the first frame: the intra picture as reconstructed, not the source.
    let shown = shown.expect("IDR_QPS is not empty");
    drop(first);
    let mut coded = Vec::new();
    for switching in plan.frames(frames) {
        // A macroblock that already looks like the last picture needs no update: skipping it is still exact.
        coded.clear();
        coded.extend(switching.iter().map(|&(_, addr)| addr).filter(|&a| !shown.same_macroblock(&last, a as usize)));
        sizes.push(encoder.p_frame(&last, &coded, &mut samples));
    }

    // Streams this encoder makes fit level 5.1 once `validate` passed (an intra picture, then at most one raw
    // picture in all); fall back to it rather than fail if that reasoning is ever wrong.
    let level = h264::choose_level(mbw, mbh, FPS, &sizes).unwrap_or(51);
    let sps = encoder.sps(level);
    let pps = encoder.pps();
    let track = mp4::Track {
        width: w,
        height: h,
        timescale: TIMESCALE,
        sample_delta: TIMESCALE / FPS,
        sps: &sps,
        pps: &pps,
        sample_sizes: &sizes,
    };
    Ok(mp4::write(out, &track, &samples)?)
}

/// `render_mp4` into a new buffer.
pub fn render_mp4_to_vec(req: &RenderRequest) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    render_mp4(req, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(prompt: &str) -> RenderRequest {
        RenderRequest { width: 64, height: 48, seconds: 1, prompt: prompt.into(), first_frame: None, last_frame: None }
    }

    fn image(seed: u8) -> DecodedImage {
        let pixels = (0..32 * 24 * 3).map(|i| (i as u8).wrapping_mul(seed)).collect();
        DecodedImage::from_rgb8(32, 24, pixels).unwrap()
    }

    #[test]
    fn output_sizes_follow_minimax() {
        let cases = [
            (768, None, (1366, 768)),
            (1080, None, (1920, 1080)),
            (512, None, (910, 512)),
            (768, Some((1920, 1080)), (1366, 768)),
            (1080, Some((1280, 720)), (1920, 1080)),
            (768, Some((900, 800)), (864, 768)),
            (768, Some((1080, 1920)), (768, 1366)),
            (1080, Some((720, 1280)), (1080, 1920)),
            (768, Some((1000, 1000)), (768, 768)),
            (1080, Some((4000, 3000)), (1440, 1080)),
            (768, Some((3001, 1000)), (2304, 768)),
            (768, Some((0, 10)), (1366, 768)),
        ];
        for (p, image, expected) in cases {
            assert_eq!(output_size(p, image), expected, "{p}P from {image:?}");
        }
    }

    #[test]
    fn cache_key_is_stable_and_covers_every_input() {
        let base = request("a red fox");
        let key = cache_key(&base);
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key, cache_key(&base.clone()));
        let variants = [
            RenderRequest { width: 66, ..base.clone() },
            RenderRequest { height: 50, ..base.clone() },
            RenderRequest { seconds: 2, ..base.clone() },
            RenderRequest { prompt: "a red fox ".into(), ..base.clone() },
            RenderRequest { first_frame: Some(image(3)), ..base.clone() },
            RenderRequest { last_frame: Some(image(3)), ..base.clone() },
            RenderRequest { first_frame: Some(image(5)), ..base.clone() },
        ];
        let mut keys: Vec<String> = variants.iter().map(cache_key).collect();
        keys.push(key);
        let count = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count, "every change gives a new key");
        // The key depends on the pixels, not on which allocation holds them.
        let a = RenderRequest { first_frame: Some(image(3)), ..base.clone() };
        assert_eq!(cache_key(&a), cache_key(&variants[4]));
        // Pinned: a change here means every cached render is invalidated, which must come with a RENDER_VERSION bump.
        assert_eq!(cache_key(&base), PINNED_KEY);
    }

    const PINNED_KEY: &str = "b042b3dca2cf3ffdbda3b6bbf2e64e610197ebaf962ee17ec7cdbbe71e9ba329";

    /// Caches trust that the same key means the same bytes. This pins the bytes of one small render of each kind,
    /// so a change to the output cannot slip in without bumping RENDER_VERSION. (The synthetic scenes use f32 sin
    /// and sqrt; a platform whose libm rounds differently may need new digests without any code change.)
    #[test]
    fn output_changes_come_with_a_version_bump() {
        let digest = |req: &RenderRequest| {
            Sha256::digest(render_mp4_to_vec(req).unwrap()).iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let t2v = request("a red fox");
        let fl2v = RenderRequest { first_frame: Some(image(3)), last_frame: Some(image(7)), ..request("a red fox") };
        assert_eq!(
            (RENDER_VERSION, digest(&t2v).as_str(), digest(&fl2v).as_str()),
            (
                "reelgate-render/3",
                "8428c9082ad74b901cf8ac3eedda58e62a31a444cebabdf6bd0338cd10252a37",
                "2d20a936c30d1db235ab188240eed59d09b8350bdb2e6f37036daba1206fa86b"
            ),
            "the output changed: bump RENDER_VERSION, then update the version and digests here"
        );
    }

    #[test]
    fn byte_keys_follow_the_bytes() {
        let key = |first: Option<&[u8]>, last: Option<&[u8]>| cache_key_from_image_bytes(64, 48, 1, "fox", first, last);
        let base = key(None, None);
        assert_eq!(base, key(None, None));
        assert_ne!(base, key(Some(b"a"), None));
        assert_ne!(key(Some(b"a"), None), key(None, Some(b"a")));
        assert_ne!(key(Some(b"a"), None), key(Some(b"b"), None));
        assert_ne!(base, cache_key_from_image_bytes(64, 48, 2, "fox", None, None));
        assert_ne!(base, cache_key(&request("fox")), "pixel keys and byte keys never coincide");
    }

    #[test]
    fn rendering_is_deterministic_and_prompt_dependent() {
        let a = render_mp4_to_vec(&request("a red fox")).unwrap();
        assert_eq!(a, render_mp4_to_vec(&request("a red fox")).unwrap());
        assert_ne!(a, render_mp4_to_vec(&request("a blue whale")).unwrap());
        let mut sink = Vec::new();
        assert_eq!(render_mp4(&request("a red fox"), &mut sink).unwrap(), a.len() as u64);
    }

    #[test]
    fn impossible_requests_are_refused() {
        let bad = [
            RenderRequest { width: 15, ..request("x") },
            RenderRequest { width: 65, ..request("x") },
            RenderRequest { height: 8, ..request("x") },
            RenderRequest { width: 8704, height: 16, ..request("x") },
            RenderRequest { width: 4096, height: 4096, ..request("x") },
            RenderRequest { seconds: 0, ..request("x") },
            RenderRequest { seconds: 61, ..request("x") },
        ];
        for req in bad {
            let err = render_mp4_to_vec(&req).unwrap_err();
            assert!(matches!(err, RenderError::InvalidRequest(_)), "{req:?}: {err}");
        }
    }
}
