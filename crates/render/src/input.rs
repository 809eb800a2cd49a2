//! Input images: recognising JPEG, PNG and WebP by their magic bytes, reading their size cheaply, and decoding
//! them to RGB8 with limits, so a hostile file cannot make the server allocate gigabytes.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use image::{DynamicImage, ImageReader, Limits, RgbImage};
use sha2::{Digest, Sha256};

use crate::RenderError;

/// The longest side of an input image that is accepted. MiniMax takes images under 20 MB; 16384 px keeps the
/// decoded RGBA buffer of the worst case (16384 x 16384 x 4 = 1 GiB) out of reach, because the allocation
/// limit below stops it first.
pub const MAX_INPUT_SIDE: u32 = 16_384;
/// The most memory one decode may allocate.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// An input image format MiniMax accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
}

impl ImageFormat {
    /// The format whose magic bytes start `bytes`, if any of the three.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Self::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Self::Png)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Self::Webp)
        } else {
            None
        }
    }

    /// The MIME type, e.g. `image/jpeg`.
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }

    fn to_image_crate(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
            Self::Webp => image::ImageFormat::WebP,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::Webp => "WebP",
        })
    }
}

/// What `probe_image` learns from an image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

/// A decoded input image: RGB8 pixels and a digest of them, shared cheaply between clones.
#[derive(Clone)]
pub struct DecodedImage(Arc<Decoded>);

struct Decoded {
    pixels: RgbImage,
    /// SHA-256 of the size and pixels, computed once so that `cache_key` costs nothing per call.
    digest: [u8; 32],
}

impl DecodedImage {
    /// Wraps RGB8 pixels (`width * height * 3` bytes, row by row); None if the length does not match or a side is 0.
    pub fn from_rgb8(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        if width == 0 || height == 0 {
            return None;
        }
        RgbImage::from_raw(width, height, pixels).map(Self::from_image)
    }

    fn from_image(pixels: RgbImage) -> Self {
        let digest = Sha256::new()
            .chain_update(pixels.width().to_be_bytes())
            .chain_update(pixels.height().to_be_bytes())
            .chain_update(pixels.as_raw())
            .finalize()
            .into();
        Self(Arc::new(Decoded { pixels, digest }))
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.0.pixels.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.0.pixels.height()
    }

    /// The pixels, RGB8 row by row.
    pub fn rgb8(&self) -> &[u8] {
        self.0.pixels.as_raw()
    }

    pub(crate) fn image(&self) -> &RgbImage {
        &self.0.pixels
    }

    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.0.digest
    }
}

impl fmt::Debug for DecodedImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Pixels would flood logs; the size and a digest prefix identify the image.
        f.debug_struct("DecodedImage")
            .field("width", &self.width())
            .field("height", &self.height())
            .field(
                "sha256",
                &format_args!(
                    "{:02x}{:02x}{:02x}{:02x}…",
                    self.0.digest[0], self.0.digest[1], self.0.digest[2], self.0.digest[3]
                ),
            )
            .finish()
    }
}

impl PartialEq for DecodedImage {
    fn eq(&self, other: &Self) -> bool {
        self.0.digest == other.0.digest
    }
}

impl Eq for DecodedImage {}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, RenderError> {
    ImageFormat::sniff(bytes).ok_or_else(|| RenderError::UnsupportedImageFormat {
        leading_bytes: bytes.iter().take(12).map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
    })
}

fn reader(bytes: &[u8], format: ImageFormat) -> ImageReader<Cursor<&[u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_crate());
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader
}

fn decode_error(format: ImageFormat, err: image::ImageError) -> RenderError {
    match err {
        image::ImageError::Limits(_) => RenderError::ImageTooLarge { format, max_side: MAX_INPUT_SIDE },
        other => RenderError::InvalidImage { format, reason: other.to_string() },
    }
}

/// Sniffs the format by magic bytes (JPEG, PNG or WebP only) and reads the size from the header, without decoding
/// the pixels.
pub fn probe_image(bytes: &[u8]) -> Result<ImageInfo, RenderError> {
    let format = sniff(bytes)?;
    let (width, height) = reader(bytes, format).into_dimensions().map_err(|e| decode_error(format, e))?;
    if width == 0 || height == 0 {
        return Err(RenderError::InvalidImage { format, reason: format!("the image is {width}x{height} pixels") });
    }
    if width > MAX_INPUT_SIDE || height > MAX_INPUT_SIDE {
        return Err(RenderError::ImageTooLarge { format, max_side: MAX_INPUT_SIDE });
    }
    Ok(ImageInfo { format, width, height })
}

