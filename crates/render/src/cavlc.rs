//! CAVLC residual coding (spec 9.2): how one block of quantised transform coefficients is written, using the
//! variable-length code tables of clause 9.2 (Tables 9-5, 9-7, 9-8, 9-9 and 9-10).
//!
//! Only the writer is here; `intra` decides the coefficients and tracks the neighbour counts that pick a table.

use crate::bits::BitWriter;

/// (length, code) for coeff_token, by table, then TotalCoeff (0..=16), then TrailingOnes (0..=3). Table 9-5,
/// columns 0 <= nC < 2, 2 <= nC < 4 and 4 <= nC < 8; nC >= 8 is a 6-bit fixed-length code built in
/// `coeff_token`. Impossible combinations (more trailing ones than coefficients) are (0, 0).
#[rustfmt::skip]
const COEFF_TOKEN: [[[(u8, u8); 4]; 17]; 3] = [
    [
        [(1, 1), (0, 0), (0, 0), (0, 0)],
        [(6, 5), (2, 1), (0, 0), (0, 0)],
        [(8, 7), (6, 4), (3, 1), (0, 0)],
        [(9, 7), (8, 6), (7, 5), (5, 3)],
        [(10, 7), (9, 6), (8, 5), (6, 3)],
        [(11, 7), (10, 6), (9, 5), (7, 4)],
        [(13, 15), (11, 6), (10, 5), (8, 4)],
        [(13, 11), (13, 14), (11, 5), (9, 4)],
        [(13, 8), (13, 10), (13, 13), (10, 4)],
        [(14, 15), (14, 14), (13, 9), (11, 4)],
        [(14, 11), (14, 10), (14, 13), (13, 12)],
        [(15, 15), (15, 14), (14, 9), (14, 12)],
        [(15, 11), (15, 10), (15, 13), (14, 8)],
        [(16, 15), (15, 1), (15, 9), (15, 12)],
        [(16, 11), (16, 14), (16, 13), (15, 8)],
        [(16, 7), (16, 10), (16, 9), (16, 12)],
        [(16, 4), (16, 6), (16, 5), (16, 8)],
    ],
    [
        [(2, 3), (0, 0), (0, 0), (0, 0)],
        [(6, 11), (2, 2), (0, 0), (0, 0)],
        [(6, 7), (5, 7), (3, 3), (0, 0)],
        [(7, 7), (6, 10), (6, 9), (4, 5)],
        [(8, 7), (6, 6), (6, 5), (4, 4)],
        [(8, 4), (7, 6), (7, 5), (5, 6)],
        [(9, 7), (8, 6), (8, 5), (6, 8)],
        [(11, 15), (9, 6), (9, 5), (6, 4)],
        [(11, 11), (11, 14), (11, 13), (7, 4)],
        [(12, 15), (11, 10), (11, 9), (9, 4)],
        [(12, 11), (12, 14), (12, 13), (11, 12)],
        [(12, 8), (12, 10), (12, 9), (11, 8)],
        [(13, 15), (13, 14), (13, 13), (12, 12)],
        [(13, 11), (13, 10), (13, 9), (13, 12)],
        [(13, 7), (14, 11), (13, 6), (13, 8)],
        [(14, 9), (14, 8), (14, 10), (13, 1)],
        [(14, 7), (14, 6), (14, 5), (14, 4)],
    ],
    [
        [(4, 15), (0, 0), (0, 0), (0, 0)],
        [(6, 15), (4, 14), (0, 0), (0, 0)],
        [(6, 11), (5, 15), (4, 13), (0, 0)],
        [(6, 8), (5, 12), (5, 14), (4, 12)],
        [(7, 15), (5, 10), (5, 11), (4, 11)],
        [(7, 11), (5, 8), (5, 9), (4, 10)],
        [(7, 9), (6, 14), (6, 13), (4, 9)],
        [(7, 8), (6, 10), (6, 9), (4, 8)],
        [(8, 15), (7, 14), (7, 13), (5, 13)],
        [(8, 11), (8, 14), (7, 10), (6, 12)],
        [(9, 15), (8, 10), (8, 13), (7, 12)],
        [(9, 11), (9, 14), (8, 9), (8, 12)],
        [(9, 8), (9, 10), (9, 13), (8, 8)],
        [(10, 13), (9, 7), (9, 9), (9, 12)],
        [(10, 9), (10, 12), (10, 11), (10, 10)],
        [(10, 5), (10, 8), (10, 7), (10, 6)],
        [(10, 1), (10, 4), (10, 3), (10, 2)],
    ],
];

