//! The lines every run ends with, replay or live: its totals first, then how the flows
//! closed, then the contexts and the fragments. What only one kind of run knows (a replay's
//! threads and captures, a live run's sockets) follows in its own printer.

use std::io::{self, Write};
use std::time::Duration;

use flowtable::record::CloseReason;
use flowtable::table::TableCounters;

use crate::contexts::ContextSummary;

/// The totals of a run.
pub struct Totals {
    pub packets: u64,
    pub flows: u64,
    pub records: u64,
    pub ring_drops: u64,
    pub elapsed: Duration,
}

/// `packets:`, `flows:`, `records:`, `ring drops:` and `elapsed:`, one line each.
pub fn write_totals(out: &mut impl Write, t: &Totals) -> io::Result<()> {
    writeln!(out, "packets: {}", t.packets)?;
    writeln!(out, "flows: {}", t.flows)?;
    writeln!(out, "records: {}", t.records)?;
    writeln!(out, "ring drops: {}", t.ring_drops)?;
    writeln!(out, "elapsed: {:.3} s", t.elapsed.as_secs_f64())
}

/// `closed:` with the flows closed for each reason over all the workers' `tables`, then the
/// context and fragment lines ([`crate::contexts::summary_lines`]).
pub fn write_closed(
    out: &mut impl Write,
    tables: &[&TableCounters],
    contexts: &[ContextSummary],
) -> io::Result<()> {
    let mut closed = [0u64; CloseReason::ALL.len()];
    for t in tables {
        for (a, b) in closed.iter_mut().zip(t.flows_closed) {
            *a += b;
        }
    }
    let reasons: Vec<String> = CloseReason::ALL
        .iter()
        .zip(closed)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{} {n}", r.as_str()))
        .collect();
    writeln!(out, "closed: {}", reasons.join(", "))?;
    for line in crate::contexts::summary_lines(contexts, tables) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
