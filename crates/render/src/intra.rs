//! Intra coding of the first picture: every macroblock is Intra 16x16 (whole-block prediction from the
//! neighbours already decoded), its residual goes through H.264's 4x4 integer transform and is quantised at one
//! QP, and the coefficients are written with CAVLC.
//!
//! Why not I_PCM here as in later pictures: a raw picture is 384 bytes a macroblock, twice what any level lets a
//! picture be (MinCR, A.3.1), and decoders with tight input buffers (Android's MediaCodec sizes them from exactly
//! that limit) refuse it. Later pictures only change a few macroblocks, so they stay raw and lossless.
//!
//! The encoder reconstructs each macroblock exactly as a decoder will (clause 8.5), because the next macroblocks
//! predict from those samples and later P_Skip macroblocks copy them.

use crate::bits::BitWriter;
use crate::cavlc::{residual_block, MAX_LEVEL};
use crate::picture::Yuv420;

/// Zig-zag scan: scan position -> raster index (row * 4 + column) in a 4x4 block (Table 8-13, frame scan).
const ZIGZAG: [usize; 16] = [0, 1, 4, 8, 5, 2, 3, 6, 9, 12, 13, 10, 7, 11, 14, 15];
/// luma4x4BlkIdx -> (column, row) of the 4x4 block inside its macroblock (6.4.3): 8x8 quadrants in raster order,
/// 4x4 blocks in raster order inside each.
const LUMA_BLOCKS: [(usize, usize); 16] = [
    (0, 0),
    (1, 0),
    (0, 1),
    (1, 1),
    (2, 0),
    (3, 0),
    (2, 1),
    (3, 1),
    (0, 2),
    (1, 2),
    (0, 3),
    (1, 3),
    (2, 2),
    (3, 2),
    (2, 3),
    (3, 3),
];
/// Forward quantisation multipliers by QP % 6 and coefficient class (see `class`): 2^(15 + QP/6) divided by the
/// quantiser step, with the transform's row norms folded in.
const QUANT: [[i32; 3]; 6] = [
    [13107, 5243, 8066],
    [11916, 4660, 7490],
    [10082, 4194, 6554],
    [9362, 3647, 5825],
    [8192, 3355, 5243],
    [7282, 2893, 4559],
];
/// normAdjust4x4 (8-315) by QP % 6 and class: the decoder's scale. With the flat default scaling lists,
/// LevelScale4x4 is 16 times this.
const DEQUANT: [[i32; 3]; 6] = [[10, 16, 13], [11, 18, 14], [13, 20, 16], [14, 23, 18], [16, 25, 20], [18, 29, 23]];

/// Coefficient class of a raster position: 0 both coordinates even, 1 both odd, 2 mixed.
fn class(raster: usize) -> usize {
    match ((raster / 4) % 2, (raster % 4) % 2) {
        (0, 0) => 0,
        (1, 1) => 1,
        _ => 2,
    }
}

/// The forward core transform Cf * X * Cf^T of a 4x4 residual (raster order).
fn forward4x4(x: &[i32; 16]) -> [i32; 16] {
    let mut t = [0; 16];
    for r in 0..4 {
        let row = &x[r * 4..r * 4 + 4];
        let (a, b, c, d) = (row[0] + row[3], row[1] + row[2], row[1] - row[2], row[0] - row[3]);
        t[r * 4..r * 4 + 4].copy_from_slice(&[a + b, 2 * d + c, a - b, d - 2 * c]);
    }
    let mut y = [0; 16];
    for c in 0..4 {
        let (a, b) = (t[c] + t[12 + c], t[4 + c] + t[8 + c]);
        let (cc, d) = (t[4 + c] - t[8 + c], t[c] - t[12 + c]);
        y[c] = a + b;
        y[4 + c] = 2 * d + cc;
        y[8 + c] = a - b;
        y[12 + c] = d - 2 * cc;
    }
    y
}

