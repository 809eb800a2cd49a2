//! HTTP `Range: bytes=...` requests (RFC 9110 §14) against a file of known length.
//! Shared by reelgate's result downloads and the sandbox's file downloads, which both
//! serve videos that players seek in.

/// What a `Range` header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// Inclusive byte positions.
    Part(u64, u64),
    /// A range that starts past the end: answer 416.
    Unsatisfiable,
    /// Nothing usable (several ranges, bad syntax, another unit): serve the whole file,
    /// which RFC 9110 allows.
    Whole,
}

/// Parses a single `bytes=` range against a file of `len` bytes.
pub fn parse(value: &str, len: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return ByteRange::Whole };
    if spec.contains(',') {
        // Multipart ranges are legal to ignore, and no video player sends them.
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return ByteRange::Whole };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(n) if len > 0 => ByteRange::Part(len.saturating_sub(n), len - 1),
            Some(_) => ByteRange::Unsatisfiable,
            None => ByteRange::Whole,
        },
        // bytes=A-: from A to the end.
        (false, true) => match parse(first) {
            Some(a) if a < len => ByteRange::Part(a, len - 1),
            Some(_) => ByteRange::Unsatisfiable,
            None => ByteRange::Whole,
        },
        // bytes=A-B, B clamped to the end.
        (false, false) => match (parse(first), parse(last)) {
            (Some(a), Some(b)) if a > b => ByteRange::Whole,
            (Some(a), Some(_)) if a >= len => ByteRange::Unsatisfiable,
            (Some(a), Some(b)) => ByteRange::Part(a, b.min(len - 1)),
            _ => ByteRange::Whole,
        },
        (true, true) => ByteRange::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        use ByteRange::*;
        assert_eq!(parse("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(parse("bytes=900-", 1000), Part(900, 999));
        assert_eq!(parse("bytes=-100", 1000), Part(900, 999));
        assert_eq!(parse("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(parse("bytes=990-5000", 1000), Part(990, 999));
        assert_eq!(parse("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=5-1", 1000), Whole);
        assert_eq!(parse("bytes=0-1,5-6", 1000), Whole);
        assert_eq!(parse("items=0-1", 1000), Whole);
        assert_eq!(parse("bytes=x-1", 1000), Whole);
        assert_eq!(parse("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse("bytes=100-", 100), Unsatisfiable);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Headers near the grammar: `bytes=`, digits, dashes, commas, spaces, noise.
        fn range_header() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,24}",
                "(bytes|BYTES|items)?=?[ 0-9+,-]{0,24}",
                (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
                any::<u64>().prop_map(|n| format!("bytes=-{n}")),
                any::<u64>().prop_map(|n| format!("bytes={n}-")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn a_part_is_always_inside_the_file(header in range_header(), len in prop_oneof![0..3u64, any::<u64>()]) {
                if let ByteRange::Part(first, last) = parse(&header, len) {
                    prop_assert!(first <= last && last < len, "{header} on {len}: {first}-{last}");
                }
            }
        }
    }
}
