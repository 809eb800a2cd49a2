//! The two pictures a video moves between, as RGB and as the macroblock-aligned YUV 4:2:0 planes the encoder
//! sends: the prompt-derived synthetic scenes, input images scaled to fill the frame, and the colour conversion.
//!
//! Everything here is a pure function of its inputs (no clocks, no randomness but the prompt's hash), which is
//! what makes renders cacheable.

use image::imageops::{self, FilterType};
use image::RgbImage;
use sha2::{Digest, Sha256};

/// An RGB8 picture of the output size.
pub type Rgb = RgbImage;

/// YUV 4:2:0 planes padded to whole 16x16 macroblocks by repeating the last column and row, which keeps the
/// cropped-away samples similar to their neighbours (nothing shows them, but it is the conventional choice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Yuv420 {
    mb_width: usize,
    mb_height: usize,
    // Crate-visible so the intra encoder can write its reconstruction in place.
    pub(crate) y: Vec<u8>,
    pub(crate) u: Vec<u8>,
    pub(crate) v: Vec<u8>,
}

impl Yuv420 {
    /// Converts `rgb` (even width and height) with the BT.709 matrix to limited range, as the SPS's VUI declares.
    pub fn from_rgb(rgb: &Rgb) -> Self {
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        debug_assert!(w & 1 == 0 && h & 1 == 0);
        let (mb_width, mb_height) = (w.div_ceil(16), h.div_ceil(16));
        let (luma_stride, chroma_stride) = (mb_width * 16, mb_width * 8);
        let mut y = vec![0; luma_stride * mb_height * 16];
        let mut u = vec![0; chroma_stride * mb_height * 8];
        let mut v = vec![0; chroma_stride * mb_height * 8];
        let src = rgb.as_raw();
        for row in 0..h {
            let line = &src[row * w * 3..(row + 1) * w * 3];
            let out = &mut y[row * luma_stride..row * luma_stride + w];
            for (o, px) in out.iter_mut().zip(line.chunks_exact(3)) {
                *o = luma(px[0], px[1], px[2]);
            }
        }
        // Chroma from the average of each 2x2 block, the usual "centre" siting for 4:2:0 frames.
        for crow in 0..h / 2 {
            let top = &src[2 * crow * w * 3..(2 * crow + 1) * w * 3];
            let bottom = &src[(2 * crow + 1) * w * 3..(2 * crow + 2) * w * 3];
            for ccol in 0..w / 2 {
                let i = ccol * 6;
                let sum = |c: usize| {
                    u32::from(top[i + c])
                        + u32::from(top[i + 3 + c])
                        + u32::from(bottom[i + c])
                        + u32::from(bottom[i + 3 + c])
                };
                let (cb, cr) = chroma(sum(0), sum(1), sum(2));
                u[crow * chroma_stride + ccol] = cb;
                v[crow * chroma_stride + ccol] = cr;
            }
        }
        pad(&mut y, luma_stride, w, h);
        pad(&mut u, chroma_stride, w / 2, h / 2);
        pad(&mut v, chroma_stride, w / 2, h / 2);
        Self { mb_width, mb_height, y, u, v }
    }

    /// The luma plane, `luma_stride()` samples a row.
    pub fn y(&self) -> &[u8] {
        &self.y
    }

    /// The Cb plane, `chroma_stride()` samples a row.
    pub fn u(&self) -> &[u8] {
        &self.u
    }

    /// The Cr plane, `chroma_stride()` samples a row.
    pub fn v(&self) -> &[u8] {
        &self.v
    }

    /// Size in macroblocks: (columns, rows).
    pub fn mb_size(&self) -> (usize, usize) {
        (self.mb_width, self.mb_height)
    }

    /// Samples per luma row: the width rounded up to whole macroblocks.
    pub fn luma_stride(&self) -> usize {
        self.mb_width * 16
    }

    /// Samples per chroma row.
    pub fn chroma_stride(&self) -> usize {
        self.mb_width * 8
    }