/// Sniffs the format by magic bytes (JPEG, PNG or WebP only) and decodes the image to RGB8. Transparent pixels
/// are composited over black, so what was invisible cannot leak colours into the video.
pub fn decode_image(bytes: &[u8]) -> Result<DecodedImage, RenderError> {
    let format = sniff(bytes)?;
    let decoded = reader(bytes, format).decode().map_err(|e| decode_error(format, e))?;
    let rgb = if decoded.color().has_alpha() {
        let rgba = decoded.into_rgba8();
        let (w, h) = rgba.dimensions();
        let pixels = rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = u16::from(p[3]);
                [0, 1, 2].map(|c| ((u16::from(p[c]) * a + 127) / 255) as u8)
            })
            .collect();
        RgbImage::from_raw(w, h, pixels).expect("an RGBA image has width * height pixels")
    } else {
        match decoded {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.into_rgb8(),
        }
    };
    Ok(DecodedImage::from_image(rgb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, RgbaImage};

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]))
    }

    fn encode(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn probes_and_decodes_the_three_formats() {
        let img = gradient(40, 30);
        for (format, ours) in [
            (image::ImageFormat::Png, ImageFormat::Png),
            (image::ImageFormat::Jpeg, ImageFormat::Jpeg),
            (image::ImageFormat::WebP, ImageFormat::Webp),
        ] {
            let bytes = encode(&img, format);
            assert_eq!(probe_image(&bytes).unwrap(), ImageInfo { format: ours, width: 40, height: 30 });
            let decoded = decode_image(&bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (40, 30));
            let err: u64 = decoded.rgb8().iter().zip(img.as_raw()).map(|(&a, &b)| u64::from(a.abs_diff(b))).sum();
            assert!(err / img.as_raw().len() as u64 <= 3, "{ours}: pixels survive the round trip");
        }
    }

    #[test]
    fn transparency_is_composited_over_black() {
        let img = RgbaImage::from_fn(4, 2, |x, _| image::Rgba([200, 100, 50, if x < 2 { 255 } else { 0 }]));
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(img.as_raw(), 4, 2, image::ExtendedColorType::Rgba8)
            .unwrap();
        let decoded = decode_image(&bytes).unwrap();
        assert_eq!(&decoded.rgb8()[..6], &[200, 100, 50, 200, 100, 50]);
        assert_eq!(&decoded.rgb8()[6..12], &[0; 6]);
    }

    #[test]
    fn other_formats_and_broken_files_are_named_in_errors() {
        let gif = b"GIF89a\x01\x00\x01\x00";
        let err = probe_image(gif).unwrap_err();
        assert!(matches!(err, RenderError::UnsupportedImageFormat { .. }));
        assert!(err.to_string().contains("47 49 46 38"), "{err}");
        assert!(matches!(decode_image(b"").unwrap_err(), RenderError::UnsupportedImageFormat { .. }));

        let png = encode(&gradient(40, 30), image::ImageFormat::Png);
        let err = decode_image(&png[..png.len() / 2]).unwrap_err();
        assert!(matches!(err, RenderError::InvalidImage { format: ImageFormat::Png, .. }), "{err}");
        assert!(err.to_string().starts_with("invalid PNG image"), "{err}");
        // The header alone is enough to probe.
        assert_eq!(probe_image(&png[..60]).unwrap().width, 40);
        let err = probe_image(&png[..20]).unwrap_err();
        assert!(matches!(err, RenderError::InvalidImage { .. }), "{err}");
    }

    #[test]
    fn oversized_images_are_refused_from_the_header() {
        // A PNG header claiming 20000 x 10 pixels: refused before any pixel is read.
        let png = encode(&gradient(20, 10), image::ImageFormat::Png);
        let mut big = png.clone();
        big[16..20].copy_from_slice(&20_000u32.to_be_bytes()); // IHDR width
        let crc = crc32(&big[12..29]);
        big[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(probe_image(&big).unwrap_err(), RenderError::ImageTooLarge { .. }));
        assert!(matches!(decode_image(&big).unwrap_err(), RenderError::ImageTooLarge { .. }));
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn magic_bytes_decide_the_format() {
        assert_eq!(ImageFormat::sniff(b"RIFF\0\0\0\0WEBPVP8L"), Some(ImageFormat::Webp));
        assert_eq!(ImageFormat::sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(ImageFormat::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::sniff(&[0xFF, 0xD8]), None);
        assert_eq!(ImageFormat::Webp.mime_type(), "image/webp");
    }
}
