//! Bit-level writing for H.264: fixed-width fields, Exp-Golomb codes, RBSP trailing bits, and the emulation
//! prevention that turns an RBSP into NAL unit payload bytes.
//!
//! It knows nothing about which syntax elements exist; `h264` decides what to write.

/// Writes bits most-significant first into a growing byte buffer, as H.264's RBSP syntax is read.
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    /// Bits not yet flushed to `bytes`, right-aligned; fewer than 8 after each call.
    acc: u32,
    acc_bits: u32,
}

impl BitWriter {
    /// Appends the low `n` bits of `value` (n <= 32), most significant first: the spec's u(n).
    pub fn bits(&mut self, value: u32, n: u32) {
        debug_assert!(n <= 32);
        debug_assert!(n == 32 || value >> n == 0, "value {value} does not fit in {n} bits");
        // Feed at most 8 bits at a time so `acc` never overflows.
        let mut left = n;
        while left > 0 {
            let take = left.min(8);
            left -= take;
            let chunk = (value >> left) & ((1 << take) - 1);
            self.acc = (self.acc << take) | chunk;
            self.acc_bits += take;
            if self.acc_bits >= 8 {
                self.acc_bits -= 8;
                self.bytes.push((self.acc >> self.acc_bits) as u8);
                self.acc &= (1 << self.acc_bits) - 1;
            }
        }
    }

    /// Appends one flag bit: the spec's u(1).
    pub fn flag(&mut self, on: bool) {
        self.bits(u32::from(on), 1);
    }

    /// Appends an unsigned Exp-Golomb code: the spec's ue(v).
    pub fn ue(&mut self, value: u32) {
        // codeNum + 1 written in 2 * floor(log2(codeNum + 1)) + 1 bits: that many leading zeros, then the number.
        let plus_one = u64::from(value) + 1;
        let len = 64 - plus_one.leading_zeros(); // significant bits of value + 1
        self.bits(0, len - 1);
        if len > 32 {
            // Only u32::MAX + 1 is 33 bits long.
            self.bits(1, 1);
            self.bits(0, 32);
        } else {
            self.bits(plus_one as u32, len);
        }
    }

    /// Appends a signed Exp-Golomb code: the spec's se(v), mapping 0, 1, -1, 2, -2 … to 0, 1, 2, 3, 4 ….
    pub fn se(&mut self, value: i32) {
        let mapped = if value > 0 { 2 * i64::from(value) - 1 } else { -2 * i64::from(value) };
        self.ue(u32::try_from(mapped).expect("se(v) values used by this encoder are small"));
    }

    /// Whether the next bit starts a new byte.
    pub fn is_aligned(&self) -> bool {
        self.acc_bits == 0
    }

    /// Bits written since the last byte boundary.
    #[cfg(test)]
    pub fn pending_bits(&self) -> u32 {
        self.acc_bits
    }

    /// Pads with zero bits up to the next byte boundary (pcm_alignment_zero_bit).
    pub fn align_zero(&mut self) {
        if self.acc_bits > 0 {
            self.bits(0, 8 - self.acc_bits);
        }
    }

    /// Appends whole bytes; the writer must be byte-aligned (I_PCM samples are).
    pub fn aligned_bytes(&mut self, bytes: &[u8]) {
        assert!(self.is_aligned(), "aligned_bytes on an unaligned writer");
        self.bytes.extend_from_slice(bytes);
    }

    /// Ends the RBSP: a one bit, then zero bits to the byte boundary (rbsp_trailing_bits).
    pub fn trailing_bits(&mut self) {
        self.bits(1, 1);
        self.align_zero();
    }

    /// Empties the writer, keeping its buffer's capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.acc = 0;
        self.acc_bits = 0;
    }

    /// The bytes written so far; the writer must be byte-aligned.
    pub fn as_bytes(&self) -> &[u8] {
        assert!(self.is_aligned(), "as_bytes on an unaligned writer");
        &self.bytes
    }
}