/// The decoder's inverse transform (8.5.12.2): rows first, then columns, then (x + 32) >> 6.
fn inverse4x4(d: &[i32; 16]) -> [i32; 16] {
    let mut f = [0; 16];
    for i in 0..4 {
        let r = &d[i * 4..i * 4 + 4];
        let (e0, e1, e2, e3) = (r[0] + r[2], r[0] - r[2], (r[1] >> 1) - r[3], r[1] + (r[3] >> 1));
        f[i * 4..i * 4 + 4].copy_from_slice(&[e0 + e3, e1 + e2, e1 - e2, e0 - e3]);
    }
    let mut out = [0; 16];
    for j in 0..4 {
        let (f0, f1, f2, f3) = (f[j], f[4 + j], f[8 + j], f[12 + j]);
        let (g0, g1, g2, g3) = (f0 + f2, f0 - f2, (f1 >> 1) - f3, f1 + (f3 >> 1));
        out[j] = (g0 + g3 + 32) >> 6;
        out[4 + j] = (g1 + g2 + 32) >> 6;
        out[8 + j] = (g1 - g2 + 32) >> 6;
        out[12 + j] = (g0 - g3 + 32) >> 6;
    }
    out
}

/// The 4x4 Hadamard transform H * X * H used for the luma DC coefficients (forward and inverse alike), with H's
/// rows (1 1 1 1), (1 1 -1 -1), (1 -1 -1 1), (1 -1 1 -1) as in 8-320.
fn hadamard4x4(x: &[i32; 16]) -> [i32; 16] {
    let mut t = [0; 16];
    for r in 0..4 {
        let v = &x[r * 4..r * 4 + 4];
        let (a, b, c, d) = (v[0] + v[1], v[2] + v[3], v[0] - v[1], v[2] - v[3]);
        t[r * 4..r * 4 + 4].copy_from_slice(&[a + b, a - b, c - d, c + d]);
    }
    let mut out = [0; 16];
    for c in 0..4 {
        let (a, b, cc, d) = (t[c] + t[4 + c], t[8 + c] + t[12 + c], t[c] - t[4 + c], t[8 + c] - t[12 + c]);
        out[c] = a + b;
        out[4 + c] = a - b;
        out[8 + c] = cc - d;
        out[12 + c] = cc + d;
    }
    out
}

/// The 2x2 Hadamard transform of the chroma DC coefficients (raster order), its own inverse up to scale.
fn hadamard2x2(x: [i32; 4]) -> [i32; 4] {
    [x[0] + x[1] + x[2] + x[3], x[0] - x[1] + x[2] - x[3], x[0] + x[1] - x[2] - x[3], x[0] - x[1] - x[2] + x[3]]
}

fn quantise(value: i32, multiplier: i32, shift: i32, rounding: i32) -> i32 {
    let level = (value.abs() * multiplier + rounding) >> shift;
    // Levels beyond what Baseline CAVLC can carry never occur at the QPs used (>= 12); clamping keeps the
    // bitstream valid regardless, and the reconstruction uses the clamped value, so it stays exact.
    level.min(MAX_LEVEL) * value.signum()
}

/// Prediction modes tried; the numbers are the bitstream's Intra16x16PredMode and intra_chroma_pred_mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Vertical,
    Horizontal,
    Dc,
}

impl Mode {
    fn luma_code(self) -> u32 {
        match self {
            Mode::Vertical => 0,
            Mode::Horizontal => 1,
            Mode::Dc => 2,
        }
    }

    fn chroma_code(self) -> u32 {
        match self {
            Mode::Dc => 0,
            Mode::Horizontal => 1,
            Mode::Vertical => 2,
        }
    }
}

/// Encodes a whole picture as Intra 16x16 macroblocks.
pub struct IntraEncoder<'a> {
    src: &'a Yuv420,
    rec: Yuv420,
    qp: i32,
    mb_width: usize,
    mb_height: usize,
    /// TotalCoeff of every 4x4 block decoded so far (luma, Cb, Cr), for the nC that picks a coeff_token table.
    luma_counts: Vec<u8>,
    chroma_counts: [Vec<u8>; 2],
}

impl<'a> IntraEncoder<'a> {
    /// Prepares to encode `src` at quantiser `qp` (12 ..= 29: from 30 on chroma would need its own QP table).
    pub fn new(src: &'a Yuv420, qp: i32) -> Self {
        assert!((12..30).contains(&qp), "QP {qp} outside 12..30");
        let (mb_width, mb_height) = src.mb_size();
        Self {
            src,
            rec: src.clone(),
            qp,
            mb_width,
            mb_height,
            luma_counts: vec![0; mb_width * 4 * mb_height * 4],
            chroma_counts: [vec![0; mb_width * 2 * mb_height * 2], vec![0; mb_width * 2 * mb_height * 2]],
        }
    }

    /// Writes every macroblock's macroblock_layer() in raster order and returns the picture a decoder will
    /// reconstruct.
    pub fn encode(mut self, w: &mut BitWriter) -> Yuv420 {
        for my in 0..self.mb_height {
            for mx in 0..self.mb_width {
                self.macroblock(w, mx, my);
            }
        }
        self.rec
    }