    /// Whether macroblock `addr` (raster order) holds the same samples in both pictures.
    pub fn same_macroblock(&self, other: &Self, addr: usize) -> bool {
        debug_assert_eq!((self.mb_width, self.mb_height), (other.mb_width, other.mb_height));
        let (mx, my) = (addr % self.mb_width, addr / self.mb_width);
        let rows_equal = |a: &[u8], b: &[u8], stride: usize, size: usize| {
            (0..size).all(|r| {
                let s = (my * size + r) * stride + mx * size;
                a[s..s + size] == b[s..s + size]
            })
        };
        rows_equal(&self.y, &other.y, self.luma_stride(), 16)
            && rows_equal(&self.u, &other.u, self.chroma_stride(), 8)
            && rows_equal(&self.v, &other.v, self.chroma_stride(), 8)
    }
}

// BT.709 limited range in 16-bit fixed point: Y = 16 + 219/255 * (0.2126 R + 0.7152 G + 0.0722 B), and Cb, Cr are
// 128 + 224/255 times the scaled colour differences. Each chroma row sums to zero so greys stay exactly neutral.
const Y_R: i32 = 11_966;
const Y_G: i32 = 40_254;
const Y_B: i32 = 4_064;
const CB_R: i32 = -6_596;
const CB_G: i32 = -22_189;
const CB_B: i32 = 28_785;
const CR_R: i32 = 28_785;
const CR_G: i32 = -26_145;
const CR_B: i32 = -2_640;

fn luma(r: u8, g: u8, b: u8) -> u8 {
    let y = (Y_R * i32::from(r) + Y_G * i32::from(g) + Y_B * i32::from(b) + (16 << 16) + (1 << 15)) >> 16;
    y.clamp(16, 235) as u8
}

/// Cb and Cr from sums of four R, G and B samples.
fn chroma(r4: u32, g4: u32, b4: u32) -> (u8, u8) {
    let (r, g, b) = (r4 as i32, g4 as i32, b4 as i32);
    // The sums are 4x the average, so shift two more bits.
    let cb = (CB_R * r + CB_G * g + CB_B * b + (128 << 18) + (1 << 17)) >> 18;
    let cr = (CR_R * r + CR_G * g + CR_B * b + (128 << 18) + (1 << 17)) >> 18;
    (cb.clamp(16, 240) as u8, cr.clamp(16, 240) as u8)
}

/// Fills a plane's padding (columns from `w`, rows from `h`) by repeating the last real column and row.
fn pad(plane: &mut [u8], stride: usize, w: usize, h: usize) {
    for row in plane.chunks_exact_mut(stride).take(h) {
        let last = row[w - 1];
        row[w..].fill(last);
    }
    let (filled, rest) = plane.split_at_mut(h * stride);
    let last_row = &filled[(h - 1) * stride..];
    for row in rest.chunks_exact_mut(stride) {
        row.copy_from_slice(last_row);
    }
}

/// Scales and centre-crops `src` to exactly `width` x `height`, filling the frame without distortion, as a
/// video model treats its first frame when the aspect ratios differ slightly.
pub fn cover(src: &RgbImage, width: u32, height: u32) -> Rgb {
    let (sw, sh) = (u64::from(src.width()), u64::from(src.height()));
    let (dw, dh) = (u64::from(width), u64::from(height));
    // The largest centred region with the output's aspect ratio.
    let (cw, ch) = if sw * dh > sh * dw { ((sh * dw + dh / 2) / dh, sh) } else { (sw, (sw * dh + dw / 2) / dw) };
    let (cw, ch) = (cw.clamp(1, sw) as u32, ch.clamp(1, sh) as u32);
    let (x, y) = ((src.width() - cw) / 2, (src.height() - ch) / 2);
    if (cw, ch) == (width, height) {
        return imageops::crop_imm(src, x, y, cw, ch).to_image();
    }
    let region = imageops::crop_imm(src, x, y, cw, ch);
    if cw >= 2 * width && ch >= 2 * height {
        // Shrinking a photo at least twofold: an area average is as good as a filter there and several times
        // faster (a 12 MP JPEG to 1080p went from about 250 ms to 40 ms).
        return imageops::thumbnail(&*region, width, height);
    }
    // Triangle (bilinear) is smooth enough for a sandbox and much faster than Lanczos.
    imageops::resize(&*region, width, height, FilterType::Triangle)
}

