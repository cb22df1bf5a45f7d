//! Compact forms of per-flow state, so a flow slot stays small: durations and times from
//! the flow's start in 48 bits without the 8 bytes of an `Option` tag, yes/no facts
//! in one byte, and the Zeek history as 4-bit letter codes with a bit set of the letters
//! seen.

use crate::record::History;

/// A duration (ns) that may not have been measured yet, in 48 bits: up to 78 hours, longer
/// ones say 78 hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span([u16; 3]);

impl Span {
    pub(super) const NONE: Span = Span([u16::MAX; 3]);
    const MAX: u64 = (1 << 48) - 2;

    #[inline]
    pub(super) fn of(ns: u64) -> Span {
        let v = ns.min(Self::MAX);
        Span([v as u16, (v >> 16) as u16, (v >> 32) as u16])
    }

    #[inline]
    pub(super) fn get(self) -> Option<u64> {
        (self != Self::NONE).then(|| {
            let [a, b, c] = self.0;
            u64::from(c) << 32 | u64::from(b) << 16 | u64::from(a)
        })
    }

    #[inline]
    pub(super) fn is_none(self) -> bool {
        self == Self::NONE
    }

    #[inline]
    pub(super) fn is_some(self) -> bool {
        self != Self::NONE
    }
}

/// Yes/no facts about a flow, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Marks(u8);

impl Marks {
    /// The slot holds an open flow.
    pub(super) const IN_USE: u8 = 1;
    pub(super) const IN_USE_ONLY: Marks = Marks(Marks::IN_USE);
    /// A runtime watch matched at its start.
    pub(super) const USER: u8 = 1 << 1;
    /// A SYN or SYN-ACK came after the terminal event.
    pub(super) const REOPENED: u8 = 1 << 2;
    /// Direction 0 (`FIRST_DATA << 1`: direction 1) sent its first payload.
    pub(super) const FIRST_DATA: u8 = 1 << 3;
    /// An ICMP error about the flow came after its latest packet.
    pub(super) const ICMP_LAST: u8 = 1 << 5;
    /// A segment filled the receiver's window (its point is made once).
    pub(super) const WINDOW_FULL: u8 = 1 << 6;
    /// The packet that ended the longest silence came from direction 1.
    pub(super) const STALL_END_1: u8 = 1 << 7;

    #[inline]
    pub(super) fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    #[inline]
    pub(super) fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// The letters a flow's history can hold: the table writes each at most once (`S` and `h`
/// once per connection, the others once per side), so a history has at most 16 letters.
const ALPHABET: &[u8; 16] = b"ShQDATWFRqdatwfr";

const NOT_A_LETTER: u8 = 0xff;

/// The code of each byte: its index in [`ALPHABET`], or [`NOT_A_LETTER`].
const CODES: [u8; 256] = {
    let mut codes = [NOT_A_LETTER; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        codes[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    codes
};

/// A history of at most 16 distinct letters of [`ALPHABET`]: nibble `i` of `order` is the
/// code of the `i`-th letter; bit `c` of `seen` says whether code `c` is in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub(super) struct Letters {
    order: u64,
    seen: u16,
}

impl Letters {
    #[inline]
    fn code(letter: u8) -> Option<u32> {
        let c = CODES[usize::from(letter)];
        (c != NOT_A_LETTER).then_some(u32::from(c))
    }

    /// Appends `letter` unless it is already there (or is not a history letter).
    #[inline]
    pub(super) fn push_once(&mut self, letter: u8) {
        if let Some(c) = Self::code(letter) {
            if self.seen & (1 << c) == 0 {
                self.order |= u64::from(c) << (4 * self.seen.count_ones());
                self.seen |= 1 << c;
            }
        }
    }

    pub(super) fn history(self) -> History {
        let mut h = History::default();
        for i in 0..self.seen.count_ones() {
            let c = (self.order >> (4 * i)) & 0xf;
            h.push(ALPHABET[c as usize]);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_keep_order_and_each_letter_once() {
        let mut l = Letters::default();
        for &c in b"ShADadAFfrx" {
            l.push_once(c);
        }
        assert_eq!(l.history().as_str(), "ShADadFfr");
        let mut all = Letters::default();
        for &c in ALPHABET.iter().rev() {
            all.push_once(c);
        }
        assert_eq!(all.history().as_str(), "rfwtadqRFWTADQhS");
    }

    #[test]
    fn spans_keep_48_bits() {
        assert_eq!(Span::NONE.get(), None);
        for v in [0, 1, 65_536, u64::from(u32::MAX) + 3, Span::MAX] {
            assert_eq!(Span::of(v).get(), Some(v));
        }
        assert_eq!(Span::of(u64::MAX).get(), Some(Span::MAX));
        assert_eq!(std::mem::size_of::<Span>(), 6);
        assert_eq!(std::mem::size_of::<Letters>(), 10);
    }
}