    fn macroblock(&mut self, w: &mut BitWriter, mx: usize, my: usize) {
        let (luma_mode, luma) = self.luma(mx, my);
        let (chroma_mode, chroma) = self.chroma(mx, my);
        let cbp_luma = luma.ac.iter().any(|b| b.iter().any(|&c| c != 0));
        let any_chroma_ac = chroma.iter().any(|c| c.ac.iter().any(|b| b.iter().any(|&v| v != 0)));
        let any_chroma_dc = chroma.iter().any(|c| c.dc.iter().any(|&v| v != 0));
        let cbp_chroma = if any_chroma_ac { 2 } else { u32::from(any_chroma_dc) };

        // mb_type I_16x16_<mode>_<cbp chroma>_<cbp luma> (Table 7-11).
        w.ue(1 + luma_mode.luma_code() + 4 * cbp_chroma + if cbp_luma { 12 } else { 0 });
        w.ue(chroma_mode.chroma_code());
        w.se(0); // mb_qp_delta: one QP for the whole picture, set in the slice header

        let w4 = self.mb_width * 4;
        let (gx, gy) = (mx * 4, my * 4);
        let dc_list: Vec<i32> = ZIGZAG.iter().map(|&r| luma.dc[r]).collect();
        residual_block(w, &dc_list, nc(&self.luma_counts, w4, gx, gy));
        for &(bx, by) in &LUMA_BLOCKS {
            let (x, y) = (gx + bx, gy + by);
            let total = if cbp_luma {
                let ac = &luma.ac[by * 4 + bx];
                let list: Vec<i32> = ZIGZAG[1..].iter().map(|&r| ac[r]).collect();
                residual_block(w, &list, nc(&self.luma_counts, w4, x, y))
            } else {
                0
            };
            self.luma_counts[y * w4 + x] = total as u8;
        }
        if cbp_chroma > 0 {
            for c in &chroma {
                residual_block(w, &c.dc, -1);
            }
        }
        let w2 = self.mb_width * 2;
        for (plane, c) in chroma.iter().enumerate() {
            for (k, ac) in c.ac.iter().enumerate() {
                let (x, y) = (mx * 2 + k % 2, my * 2 + k / 2);
                let total = if cbp_chroma == 2 {
                    let list: Vec<i32> = ZIGZAG[1..].iter().map(|&r| ac[r]).collect();
                    residual_block(w, &list, nc(&self.chroma_counts[plane], w2, x, y))
                } else {
                    0
                };
                self.chroma_counts[plane][y * w2 + x] = total as u8;
            }
        }
    }