/// Mixes two pictures of the same size: `amount` 0 is all `a`, 255 all `b`.
pub fn blend(a: &Rgb, b: &Rgb, amount: u8) -> Rgb {
    debug_assert_eq!(a.dimensions(), b.dimensions());
    let (wa, wb) = (255 - u32::from(amount), u32::from(amount));
    let raw =
        a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| ((u32::from(x) * wa + u32::from(y) * wb + 127) / 255) as u8);
    RgbImage::from_raw(a.width(), a.height(), raw.collect()).expect("the buffer has width * height * 3 bytes")
}

/// A deterministic random number stream seeded from text: SplitMix64, small and good enough for layout choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream seeded by SHA-256 of `tag` and `text`, so different tags give unrelated streams for one prompt.
    pub fn from_text(tag: &str, text: &str) -> Self {
        let digest = Sha256::new().chain_update(tag).chain_update([0]).chain_update(text).finalize();
        Self(u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes")))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
}

/// A saturated colour from a hue in turns and a value (brightness), both 0..1.
fn hue_colour(hue: f32, saturation: f32, value: f32) -> [f32; 3] {
    let h = hue.rem_euclid(1.0) * 6.0;
    let c = value * saturation;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let m = value - c;
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// A landscape-like scene whose palette and layout come from `rng`: a sky gradient, a sun, and layers of hills
/// with soft edges. Layout is in units of the picture height, so a scene keeps its look at any size and aspect
/// ratio. Costs one pass over the pixels plus a few operations per hill layer.
pub fn synthetic(rng: &mut Rng, width: u32, height: u32) -> Rgb {
    let base_hue = rng.range(0.0, 1.0);
    let sky_top = hue_colour(base_hue, rng.range(0.4, 0.9), rng.range(0.35, 0.7));
    let sky_low = hue_colour(base_hue + rng.range(0.05, 0.25), rng.range(0.2, 0.6), rng.range(0.8, 1.0));
    let sun_colour = hue_colour(base_hue + rng.range(0.35, 0.65), rng.range(0.3, 0.8), 1.0);
    let aspect = width as f32 / height as f32;
    let (sun_x, sun_y, sun_r) = (rng.range(0.15, 0.85) * aspect, rng.range(0.15, 0.45), rng.range(0.06, 0.16));

    struct Hill {
        base: f32,
        waves: [(f32, f32, f32); 2], // amplitude, frequency, phase
        near: [f32; 3],
        far: [f32; 3],
    }
    let layers = 2 + (rng.next_u64() % 3) as usize;
    let hills: Vec<Hill> = (0..layers)
        .map(|i| {
            let depth = (i + 1) as f32 / layers as f32; // 0 = far, 1 = near
            let hue = base_hue + rng.range(0.2, 0.6);
            let colour = hue_colour(hue, rng.range(0.4, 0.9), 0.75 - 0.45 * depth);
            Hill {
                base: 0.5 + 0.4 * depth * rng.range(0.6, 1.0),
                waves: [
                    (rng.range(0.03, 0.12), rng.range(1.0, 4.0), rng.range(0.0, 6.3)),
                    (rng.range(0.005, 0.03), rng.range(6.0, 15.0), rng.range(0.0, 6.3)),
                ],
                near: colour,
                far: mix(colour, sky_low, 0.35),
            }
        })
        .collect();

    let (w, h) = (width as usize, height as usize);
    let inv_h = 1.0 / height as f32;
    // Each hill's ridge height per column, in pixels, computed once per column instead of per pixel.
    let ridges: Vec<Vec<f32>> = hills
        .iter()
        .map(|hill| {
            (0..w)
                .map(|x| {
                    let fx = x as f32 * inv_h;
                    let wave: f32 = hill.waves.iter().map(|&(a, f, p)| a * (fx * f + p).sin()).sum();
                    (hill.base - wave) * height as f32
                })
                .collect()
        })
        .collect();

    let (glow_r, glow_r2) = (sun_r * 3.0, sun_r * sun_r * 9.0);
    let mut img = RgbImage::new(width, height);
    for (y, row) in img.as_mut().chunks_exact_mut(w * 3).enumerate().take(h) {
        let fy = y as f32 * inv_h;
        let sky = mix(sky_top, sky_low, fy.min(1.0));
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let fx = x as f32 * inv_h;
            let (dx, dy) = (fx - sun_x, fy - sun_y);
            let dist2 = dx * dx + dy * dy;
            let mut c = sky;
            // Glow, then a disc with a one-pixel soft edge; most pixels are outside both, and skip the square root.
            if dist2 < glow_r2 {
                let dist = dist2.sqrt();
                let glow = 1.0 - dist / glow_r;
                c = mix(c, sun_colour, 0.35 * glow * glow);
                let disc = ((sun_r - dist) * height as f32 + 0.5).clamp(0.0, 1.0);
                c = mix(c, sun_colour, disc);
            }
            for (hill, ridge) in hills.iter().zip(&ridges) {
                let cover = (y as f32 + 0.5 - ridge[x]).clamp(0.0, 1.0);
                if cover > 0.0 {
                    // Hills darken towards the bottom of the picture, which reads as depth.
                    let shade = mix(hill.far, hill.near, ((y as f32 - ridge[x]) * inv_h * 3.0).clamp(0.0, 1.0));
                    c = mix(c, shade, cover);
                }
            }
            // `as u8` saturates, and adding 0.5 rounds: f32::round is a libm call on baseline x86-64.
            px[0] = (c[0] + 0.5) as u8;
            px[1] = (c[1] + 0.5) as u8;
            px[2] = (c[2] + 0.5) as u8;
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greys_and_primaries_convert_to_bt709_limited_range() {
        assert_eq!(luma(0, 0, 0), 16);
        assert_eq!(luma(255, 255, 255), 235);
        assert_eq!(chroma(4 * 128, 4 * 128, 4 * 128), (128, 128));
        assert_eq!(chroma(0, 0, 0), (128, 128));
        assert_eq!(chroma(4 * 255, 4 * 255, 4 * 255), (128, 128));
        // BT.709 red: Y 63, Cb 102, Cr 240.
        assert_eq!((luma(255, 0, 0), chroma(4 * 255, 0, 0)), (63, (102, 240)));
        // Blue: Y 32, Cb 240, Cr 118.
        assert_eq!((luma(0, 0, 255), chroma(0, 0, 4 * 255)), (32, (240, 118)));
    }

    #[test]
    fn planes_are_padded_to_whole_macroblocks() {
        let mut rgb = RgbImage::new(18, 2);
        rgb.put_pixel(17, 1, image::Rgb([255, 255, 255]));
        let yuv = Yuv420::from_rgb(&rgb);
        assert_eq!((yuv.luma_stride(), yuv.y().len()), (32, 32 * 16));
        assert_eq!(yuv.y()[17 + 32], 235);
        assert_eq!(yuv.y()[31 + 32 * 15], 235, "the last sample repeats right and down");
        assert_eq!(yuv.y()[16 + 32 * 15], 16);
        assert!(yuv.same_macroblock(&yuv.clone(), 1));
    }

    #[test]
    fn cover_crops_the_longer_side() {
        let mut src = RgbImage::new(40, 10);
        for x in 0..40 {
            for y in 0..10 {
                src.put_pixel(x, y, image::Rgb([if (15..25).contains(&x) { 200 } else { 0 }, 0, 0]));
            }
        }
        // 10x10 from the middle of a 40x10 picture: all of it from columns 15..25.
        let out = cover(&src, 10, 10);
        assert_eq!(out.dimensions(), (10, 10));
        assert!(out.pixels().all(|p| p.0[0] == 200));
        let out = cover(&src, 20, 20);
        assert!(out.pixels().all(|p| p.0[0] > 150), "scaled up, still only the middle");
        // Shrunk fourfold (the area-average path): the middle 40x40 of 160x40 becomes 10x10.
        let wide = RgbImage::from_fn(160, 40, |x, _| image::Rgb([if (60..100).contains(&x) { 200 } else { 0 }, 0, 0]));
        let out = cover(&wide, 10, 10);
        assert!(out.pixels().all(|p| p.0[0] == 200), "{:?}", out.pixels().map(|p| p.0[0]).collect::<Vec<_>>());
    }

    #[test]
    fn scenes_depend_on_the_seed_only() {
        let a = synthetic(&mut Rng::from_text("first", "a red fox"), 64, 36);
        let b = synthetic(&mut Rng::from_text("first", "a red fox"), 64, 36);
        let c = synthetic(&mut Rng::from_text("first", "a blue whale"), 64, 36);
        assert_eq!(a, b);
        let diff: u64 = a.as_raw().iter().zip(c.as_raw()).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
        assert!(diff / a.as_raw().len() as u64 > 10, "different prompts look different");
    }
}
