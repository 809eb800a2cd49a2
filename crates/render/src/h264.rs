//! A deliberately small H.264 encoder: Constrained Baseline, CAVLC, one slice per picture. The first picture is
//! Intra 16x16 (see `intra`); later pictures have only two kinds of macroblock: I_PCM (raw samples) and P_Skip
//! (copy from the previous picture).
//!
//! Why this shape: the sandbox needs real, decodable H.264 without shipping or installing an encoder. I_PCM is
//! lossless and needs no transform, prediction or entropy coding, and P_Skip costs a few bits, so a picture
//! that changes in a few macroblocks costs only those macroblocks' raw samples. The renderer decides what
//! changes; this module only turns "these macroblocks now look like this" into NAL units.
//!
//! Exactness: every P_Skip macroblock here gets the motion vector (0, 0), because its neighbours are either
//! intra or P_Skip with (0, 0) themselves (spec 8.4.1.1 and 8.4.1.3), and deblocking is switched off in every
//! slice header. So each decoded P picture equals, sample for sample, what was sent or kept.

use crate::bits::{push_nal, BitWriter};
use crate::intra::IntraEncoder;
use crate::picture::Yuv420;

/// profile_idc for Baseline.
pub const PROFILE_IDC: u8 = 66;
/// constraint_set0_flag and constraint_set1_flag: Constrained Baseline, which every H.264 decoder supports.
pub const CONSTRAINT_FLAGS: u8 = 0b1100_0000;
/// frame_num is written in this many bits; it wraps, which the spec allows, but 60 s at 24 fps never gets there.
const LOG2_MAX_FRAME_NUM: u32 = 16;
/// mb_type of I_PCM in a P slice: 25 in an I slice (Table 7-11), and intra types are offset by 5 in P slices
/// (Table 7-13).
const MB_TYPE_I_PCM_IN_P: u32 = 5 + 25;
const NAL_SLICE: u8 = 1;
const NAL_IDR_SLICE: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Writes one stream's parameter sets and pictures.
pub struct Encoder {
    /// The visible size; the coded size is rounded up to whole macroblocks and cropped back in the SPS.
    width: u32,
    height: u32,
    mb_width: u32,
    mb_height: u32,
    frame_num: u32,
    fps: u32,
    /// Scratch RBSP buffer, reused so a 3 MB IDR picture is not reallocated per frame.
    rbsp: BitWriter,
}

impl Encoder {
    /// An encoder for pictures of `width` x `height` (both even and non-zero) shown at `fps` frames a second.
    pub fn new(width: u32, height: u32, fps: u32) -> Self {
        debug_assert!(width & 1 == 0 && height & 1 == 0 && width > 0 && height > 0);
        Self {
            width,
            height,
            mb_width: width.div_ceil(16),
            mb_height: height.div_ceil(16),
            frame_num: 0,
            fps,
            rbsp: BitWriter::default(),
        }
    }

    /// Macroblocks per row.
    pub fn mb_width(&self) -> u32 {
        self.mb_width
    }

    /// Macroblock rows.
    pub fn mb_height(&self) -> u32 {
        self.mb_height
    }