    /// Predicts, transforms, quantises and reconstructs the luma of one macroblock.
    fn luma(&mut self, mx: usize, my: usize) -> (Mode, LumaLevels) {
        let stride = self.src.luma_stride();
        let (x0, y0) = (mx * 16, my * 16);
        let rec = &self.rec.y;
        let top: Option<[i32; 16]> =
            (my > 0).then(|| std::array::from_fn(|i| i32::from(rec[(y0 - 1) * stride + x0 + i])));
        let left: Option<[i32; 16]> =
            (mx > 0).then(|| std::array::from_fn(|i| i32::from(rec[(y0 + i) * stride + x0 - 1])));
        let src: [i32; 256] = std::array::from_fn(|i| i32::from(self.src.y[(y0 + i / 16) * stride + x0 + i % 16]));

        let dc = match (top, left) {
            (Some(t), Some(l)) => (t.iter().sum::<i32>() + l.iter().sum::<i32>() + 16) >> 5,
            (Some(t), None) => (t.iter().sum::<i32>() + 8) >> 4,
            (None, Some(l)) => (l.iter().sum::<i32>() + 8) >> 4,
            (None, None) => 128,
        };
        let predict = |mode: Mode, i: usize| match mode {
            Mode::Vertical => top.expect("vertical needs the row above")[i % 16],
            Mode::Horizontal => left.expect("horizontal needs the column on the left")[i / 16],
            Mode::Dc => dc,
        };
        let mut modes = vec![Mode::Dc];
        modes.extend(top.map(|_| Mode::Vertical));
        modes.extend(left.map(|_| Mode::Horizontal));
        let sad = |mode: Mode| (0..256).map(|i| (src[i] - predict(mode, i)).abs()).sum::<i32>();
        let mode = modes.into_iter().min_by_key(|&m| sad(m)).expect("DC is always possible");

        let (qp6, qmod) = (self.qp / 6, (self.qp % 6) as usize);
        let qbits = 15 + qp6;
        let rounding = (1 << qbits) / 3; // a third of a step, the usual intra choice
        let mut coeffs = [[0i32; 16]; 16]; // by block raster index (row * 4 + column of 4x4 blocks)
        for (b, block) in coeffs.iter_mut().enumerate() {
            let (bx, by) = (b % 4, b / 4);
            let residual: [i32; 16] = std::array::from_fn(|k| {
                let i = (by * 4 + k / 4) * 16 + bx * 4 + k % 4;
                src[i] - predict(mode, i)
            });
            *block = forward4x4(&residual);
        }
        let dc_in: [i32; 16] = std::array::from_fn(|b| coeffs[b][0]);
        let dc_t = hadamard4x4(&dc_in);
        let mut levels = LumaLevels {
            dc: dc_t.map(|c| quantise(c / 2, QUANT[qmod][0], qbits + 1, 2 * rounding)),
            ac: [[0; 16]; 16],
        };
        for (b, block) in coeffs.iter().enumerate() {
            for k in 1..16 {
                levels.ac[b][k] = quantise(block[k], QUANT[qmod][class(k)], qbits, rounding);
            }
        }

        // Reconstruct as 8.5.10 and 8.5.12 describe.
        let f = hadamard4x4(&levels.dc);
        let scale = 16 * DEQUANT[qmod][0];
        let dc_y: [i32; 16] = std::array::from_fn(|k| {
            if qp6 >= 6 {
                (f[k] * scale) << (qp6 - 6)
            } else {
                (f[k] * scale + (1 << (5 - qp6))) >> (6 - qp6)
            }
        });
        for (b, (&dc, ac)) in dc_y.iter().zip(&levels.ac).enumerate() {
            let (bx, by) = (b % 4, b / 4);
            // With flat scaling lists, (c * 16 * v << qP/6) >> 4 is exactly c * v << qP/6.
            let d: [i32; 16] =
                std::array::from_fn(|k| if k == 0 { dc } else { (ac[k] * DEQUANT[qmod][class(k)]) << qp6 });
            for (k, r) in inverse4x4(&d).into_iter().enumerate() {
                let i = (by * 4 + k / 4) * 16 + bx * 4 + k % 4;
                let at = (y0 + i / 16) * stride + x0 + i % 16;
                self.rec.y[at] = (predict(mode, i) + r).clamp(0, 255) as u8;
            }
        }
        (mode, levels)
    }

