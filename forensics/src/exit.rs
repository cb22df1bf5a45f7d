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

/// The status for the worst of `codes`.
pub fn worst(codes: impl IntoIterator<Item = u8>) -> ExitCode {
    ExitCode::from(codes.into_iter().max().unwrap_or(OK))
}