    /// The sequence parameter set NAL unit (header byte included, no length prefix), declaring `level_idc`.
    pub fn sps(&self, level_idc: u8) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.bits(u32::from(PROFILE_IDC), 8);
        w.bits(u32::from(CONSTRAINT_FLAGS), 8); // constraint_set0..5 flags and reserved_zero_2bits
        w.bits(u32::from(level_idc), 8);
        w.ue(0); // seq_parameter_set_id
        w.ue(LOG2_MAX_FRAME_NUM - 4);
        // pic_order_cnt_type 2: output order is decoding order, derived from frame_num, so no POC is sent.
        w.ue(2);
        w.ue(1); // max_num_ref_frames: P pictures refer to the one before
        w.flag(false); // gaps_in_frame_num_value_allowed_flag
        w.ue(self.mb_width - 1);
        w.ue(self.mb_height - 1); // pic_height_in_map_units_minus1 (frames only, so map units are macroblocks)
        w.flag(true); // frame_mbs_only_flag
        w.flag(true); // direct_8x8_inference_flag (unused without B slices; 1 is the usual value)
                      // Sizes such as 1366x768 are not whole macroblocks: code 1376 wide and crop. Crop units are 2 luma
                      // samples in each direction for 4:2:0 frames, hence the even sizes.
        let crop_right = (self.mb_width * 16 - self.width) / 2;
        let crop_bottom = (self.mb_height * 16 - self.height) / 2;
        let cropping = crop_right > 0 || crop_bottom > 0;
        w.flag(cropping);
        if cropping {
            w.ue(0);
            w.ue(crop_right);
            w.ue(0);
            w.ue(crop_bottom);
        }
        w.flag(true); // vui_parameters_present_flag
        self.vui(&mut w);
        w.trailing_bits();
        let mut nal = Vec::new();
        push_nal(&mut nal, 3, NAL_SPS, w.as_bytes());
        nal
    }

    /// VUI: square pixels, BT.709 limited-range colour (what `picture` converts to), the frame rate, and
    /// "no reordering", which lets players show each picture as soon as it is decoded.
    fn vui(&self, w: &mut BitWriter) {
        w.flag(true); // aspect_ratio_info_present_flag
        w.bits(1, 8); // aspect_ratio_idc 1: 1:1
        w.flag(false); // overscan_info_present_flag
        w.flag(true); // video_signal_type_present_flag
        w.bits(5, 3); // video_format: unspecified
        w.flag(false); // video_full_range_flag: 16..235 luma
        w.flag(true); // colour_description_present_flag
        w.bits(1, 8); // colour_primaries: BT.709
        w.bits(1, 8); // transfer_characteristics: BT.709
        w.bits(1, 8); // matrix_coefficients: BT.709
        w.flag(false); // chroma_loc_info_present_flag
        w.flag(true); // timing_info_present_flag
        w.bits(1, 32); // num_units_in_tick
        w.bits(2 * self.fps, 32); // time_scale: a frame is two ticks (one per field in the spec's model)
        w.flag(true); // fixed_frame_rate_flag
        w.flag(false); // nal_hrd_parameters_present_flag
        w.flag(false); // vcl_hrd_parameters_present_flag
        w.flag(false); // pic_struct_present_flag
        w.flag(true); // bitstream_restriction_flag
        w.flag(true); // motion_vectors_over_pic_boundaries_flag
        w.ue(0); // max_bytes_per_pic_denom: only the level limits (a P picture may be almost all I_PCM)
        w.ue(0); // max_bits_per_mb_denom: no limit
        w.ue(16); // log2_max_mv_length_horizontal
        w.ue(16); // log2_max_mv_length_vertical
        w.ue(0); // max_num_reorder_frames
        w.ue(1); // max_dec_frame_buffering
    }

    /// The picture parameter set NAL unit (header byte included, no length prefix).
    pub fn pps(&self) -> Vec<u8> {
        let mut w = BitWriter::default();
        w.ue(0); // pic_parameter_set_id
        w.ue(0); // seq_parameter_set_id
        w.flag(false); // entropy_coding_mode_flag: CAVLC
        w.flag(false); // bottom_field_pic_order_in_frame_present_flag
        w.ue(0); // num_slice_groups_minus1
        w.ue(0); // num_ref_idx_l0_default_active_minus1
        w.ue(0); // num_ref_idx_l1_default_active_minus1
        w.flag(false); // weighted_pred_flag
        w.bits(0, 2); // weighted_bipred_idc
        w.se(0); // pic_init_qp_minus26
        w.se(0); // pic_init_qs_minus26
        w.se(0); // chroma_qp_index_offset
        w.flag(true); // deblocking_filter_control_present_flag: lets slices switch deblocking off
        w.flag(false); // constrained_intra_pred_flag
        w.flag(false); // redundant_pic_cnt_present_flag
        w.trailing_bits();
        let mut nal = Vec::new();
        push_nal(&mut nal, 3, NAL_PPS, w.as_bytes());
        nal
    }

    /// Appends the IDR picture showing `pic`, intra-coded at quantiser `qp` (12 ..= 29), to `out` as one
    /// length-prefixed NAL unit (MP4 sample format). Returns the bytes appended and the picture a decoder will
    /// reconstruct, which later P_Skip macroblocks repeat.
    pub fn idr(&mut self, pic: &Yuv420, qp: i32, out: &mut Vec<u8>) -> (u32, Yuv420) {
        self.frame_num = 0;
        self.rbsp.clear();
        self.slice_header(true, qp);
        let reconstructed = IntraEncoder::new(pic, qp).encode(&mut self.rbsp);
        self.rbsp.trailing_bits();
        (self.finish_nal(NAL_IDR_SLICE, out), reconstructed)
    }

    /// Appends a P picture to `out` in which the macroblocks `coded` (raster addresses, strictly increasing) are
    /// replaced by `pic`'s samples and every other macroblock repeats the previous picture; returns the bytes
    /// appended.
    pub fn p_frame(&mut self, pic: &Yuv420, coded: &[u32], out: &mut Vec<u8>) -> u32 {
        self.frame_num = (self.frame_num + 1) % (1 << LOG2_MAX_FRAME_NUM);
        let total = self.mb_width * self.mb_height;
        self.rbsp.clear();
        self.slice_header(false, 26);
        let mut next = 0; // the first macroblock not yet covered
        for &addr in coded {
            assert!(addr >= next && addr < total, "coded macroblocks must be increasing and inside the picture");
            self.rbsp.ue(addr - next); // mb_skip_run
            self.rbsp.ue(MB_TYPE_I_PCM_IN_P);
            self.pcm_samples(pic, addr);
            next = addr + 1;
        }
        // A final skip run covers the rest; when the last macroblock was coded the slice simply ends, since
        // more_rbsp_data() is then false.
        if next < total {
            self.rbsp.ue(total - next);
        }
        self.rbsp.trailing_bits();
        self.finish_nal(NAL_SLICE, out)
    }

    fn slice_header(&mut self, idr: bool, qp: i32) {
        let w = &mut self.rbsp;
        w.ue(0); // first_mb_in_slice
        w.ue(if idr { 7 } else { 5 }); // slice_type: I or P, +5 meaning every slice of the picture has this type
        w.ue(0); // pic_parameter_set_id
        w.bits(self.frame_num, LOG2_MAX_FRAME_NUM);
        if idr {
            w.ue(0); // idr_pic_id
        } else {
            w.flag(false); // num_ref_idx_active_override_flag
            w.flag(false); // ref_pic_list_modification_flag_l0
        }
        // dec_ref_pic_marking(): every picture is a reference, marked by the sliding window.
        if idr {
            w.flag(false); // no_output_of_prior_pics_flag
            w.flag(false); // long_term_reference_flag
        } else {
            w.flag(false); // adaptive_ref_pic_marking_mode_flag
        }
        w.se(qp - 26); // slice_qp_delta from pic_init_qp 26: the intra QP (P pictures have no residual)
        w.ue(1); // disable_deblocking_filter_idc 1: pictures stay exactly what the encoder reconstructs
    }

    /// I_PCM payload: zero bits to the byte boundary, then the 16x16 luma samples and the two 8x8 chroma
    /// blocks (Cb then Cr), each in raster order (7.3.5).
    fn pcm_samples(&mut self, pic: &Yuv420, addr: u32) {
        let (mx, my) = ((addr % self.mb_width) as usize, (addr / self.mb_width) as usize);
        self.rbsp.align_zero();
        let stride = pic.luma_stride();
        for row in 0..16 {
            let start = (my * 16 + row) * stride + mx * 16;
            self.rbsp.aligned_bytes(&pic.y()[start..start + 16]);
        }
        let stride = pic.chroma_stride();
        for plane in [pic.u(), pic.v()] {
            for row in 0..8 {
                let start = (my * 8 + row) * stride + mx * 8;
                self.rbsp.aligned_bytes(&plane[start..start + 8]);
            }
        }
    }

    fn finish_nal(&mut self, nal_unit_type: u8, out: &mut Vec<u8>) -> u32 {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        let nal_len = push_nal(out, 2 + u8::from(nal_unit_type == NAL_IDR_SLICE), nal_unit_type, self.rbsp.as_bytes());
        let nal_len = u32::try_from(nal_len).expect("a picture of at most 36864 I_PCM macroblocks is under 4 GiB");
        out[at..at + 4].copy_from_slice(&nal_len.to_be_bytes());
        nal_len + 4
    }
}