    /// Predicts, transforms, quantises and reconstructs both chroma blocks of one macroblock with one mode.
    fn chroma(&mut self, mx: usize, my: usize) -> (Mode, [ChromaLevels; 2]) {
        let stride = self.src.chroma_stride();
        let (x0, y0) = (mx * 8, my * 8);
        let mut modes = vec![Mode::Dc];
        if my > 0 {
            modes.push(Mode::Vertical);
        }
        if mx > 0 {
            modes.push(Mode::Horizontal);
        }
        let predictions = |rec: &[u8], mode: Mode| -> [i32; 64] {
            let top = |x: usize| i32::from(rec[(y0 - 1) * stride + x0 + x]);
            let left = |y: usize| i32::from(rec[(y0 + y) * stride + x0 - 1]);
            match mode {
                Mode::Vertical => std::array::from_fn(|i| top(i % 8)),
                Mode::Horizontal => std::array::from_fn(|i| left(i / 8)),
                Mode::Dc => {
                    // 8.3.4.1-3: each 4x4 quarter averages the neighbours it prefers, by its position.
                    let mut dc = [0i32; 4];
                    for (q, value) in dc.iter_mut().enumerate() {
                        let (qx, qy) = (q % 2 * 4, q / 2 * 4);
                        let sum_top = (my > 0).then(|| (0..4).map(|x| top(qx + x)).sum::<i32>());
                        let sum_left = (mx > 0).then(|| (0..4).map(|y| left(qy + y)).sum::<i32>());
                        *value = match (qx > 0, qy > 0, sum_top, sum_left) {
                            (false, false, Some(t), Some(l)) | (true, true, Some(t), Some(l)) => (t + l + 4) >> 3,
                            (true, false, Some(t), _) | (_, _, Some(t), None) => (t + 2) >> 2,
                            (_, _, _, Some(l)) => (l + 2) >> 2,
                            (_, _, None, None) => 128,
                        };
                    }
                    std::array::from_fn(|i| dc[(i / 8 / 4) * 2 + (i % 8) / 4])
                }
            }
        };
        let planes = [&self.src.u, &self.src.v];
        let src: [[i32; 64]; 2] =
            std::array::from_fn(|p| std::array::from_fn(|i| i32::from(planes[p][(y0 + i / 8) * stride + x0 + i % 8])));
        let cost = |mode: Mode| {
            [&self.rec.u, &self.rec.v]
                .iter()
                .zip(&src)
                .map(|(rec, s)| {
                    let pred = predictions(rec, mode);
                    (0..64).map(|i| (s[i] - pred[i]).abs()).sum::<i32>()
                })
                .sum::<i32>()
        };
        let mode = modes.into_iter().min_by_key(|&m| cost(m)).expect("DC is always possible");

        let (qp6, qmod) = (self.qp / 6, (self.qp % 6) as usize);
        let qbits = 15 + qp6;
        let rounding = (1 << qbits) / 3;
        let mut out = [ChromaLevels::default(), ChromaLevels::default()];
        for (p, levels) in out.iter_mut().enumerate() {
            let rec = if p == 0 { &self.rec.u } else { &self.rec.v };
            let pred = predictions(rec, mode);
            let mut coeffs = [[0i32; 16]; 4];
            for (b, block) in coeffs.iter_mut().enumerate() {
                let (bx, by) = (b % 2, b / 2);
                let residual: [i32; 16] = std::array::from_fn(|k| {
                    let i = (by * 4 + k / 4) * 8 + bx * 4 + k % 4;
                    src[p][i] - pred[i]
                });
                *block = forward4x4(&residual);
            }
            let dc_t = hadamard2x2([coeffs[0][0], coeffs[1][0], coeffs[2][0], coeffs[3][0]]);
            levels.dc = dc_t.map(|c| quantise(c, QUANT[qmod][0], qbits + 1, 2 * rounding));
            for (b, block) in coeffs.iter().enumerate() {
                for k in 1..16 {
                    levels.ac[b][k] = quantise(block[k], QUANT[qmod][class(k)], qbits, rounding);
                }
            }
            // Reconstruct (8.5.11.2 for 4:2:0, chroma QP equal to QP below 30).
            let f = hadamard2x2(levels.dc);
            let dc_c: [i32; 4] = std::array::from_fn(|k| ((f[k] * 16 * DEQUANT[qmod][0]) << qp6) >> 5);
            let rec = if p == 0 { &mut self.rec.u } else { &mut self.rec.v };
            for (b, (&dc, ac)) in dc_c.iter().zip(&levels.ac).enumerate() {
                let (bx, by) = (b % 2, b / 2);
                let d: [i32; 16] =
                    std::array::from_fn(|k| if k == 0 { dc } else { (ac[k] * DEQUANT[qmod][class(k)]) << qp6 });
                for (k, r) in inverse4x4(&d).into_iter().enumerate() {
                    let i = (by * 4 + k / 4) * 8 + bx * 4 + k % 4;
                    rec[(y0 + i / 8) * stride + x0 + i % 8] = (pred[i] + r).clamp(0, 255) as u8;
                }
            }
        }
        (mode, out)
    }
}

/// Quantised luma levels of one macroblock: the 16 DC levels (raster order of the 4x4 blocks) and each block's
/// AC levels (raster order inside the block, index 0 unused).
struct LumaLevels {
    dc: [i32; 16],
    ac: [[i32; 16]; 16],
}

/// Quantised levels of one chroma component of a macroblock: 4 DC levels and 4 blocks of AC levels.
#[derive(Default)]
struct ChromaLevels {
    dc: [i32; 4],
    ac: [[i32; 16]; 4],
}

