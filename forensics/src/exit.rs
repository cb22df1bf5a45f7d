//! Exit statuses, one scheme for every command.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done, nothing lost and no damage seen |
//! | 1 | damage found in an input (a capture, a log, a ring): the output is complete up to it, and past it where the format allows; every damaged place is reported on stderr with its file and byte offset |
//! | 2 | usage or configuration error, or a refusal (nothing was written) |
//! | 3 | records written to the log but not all shipped to NATS (`--export`) |
//! | 4 | records lost: dropped from a full ring, or for lack of space on the log's file system; the summary says how many |
//!
//! Where two apply, the highest wins: a lost record outweighs damage in an input.

use std::process::ExitCode;

/// Done, nothing lost and no damage seen.
pub const OK: u8 = 0;
/// Damage found in an input; the output is complete up to it.
pub const DAMAGE: u8 = 1;
/// Usage or configuration error, or a refusal: nothing was written.
pub const USAGE: u8 = 2;
/// Records written to the log but not all shipped to NATS.
pub const EXPORT_PENDING: u8 = 3;
/// Records lost (ring full, disk full).
pub const RECORDS_LOST: u8 = 4;

/// The status of a run that wrote a log: export not drained (`shipped` is not success),
/// records lost, damage found in an input, the worst of them.
pub fn of_run(shipped: ExitCode, records_lost: u64, damaged: bool) -> ExitCode {
    worst([
        if shipped == ExitCode::SUCCESS {
            OK
        } else {
            EXPORT_PENDING
        },
        if records_lost > 0 { RECORDS_LOST } else { OK },
        if damaged { DAMAGE } else { OK },
    ])
}

/// Says on standard error how many records never reached the log, and why, when any did
/// not; the run's exit status then carries [`RECORDS_LOST`].
pub fn warn_records_lost(ring_drops: u64, ring_checksum_failures: u64, no_space: u64) {
    let lost = ring_drops + ring_checksum_failures + no_space;
    if lost > 0 {
        eprintln!(
            "conntrail: {lost} record(s) lost: {ring_drops} dropped from full rings, \
             {ring_checksum_failures} damaged in a ring (failed their checksum), \
             {no_space} for lack of space on the log's file system"
        );
    }
}

/// The damaged places a read command met. Each one is said on standard error when it is
/// met (`conntrail: damaged log: FILE at byte N: ...`), and any of them makes the exit
/// status [`DAMAGE`]. Every read command counts its damage here.
#[derive(Debug, Default)]
pub struct Damaged(u64);

impl Damaged {
    /// Says `conntrail: damaged WHAT: PLACE` and counts it.
    pub fn report(&mut self, what: &str, place: impl std::fmt::Display) {
        self.0 += 1;
        eprintln!("conntrail: damaged {what}: {place}");
    }

    /// A damaged place of a log.
    pub fn log(&mut self, place: impl std::fmt::Display) {
        self.report("log", place);
    }

    pub fn count(&self) -> u64 {
        self.0
    }

    /// [`DAMAGE`] when any place was damaged, else [`OK`].
    pub fn code(&self) -> u8 {
        if self.0 > 0 {
            DAMAGE
        } else {
            OK
        }
    }

    pub fn status(&self) -> ExitCode {
        ExitCode::from(self.code())
    }
}

/// The status for the worst of `codes`.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> ExitCode {
    ExitCode::from(codes.into_iter().max().unwrap_or(OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_makes_status_one_and_a_lost_record_outweighs_it() {
        let mut d = Damaged::default();
        assert_eq!((d.count(), d.code()), (0, OK));
        d.log("t.log at byte 4096: frame checksum mismatch");
        d.report("capture a.pcap", "at byte 24: record header cut short");
        assert_eq!((d.count(), d.code()), (2, DAMAGE));
        assert_eq!(
            of_run(ExitCode::SUCCESS, 1, d.count() > 0),
            ExitCode::from(RECORDS_LOST)
        );
    }
}