/// One row of Table A-1 (and A-2 for Baseline): the limits a level promises a decoder will not be asked to
/// exceed.
struct LevelLimits {
    level_idc: u8,
    /// Macroblocks per second.
    max_mbps: u64,
    /// Macroblocks per picture.
    max_fs: u64,
    /// kbit/s (Baseline's VCL factor is 1000 bit per unit).
    max_br: u64,
    /// kbit.
    max_cpb: u64,
    min_cr: u64,
}

const fn lim(level_idc: u8, max_mbps: u64, max_fs: u64, max_br: u64, max_cpb: u64, min_cr: u64) -> LevelLimits {
    LevelLimits { level_idc, max_mbps, max_fs, max_br, max_cpb, min_cr }
}

// Level 1b is left out: Baseline signals it with constraint_set3_flag, and some decoders mishandle it.
const LEVELS: [LevelLimits; 15] = [
    lim(10, 1_485, 99, 64, 175, 2),
    lim(11, 3_000, 396, 192, 500, 2),
    lim(12, 6_000, 396, 384, 1_000, 2),
    lim(13, 11_880, 396, 768, 2_000, 2),
    lim(20, 11_880, 396, 2_000, 2_000, 2),
    lim(21, 19_800, 792, 4_000, 4_000, 2),
    lim(22, 20_250, 1_620, 4_000, 4_000, 2),
    lim(30, 40_500, 1_620, 10_000, 10_000, 2),
    lim(31, 108_000, 3_600, 14_000, 14_000, 4),
    lim(32, 216_000, 5_120, 20_000, 20_000, 4),
    lim(40, 245_760, 8_192, 20_000, 25_000, 4),
    lim(41, 245_760, 8_192, 50_000, 62_500, 2),
    lim(42, 522_240, 8_704, 50_000, 62_500, 2),
    lim(50, 589_824, 22_080, 135_000, 135_000, 2),
    lim(51, 983_040, 36_864, 240_000, 240_000, 2),
];