/// nC for the 4x4 block at (x, y) of a grid `width` blocks wide (9.2.1): the rounded mean of the left and upper
/// neighbours' TotalCoeff, or the one that exists, or 0. One slice per picture, so every earlier block counts.
fn nc(counts: &[u8], width: usize, x: usize, y: usize) -> i32 {
    let left = (x > 0).then(|| i32::from(counts[y * width + x - 1]));
    let up = (y > 0).then(|| i32::from(counts[(y - 1) * width + x]));
    match (left, up) {
        (Some(a), Some(b)) => (a + b + 1) >> 1,
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_residual_survives_the_round_trip() {
        // DC only: forward, quantise at QP 12 (qbits 17), dequantise, inverse gives the residual back.
        let x = [7; 16];
        let y = forward4x4(&x);
        assert_eq!(y[0], 16 * 7);
        assert!(y[1..].iter().all(|&c| c == 0));
        let level = quantise(y[0], QUANT[0][0], 17, (1 << 17) / 3);
        let d = [(level * DEQUANT[0][0]) << 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(inverse4x4(&d).iter().all(|&r| (r - 7).abs() <= 1), "{:?}", inverse4x4(&d));
    }

    #[test]
    fn hadamard_is_its_own_inverse_up_to_16() {
        let x: [i32; 16] = std::array::from_fn(|i| (i as i32 * 37) % 11 - 5);
        let back = hadamard4x4(&hadamard4x4(&x));
        assert_eq!(back, x.map(|v| v * 16));
        assert_eq!(hadamard2x2(hadamard2x2([1, 2, 3, 4])), [4, 8, 12, 16]);
    }

    #[test]
    fn coefficient_classes() {
        assert_eq!((0..16).map(class).collect::<Vec<_>>(), [0, 2, 0, 2, 2, 1, 2, 1, 0, 2, 0, 2, 2, 1, 2, 1]);
    }

    /// Decodes one intra picture with FFmpeg and compares it with our reconstruction, sample for sample: any
    /// mismatch in prediction, transform, scaling or CAVLC shows up here (and would drift into later frames).
    #[test]
    fn ffmpeg_decodes_exactly_our_reconstruction() {
        use std::io::Write;
        use std::process::Command;
        if Command::new("ffmpeg").arg("-version").output().is_err() {
            assert!(std::env::var("REELGATE_REQUIRE_FFMPEG").as_deref() != Ok("1"), "ffmpeg not installed");
            let _ = writeln!(std::io::stderr(), "SKIP ffmpeg_decodes_exactly_our_reconstruction: ffmpeg not installed");
            return;
        }
        // Not whole macroblocks, with smooth areas, hard edges and noise, so every mode and table gets used.
        let (w, h) = (200u32, 136u32);
        let mut rng = crate::picture::Rng::from_text("test", "intra");
        let mut rgb = crate::picture::synthetic(&mut rng, w, h);
        for (i, px) in rgb.pixels_mut().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            if x > 120 {
                let n = rng.next_u64();
                px.0 = [n as u8, (n >> 8) as u8, (n >> 16) as u8];
            } else if (x / 9 + y / 7) % 2 == 0 && y > 90 {
                px.0 = [255, 255, 255];
            }
        }
        let src = Yuv420::from_rgb(&rgb);
        for qp in [12, 14, 20, 29] {
            let mut enc = crate::h264::Encoder::new(w, h, 24);
            let mut sample = Vec::new();
            let (size, rec) = enc.idr(&src, qp, &mut sample);
            let (sps, pps) = (enc.sps(51), enc.pps());
            let track = crate::mp4::Track {
                width: w,
                height: h,
                timescale: 12288,
                sample_delta: 512,
                sps: &sps,
                pps: &pps,
                sample_sizes: &[size],
            };
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("idr.mp4");
            crate::mp4::write(&mut std::fs::File::create(&path).unwrap(), &track, &sample).unwrap();
            let out = Command::new("ffmpeg")
                .args(["-v", "error", "-i"])
                .arg(&path)
                .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
                .output()
                .unwrap();
            assert!(out.stderr.is_empty(), "QP {qp}: {}", String::from_utf8_lossy(&out.stderr));
            let (w, h) = (w as usize, h as usize);
            let mut expected = Vec::new();
            for row in 0..h {
                expected.extend_from_slice(&rec.y[row * rec.luma_stride()..][..w]);
            }
            for plane in [&rec.u, &rec.v] {
                for row in 0..h / 2 {
                    expected.extend_from_slice(&plane[row * rec.chroma_stride()..][..w / 2]);
                }
            }
            assert_eq!(out.stdout.len(), expected.len());
            let mismatches = out.stdout.iter().zip(&expected).filter(|(a, b)| a != b).count();
            assert_eq!(mismatches, 0, "QP {qp}: {mismatches} samples differ from FFmpeg's decode");
            // And the reconstruction is close to the source: about a quantiser step.
            let err: f64 =
                rec.y.iter().zip(&src.y).map(|(&a, &b)| f64::from(a.abs_diff(b))).sum::<f64>() / rec.y.len() as f64;
            assert!(err < f64::from(qp) / 4.0, "QP {qp}: mean luma error {err:.2}");
        }
    }
}