/// Appends a NAL unit's payload to `out`: the one-byte header, then `rbsp` with emulation prevention bytes.
///
/// Inside a NAL unit the byte patterns 00 00 00, 00 00 01, 00 00 02 and 00 00 03 must not occur, so a 03 is
/// inserted after every two zero bytes that precede a byte <= 3 (spec 7.4.1). Returns the bytes appended.
pub fn push_nal(out: &mut Vec<u8>, nal_ref_idc: u8, nal_unit_type: u8, rbsp: &[u8]) -> usize {
    let start = out.len();
    out.reserve(rbsp.len() + rbsp.len() / 64 + 1);
    out.push((nal_ref_idc << 5) | nal_unit_type);
    let mut zeros = 0;
    // Copy runs between zero bytes in bulk: I_PCM payloads are mostly non-zero, so this is nearly a memcpy.
    let mut i = 0;
    while i < rbsp.len() {
        let run_end = rbsp[i..].iter().position(|&b| b == 0).map_or(rbsp.len(), |p| i + p);
        if run_end > i {
            if zeros >= 2 && rbsp[i] <= 3 {
                out.push(3);
            }
            out.extend_from_slice(&rbsp[i..run_end]);
            zeros = 0;
            i = run_end;
            continue;
        }
        // rbsp[i] == 0
        if zeros >= 2 {
            out.push(3);
            zeros = 0;
        }
        out.push(0);
        zeros += 1;
        i += 1;
    }
    // An RBSP ends in rbsp_trailing_bits, so its last byte is never zero and no cabac_zero_word handling is needed.
    out.len() - start
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit_string(w: BitWriter) -> String {
        let mut w = w;
        let pending = w.acc_bits;
        let pad = if pending == 0 { 0 } else { 8 - pending };
        w.align_zero();
        let s: String = w.bytes.iter().map(|b| format!("{b:08b}")).collect();
        s[..s.len() - pad as usize].to_string()
    }

    #[test]
    fn ue_codes_match_the_spec_table() {
        // Table 9-2 of the spec: codeNum -> bit string.
        let cases = [(0, "1"), (1, "010"), (2, "011"), (3, "00100"), (6, "00111"), (7, "0001000"), (30, "000011111")];
        for (value, expected) in cases {
            let mut w = BitWriter::default();
            w.ue(value);
            assert_eq!(bit_string(w), expected, "ue({value})");
        }
    }

    #[test]
    fn ue_handles_the_largest_values() {
        let mut w = BitWriter::default();
        w.ue(u32::MAX - 1);
        assert_eq!(bit_string(w), format!("{}{}", "0".repeat(31), "1".repeat(32)));
        let mut w = BitWriter::default();
        w.ue(u32::MAX);
        assert_eq!(bit_string(w), format!("{}1{}", "0".repeat(32), "0".repeat(32)));
    }

    #[test]
    fn se_maps_signs_alternately() {
        let cases = [(0, "1"), (1, "010"), (-1, "011"), (2, "00100"), (-2, "00101"), (-26, "00000110101")];
        for (value, expected) in cases {
            let mut w = BitWriter::default();
            w.se(value);
            assert_eq!(bit_string(w), expected, "se({value})");
        }
    }

    #[test]
    fn fixed_width_fields_and_trailing_bits() {
        let mut w = BitWriter::default();
        w.bits(0b101, 3);
        w.bits(0xABCD, 16);
        w.flag(true);
        assert!(!w.is_aligned());
        w.trailing_bits();
        assert_eq!(w.as_bytes(), [0b1011_0101, 0b0111_1001, 0b1011_1000]);
    }

    #[test]
    fn emulation_prevention_escapes_start_code_patterns() {
        let cases: [(&[u8], &[u8]); 5] = [
            (&[0x00, 0x00, 0x01, 0x80], &[0x00, 0x00, 0x03, 0x01, 0x80]),
            (&[0x00, 0x00, 0x00, 0x00, 0x80], &[0x00, 0x00, 0x03, 0x00, 0x00, 0x80]),
            (&[0x00, 0x00, 0x04, 0x80], &[0x00, 0x00, 0x04, 0x80]),
            (&[0x00, 0x10, 0x00, 0x03, 0x80], &[0x00, 0x10, 0x00, 0x03, 0x80]),
            (&[0x12, 0x00, 0x00, 0x02, 0x00, 0x00, 0x80], &[0x12, 0x00, 0x00, 0x03, 0x02, 0x00, 0x00, 0x80]),
        ];
        for (rbsp, escaped) in cases {
            let mut out = Vec::new();
            let n = push_nal(&mut out, 3, 5, rbsp);
            assert_eq!(n, out.len());
            assert_eq!(out[0], 0x65);
            assert_eq!(&out[1..], escaped, "rbsp {rbsp:02x?}");
        }
    }
}