/// The largest picture any level allows, in macroblocks (level 5.1's MaxFS).
pub const MAX_FRAME_MBS: u32 = 36_864;
/// The longest picture side any level allows, in macroblocks: sqrt(8 * MaxFS) for level 5.1 (A.3.1 f, g).
pub const MAX_SIDE_MBS: u32 = 543;

/// The lowest level whose limits this stream meets, or None if even level 5.1 is exceeded.
///
/// `frame_bytes` are the sizes of the pictures in decoding order. Checked: picture size and sides (A.3.1 f, g),
/// macroblock rate, the picture size bound MinCR sets (A.3.1: 384 bytes a macroblock divided by MinCR, which
/// is why the first picture is intra-coded rather than raw), and that a hypothetical decoder buffer of the
/// level's MaxCPB, filled at MaxBR from the start and drained one picture per frame period after an initial
/// delay of MaxCPB / MaxBR, never runs dry (C.3, variable bit rate). Decoders seldom enforce levels, but
/// hardware decoders size their buffers from them, so the declared level must be honest.
pub fn choose_level(mb_width: u32, mb_height: u32, fps: u32, frame_bytes: &[u32]) -> Option<u8> {
    let fs = u64::from(mb_width) * u64::from(mb_height);
    let fps = u64::from(fps);
    LEVELS
        .iter()
        .find(|l| fits(l, fs, u64::from(mb_width), u64::from(mb_height), fps, frame_bytes))
        .map(|l| l.level_idc)
}

