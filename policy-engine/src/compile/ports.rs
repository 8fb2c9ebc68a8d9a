//! Port ranges as aligned power-of-two blocks (the datapath matches a port
//! range as LPM prefixes inside the 16-bit port).

/// Splits `start..=end` into the fewest aligned blocks `(port, prefix_len)`
/// whose union is exactly the range. `prefix_len` 16 = one port.
pub fn split_range(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    if start > end {
        return out;
    }
    let mut lo = u32::from(start);
    let hi = u32::from(end);
    while lo <= hi {
        // Largest block size aligned at `lo` that stays within the range.
        let mut size: u32 = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let bits = size.trailing_zeros() as u8;
        // `lo` fits in u16 because lo <= hi <= u16::MAX.
        out.push((lo as u16, 16 - bits));
        lo += size;
    }
    out
}

/// Whether block `(port, prefix_len)` covers `dport`.
pub fn block_covers(port: u16, prefix_len: u8, dport: u16) -> bool {
    let shift = 16u32.saturating_sub(u32::from(prefix_len));
    if shift >= 16 {
        return true;
    }
    (u32::from(port) >> shift) == (u32::from(dport) >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_splits() {
        assert_eq!(split_range(80, 80), vec![(80, 16)]);
        assert_eq!(split_range(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(split_range(8000, 8003), vec![(8000, 14)]);
        assert_eq!(split_range(1, 3), vec![(1, 16), (2, 15)]);
    }

    proptest! {
        #[test]
        fn blocks_cover_exactly_the_range(a: u16, b: u16, probe: u16) {
            let (lo, hi) = (a.min(b), a.max(b));
            let blocks = split_range(lo, hi);
            prop_assert!(blocks.len() <= 32);
            let hits = blocks.iter().filter(|(p, l)| block_covers(*p, *l, probe)).count();
            prop_assert_eq!(hits, usize::from(probe >= lo && probe <= hi));
            for (p, l) in blocks {
                let shift = 16 - u32::from(l);
                if shift < 16 {
                    prop_assert_eq!(u32::from(p) & ((1u32 << shift) - 1), 0);
                }
            }
        }
    }
}