/// coeff_token for chroma DC in 4:2:0 (nC = -1), by TotalCoeff (0..=4) and TrailingOnes. Table 9-5, last column.
#[rustfmt::skip]
const CHROMA_DC_COEFF_TOKEN: [[(u8, u8); 4]; 5] = [
    [(2, 1), (0, 0), (0, 0), (0, 0)],
    [(6, 7), (1, 1), (0, 0), (0, 0)],
    [(6, 4), (6, 6), (3, 1), (0, 0)],
    [(6, 3), (7, 3), (7, 2), (6, 5)],
    [(6, 2), (8, 3), (8, 2), (7, 0)],
];

/// total_zeros for 4x4 blocks (Tables 9-7 and 9-8), by TotalCoeff - 1, then total_zeros.
#[rustfmt::skip]
const TOTAL_ZEROS: [&[(u8, u8)]; 15] = [
    &[(1, 1), (3, 3), (3, 2), (4, 3), (4, 2), (5, 3), (5, 2), (6, 3), (6, 2), (7, 3), (7, 2), (8, 3), (8, 2), (9, 3), (9, 2), (9, 1)],
    &[(3, 7), (3, 6), (3, 5), (3, 4), (3, 3), (4, 5), (4, 4), (4, 3), (4, 2), (5, 3), (5, 2), (6, 3), (6, 2), (6, 1), (6, 0)],
    &[(4, 5), (3, 7), (3, 6), (3, 5), (4, 4), (4, 3), (3, 4), (3, 3), (4, 2), (5, 3), (5, 2), (6, 1), (5, 1), (6, 0)],
    &[(5, 3), (3, 7), (4, 5), (4, 4), (3, 6), (3, 5), (3, 4), (4, 3), (3, 3), (4, 2), (5, 2), (5, 1), (5, 0)],
    &[(4, 5), (4, 4), (4, 3), (3, 7), (3, 6), (3, 5), (3, 4), (3, 3), (4, 2), (5, 1), (4, 1), (5, 0)],
    &[(6, 1), (5, 1), (3, 7), (3, 6), (3, 5), (3, 4), (3, 3), (3, 2), (4, 1), (3, 1), (6, 0)],
    &[(6, 1), (5, 1), (3, 5), (3, 4), (3, 3), (2, 3), (3, 2), (4, 1), (3, 1), (6, 0)],
    &[(6, 1), (4, 1), (5, 1), (3, 3), (2, 3), (2, 2), (3, 2), (3, 1), (6, 0)],
    &[(6, 1), (6, 0), (4, 1), (2, 3), (2, 2), (3, 1), (2, 1), (5, 1)],
    &[(5, 1), (5, 0), (3, 1), (2, 3), (2, 2), (2, 1), (4, 1)],
    &[(4, 0), (4, 1), (3, 1), (3, 2), (1, 1), (3, 3)],
    &[(4, 0), (4, 1), (2, 1), (1, 1), (3, 1)],
    &[(3, 0), (3, 1), (1, 1), (2, 1)],
    &[(2, 0), (2, 1), (1, 1)],
    &[(1, 0), (1, 1)],
];

/// total_zeros for 4:2:0 chroma DC (Table 9-9a), by TotalCoeff - 1, then total_zeros.
const CHROMA_DC_TOTAL_ZEROS: [&[(u8, u8)]; 3] =
    [&[(1, 1), (2, 1), (3, 1), (3, 0)], &[(1, 1), (2, 1), (2, 0)], &[(1, 1), (1, 0)]];