fn fits(l: &LevelLimits, fs: u64, mbw: u64, mbh: u64, fps: u64, frame_bytes: &[u32]) -> bool {
    if fs > l.max_fs || mbw * mbw > 8 * l.max_fs || mbh * mbh > 8 * l.max_fs || fs * fps > l.max_mbps {
        return false;
    }
    let rate = l.max_br * 1000; // bit/s
    let cpb = l.max_cpb * 1000; // bit
                                // The first picture may hold at most 384 * Max(PicSizeInMbs, MaxMBPS / 172) / MinCR bytes, a later one
                                // 384 * MaxMBPS * (one frame period) / MinCR (A.3.1). Work in bit * fps units so everything stays an integer.
    let first_limit = 384 * 8 * fs.max(l.max_mbps / 172) * fps / l.min_cr;
    let later_limit = 384 * 8 * l.max_mbps / l.min_cr;
    let per_frame = rate; // bits * fps arriving per frame period
    let mut fullness = cpb * fps; // the buffer is full when the first picture is removed
    let mut remaining: u64 = frame_bytes.iter().map(|&b| u64::from(b) * 8 * fps).sum();
    for (i, &bytes) in frame_bytes.iter().enumerate() {
        let bits = u64::from(bytes) * 8 * fps;
        if bits > if i == 0 { first_limit } else { later_limit } {
            return false;
        }
        if i > 0 {
            fullness = (fullness + per_frame).min(cpb * fps).min(remaining);
        }
        if bits > fullness {
            return false;
        }
        fullness -= bits;
        remaining -= bits;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_follow_picture_size_and_rate() {
        let p = |first: u32, n: usize| {
            let mut v = vec![11_000; n];
            v[0] = first;
            v
        };
        // 1366x768 (86x48 macroblocks) with a 300 kB intra picture first: level 3.2 (MinCR 4 allows 396 kB).
        assert_eq!(choose_level(86, 48, 24, &p(300_000, 144)), Some(32));
        // 1920x1080 (120x68): level 4.0 allows a 783 kB first picture, 4.1 twice that.
        assert_eq!(choose_level(120, 68, 24, &p(500_000, 240)), Some(40));
        assert_eq!(choose_level(120, 68, 24, &p(1_000_000, 240)), Some(41));
        // A raw 1080p picture (384 bytes a macroblock) breaks MinCR at every level.
        assert_eq!(choose_level(120, 68, 24, &p(8160 * 386, 240)), None);
        // 1080x1920 portrait: 120 macroblocks tall is within level 4.0's sqrt(8 * 8192) = 256.
        assert_eq!(choose_level(68, 120, 24, &p(500_000, 240)), Some(40));
        // 2700x1080 (5:2): too many macroblocks for level 4.2.
        assert_eq!(choose_level(169, 68, 24, &p(500_000, 240)), Some(50));
        // Too big for any level.
        assert_eq!(choose_level(600, 100, 24, &p(500_000, 24)), None);
    }

    #[test]
    fn heavy_later_pictures_raise_the_level() {
        // 1366x768 where every later picture is raw for 10 s: 1.6 MB * 24 fps = 305 Mbit/s, more than any level
        // allows (a short burst would fit in level 5.1's 240 Mbit buffer).
        assert_eq!(choose_level(86, 48, 24, &p_all(300_000, 4128 * 386, 240)), None);
        // One raw picture after the first: too big for MinCR 4 (levels 3.1 to 4.0), fine for 4.1.
        let mut v = vec![1_000; 144];
        v[0] = 300_000;
        v[1] = 4128 * 386;
        assert_eq!(choose_level(86, 48, 24, &v), Some(41));
    }

    fn p_all(first: u32, rest: u32, n: usize) -> Vec<u32> {
        let mut v = vec![rest; n];
        v[0] = first;
        v
    }
}