/// run_before (Table 9-10), by min(zerosLeft, 7) - 1, then run_before.
#[rustfmt::skip]
const RUN_BEFORE: [&[(u8, u8)]; 7] = [
    &[(1, 1), (1, 0)],
    &[(1, 1), (2, 1), (2, 0)],
    &[(2, 3), (2, 2), (2, 1), (2, 0)],
    &[(2, 3), (2, 2), (2, 1), (3, 1), (3, 0)],
    &[(2, 3), (2, 2), (3, 3), (3, 2), (3, 1), (3, 0)],
    &[(2, 3), (3, 0), (3, 1), (3, 3), (3, 2), (3, 5), (3, 4)],
    &[(3, 7), (3, 6), (3, 5), (3, 4), (3, 3), (3, 2), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1), (11, 1)],
];

/// The largest coefficient magnitude `residual_block` can write: level_prefix 15 carries a 12-bit suffix in
/// Baseline (longer prefixes are a High profile escape), so levelCode stays below (15 << 6) + 4096.
pub const MAX_LEVEL: i32 = 2_047;

fn put(w: &mut BitWriter, (len, code): (u8, u8)) {
    debug_assert!(len > 0, "an impossible table entry was asked for");
    w.bits(u32::from(code), u32::from(len));
}

fn coeff_token(w: &mut BitWriter, nc: i32, total: usize, trailing_ones: usize) {
    match nc {
        -1 => put(w, CHROMA_DC_COEFF_TOKEN[total][trailing_ones]),
        0..=1 => put(w, COEFF_TOKEN[0][total][trailing_ones]),
        2..=3 => put(w, COEFF_TOKEN[1][total][trailing_ones]),
        4..=7 => put(w, COEFF_TOKEN[2][total][trailing_ones]),
        // 6-bit fixed length: TotalCoeff - 1 and TrailingOnes, with 000011 for no coefficients.
        _ if total == 0 => w.bits(0b11, 6),
        _ => w.bits((((total - 1) << 2) | trailing_ones) as u32, 6),
    }
}

/// Writes `coeffs` (in scan order; its length is maxNumCoeff: 4, 15 or 16) as residual_block_cavlc() with the
/// coeff_token table chosen by `nc` (-1 for chroma DC). Returns TotalCoeff, which neighbouring blocks' nC needs.
pub fn residual_block(w: &mut BitWriter, coeffs: &[i32], nc: i32) -> usize {
    let max = coeffs.len();
    // Non-zero coefficients from the highest frequency down, which is the order CAVLC sends them in.
    let mut levels = [0i32; 16];
    let mut positions = [0usize; 16];
    let mut total = 0;
    for (i, &c) in coeffs.iter().enumerate().rev() {
        if c != 0 {
            debug_assert!(c.abs() <= MAX_LEVEL);
            levels[total] = c;
            positions[total] = i;
            total += 1;
        }
    }
    let trailing_ones = levels[..total].iter().take(3).take_while(|l| l.abs() == 1).count();
    coeff_token(w, nc, total, trailing_ones);
    if total == 0 {
        return 0;
    }
    for &l in &levels[..trailing_ones] {
        w.flag(l < 0); // trailing_ones_sign_flag
    }
    let mut suffix_length = u32::from(total > 10 && trailing_ones < 3);
    for (i, &level) in levels[..total].iter().enumerate().skip(trailing_ones) {
        let mut level_code = if level > 0 { 2 * level - 2 } else { -2 * level - 1 } as u32;
        if i == trailing_ones && trailing_ones < 3 {
            // The decoder adds 2 here: this coefficient cannot be +-1, or it would be a trailing one.
            level_code -= 2;
        }
        let (prefix, suffix, suffix_bits) = if suffix_length == 0 {
            match level_code {
                0..14 => (level_code, 0, 0),
                14..30 => (14, level_code - 14, 4),
                _ => (15, level_code - 30, 12),
            }
        } else if level_code < 15 << suffix_length {
            (level_code >> suffix_length, level_code & ((1 << suffix_length) - 1), suffix_length)
        } else {
            (15, level_code - (15 << suffix_length), 12)
        };
        debug_assert!(suffix < 1 << 12);
        w.bits(0, prefix); // level_prefix: that many zeros, then a one
        w.bits(1, 1);
        w.bits(suffix, suffix_bits);
        if suffix_length == 0 {
            suffix_length = 1;
        }
        if level.unsigned_abs() > 3 << (suffix_length - 1) && suffix_length < 6 {
            suffix_length += 1;
        }
    }
    if total < max {
        let total_zeros = positions[0] + 1 - total;
        let table = if max == 4 { CHROMA_DC_TOTAL_ZEROS[total - 1] } else { TOTAL_ZEROS[total - 1] };
        put(w, table[total_zeros]);
        let mut zeros_left = total_zeros;
        for k in 0..total - 1 {
            if zeros_left == 0 {
                break;
            }
            let run = positions[k] - positions[k + 1] - 1;
            put(w, RUN_BEFORE[zeros_left.min(7) - 1][run]);
            zeros_left -= run;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code table must be prefix-free, or a decoder could not tell codes apart.
    fn assert_prefix_free(name: &str, codes: &[(u8, u8)]) {
        let codes: Vec<(u8, u8)> = codes.iter().copied().filter(|&(len, _)| len > 0).collect();
        for (i, &(la, ca)) in codes.iter().enumerate() {
            for &(lb, cb) in &codes[i + 1..] {
                let (short, long) = if la <= lb { ((la, ca), (lb, cb)) } else { ((lb, cb), (la, ca)) };
                assert_ne!(
                    u32::from(long.1) >> (long.0 - short.0),
                    u32::from(short.1),
                    "{name}: {short:?} prefixes {long:?}"
                );
            }
        }
    }

    #[test]
    fn code_tables_are_prefix_free() {
        for (i, table) in COEFF_TOKEN.iter().enumerate() {
            assert_prefix_free(&format!("coeff_token {i}"), &table.concat());
        }
        assert_prefix_free("chroma DC coeff_token", &CHROMA_DC_COEFF_TOKEN.concat());
        for (i, t) in TOTAL_ZEROS.iter().enumerate() {
            assert_eq!(t.len(), 16 - i);
            assert_prefix_free(&format!("total_zeros {}", i + 1), t);
        }
        for t in CHROMA_DC_TOTAL_ZEROS.iter().chain(RUN_BEFORE.iter()) {
            assert_prefix_free("chroma total_zeros / run_before", t);
        }
    }

    fn bits_of(coeffs: &[i32], nc: i32) -> String {
        let mut w = BitWriter::default();
        residual_block(&mut w, coeffs, nc);
        let pending = w.pending_bits();
        w.align_zero();
        let s: String = w.as_bytes().iter().map(|b| format!("{b:08b}")).collect();
        s[..s.len() - if pending == 0 { 0 } else { 8 - pending as usize }].to_string()
    }

    #[test]
    fn the_textbook_example_block() {
        // The worked example in Richardson's "H.264 and MPEG-4 Video Compression" (4x4 block, nC = 0):
        // in scan order 0, 3, 0, 1, -1, -1, 0, 1, then zeros → coeff_token 0000100 (5 coefficients, 3 trailing
        // ones), signs 0 1 1, level +1 as 1 and +3 as 0010, total_zeros 3 as 111, then run_before 10, 1, 1, 01.
        let mut block = [0; 16];
        block[..8].copy_from_slice(&[0, 3, 0, 1, -1, -1, 0, 1]);
        assert_eq!(bits_of(&block, 0), "000010001110010111101101");
    }

    #[test]
    fn empty_blocks_and_chroma_dc() {
        assert_eq!(bits_of(&[0; 16], 0), "1");
        assert_eq!(bits_of(&[0; 16], 9), "000011");
        assert_eq!(bits_of(&[0; 4], -1), "01");
        // One coefficient, a trailing one, at position 0 of chroma DC: coeff_token 1, sign 0, total_zeros 0 as 1.
        assert_eq!(bits_of(&[1, 0, 0, 0], -1), "101");
    }
}
