//! `conntrail diff`: a baseline and a problematic connection side by side.
//!
//! Two parts:
//! - the header fields (close reason, `conn_state`, history, flags, duration, packets, bytes
//!   and payload each way, retransmissions, zero windows, duplicate ACKs, out-of-order
//!   segments, each latency), with a delta column: the difference of counts, the difference
//!   and the ratio (problem / baseline) of durations, `differs` for text;
//! - the two trails of tracking points side by side, aligned on the handshake: times are
//!   relative to the `handshake-done` point when both connections have one, else to their
//!   SYN when both have one, else to their first packet. Points are paired as a line diff
//!   pairs lines: the longest common subsequence of (kind, direction) is matched row to row,
//!   and the points between two matched rows are paired in order (a changed row) or stand
//!   alone (a gap on the other side).
//!
//! The divergence is the first row where the two connections part: a changed row or a gap,
//! or a matched row whose *step* (time since the previous matched row, on each side) differs
//! by more than [`DIVERGE_MIN_NS`] and by more than a factor [`DIVERGE_RATIO`]. Steps rather
//! than times from the anchor, so that one slow SYN-ACK marks the SYN-ACK row and not every
//! row after it.

use std::process::ExitCode;

use anyhow::{bail, Result};
use flowtable::point::{Point, PointKind, Severity};
use flowtable::record::{DirStats, Record};
use serde_json::{json, Value};

use crate::logs::{RecordRef, Records};
use crate::units::{duration_text, endpoint_text, utc_text};

/// A matched row diverges only when its steps differ by more than this (100 ms, the default
/// latency triggers' threshold: well beyond jitter and ordinary application think time)...
pub const DIVERGE_MIN_NS: u64 = 100_000_000;
/// ...and the longer step is more than this many times the shorter (ordinary variation
/// between two healthy connections reaches x3 on real captures).
pub const DIVERGE_RATIO: f64 = 4.0;

/// Arguments of `conntrail diff`.
#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The good connection, as LOG:ID.
    pub baseline: RecordRef,
    /// The bad connection, as LOG:ID.
    pub problem: RecordRef,
    /// One JSON object: both records, the field deltas, the aligned timeline.
    #[arg(long)]
    pub json: bool,
    /// Both records from NATS JetStream, each named HOST:LOG:ID (as `query --nats` prints).
    #[command(flatten)]
    pub nats: crate::stream::StreamArgs,
}

pub fn run(args: DiffArgs) -> Result<ExitCode> {
    let mut damaged = crate::exit::Damaged::default();
    let mut damage = |d: &str| damaged.log(d);
    let (baseline, problem) = match args.nats.nats {
        Some(_) => (
            crate::stream::load_record(&args.nats, &args.baseline, &mut damage)?,
            crate::stream::load_record(&args.nats, &args.problem, &mut damage)?,
        ),
        None => load_pair(&args.baseline, &args.problem, &mut damage)?,
    };
    let diff = Diff::of(&baseline, &problem);
    let text = if args.json {
        diff.to_json(&args.baseline, &args.problem).to_string()
    } else {
        diff.to_text(&args.baseline, &args.problem)
    };
    crate::logs::print_and_exit(&text, &damaged)
}

/// Loads both records, in one pass when they are in the same log.
fn load_pair(
    a: &RecordRef,
    b: &RecordRef,
    mut damage: impl FnMut(&str),
) -> Result<(Record<'static>, Record<'static>)> {
    if a.log != b.log {
        return Ok((a.load(&mut damage)?, b.load(&mut damage)?));
    }
    let (mut ra, mut rb) = (None, None);
    for item in Records::open(std::slice::from_ref(&a.log))? {
        match item {
            Ok(rec) => {
                if rec.id == b.id && rb.is_none() {
                    rb = Some(rec.clone());
                }
                if rec.id == a.id && ra.is_none() {
                    ra = Some(rec);
                }
            }
            Err(d) => damage(&d),
        }
        if ra.is_some() && rb.is_some() {
            break;
        }
    }
    match (ra, rb) {
        (Some(ra), Some(rb)) => Ok((ra, rb)),
        (None, _) => bail!("{}: no record with id {}", a.log.display(), a.id),
        (_, None) => bail!("{}: no record with id {}", b.log.display(), b.id),
    }
}

/// One header field of both records.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Text(String),
    Count(u64),
    /// ns; `None` when the connection never got that far.
    Duration(Option<u64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldDiff {
    /// The field's name in `show --json` (dotted for nested fields).
    pub field: &'static str,
    pub label: &'static str,
    pub baseline: FieldValue,
    pub problem: FieldValue,
}

impl FieldDiff {
    pub fn differs(&self) -> bool {
        self.baseline != self.problem
    }

    /// problem - baseline, for counts and durations both present.
    pub fn delta(&self) -> Option<i128> {
        match (&self.baseline, &self.problem) {
            (FieldValue::Count(b), FieldValue::Count(p))
            | (FieldValue::Duration(Some(b)), FieldValue::Duration(Some(p))) => {
                Some(i128::from(*p) - i128::from(*b))
            }
            _ => None,
        }
    }

    /// problem / baseline, for durations both present with a non-zero baseline.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.baseline, &self.problem) {
            (FieldValue::Duration(Some(b)), FieldValue::Duration(Some(p))) if *b > 0 => {
                Some(*p as f64 / *b as f64)
            }
            _ => None,
        }
    }

    fn value_text(v: &FieldValue) -> String {
        match v {
            FieldValue::Text(t) if t.is_empty() => "-".to_string(),
            FieldValue::Text(t) => t.clone(),
            FieldValue::Count(n) => n.to_string(),
            FieldValue::Duration(d) => d.map_or_else(|| "-".to_string(), duration_text),
        }
    }

    fn delta_text(&self) -> String {
        if !self.differs() {
            return String::new();
        }
        match (&self.baseline, &self.problem, self.delta()) {
            (FieldValue::Count(_), _, Some(d)) => format!("{d:+}"),
            (FieldValue::Duration(_), _, Some(d)) => {
                let abs = duration_text(d.unsigned_abs().min(u128::from(u64::MAX)) as u64);
                let sign = if d < 0 { "-" } else { "+" };
                match self.ratio() {
                    Some(r) => format!("{sign}{abs} (x{r:.2})"),
                    None => format!("{sign}{abs}"),
                }
            }
            (FieldValue::Duration(None), _, None) => "only the problem has it".to_string(),
            (FieldValue::Duration(_), _, None) => "only the baseline has it".to_string(),
            _ => "differs".to_string(),
        }
    }

    fn to_json(&self) -> Value {
        let v = |v: &FieldValue| match v {
            FieldValue::Text(t) => json!(t),
            FieldValue::Count(n) => json!(n),
            FieldValue::Duration(d) => json!(d),
        };
        let mut o = json!({
            "field": self.field,
            "baseline": v(&self.baseline),
            "problem": v(&self.problem),
            "differs": self.differs(),
        });
        if let Some(d) = self.delta() {
            o["delta"] = json!(d as i64);
        }
        if let Some(r) = self.ratio() {
            o["ratio"] = json!(r);
        }
        o
    }
}

/// The header fields compared, in display order.
pub fn fields(b: &Record<'_>, p: &Record<'_>) -> Vec<FieldDiff> {
    let text = |field, label, f: &dyn Fn(&Record<'_>) -> String| FieldDiff {
        field,
        label,
        baseline: FieldValue::Text(f(b)),
        problem: FieldValue::Text(f(p)),
    };
    let count = |field, label, f: &dyn Fn(&Record<'_>) -> u64| FieldDiff {
        field,
        label,
        baseline: FieldValue::Count(f(b)),
        problem: FieldValue::Count(f(p)),
    };
    let duration = |field, label, f: &dyn Fn(&Record<'_>) -> Option<u64>| FieldDiff {
        field,
        label,
        baseline: FieldValue::Duration(f(b)),
        problem: FieldValue::Duration(f(p)),
    };
    type Dir = fn(&DirStats) -> u64;
    let per_dir: [(&str, &str, &str, &str, Dir); 7] = [
        ("c2s.pkts", "s2c.pkts", "c2s pkts", "s2c pkts", |d| d.pkts),
        ("c2s.bytes", "s2c.bytes", "c2s bytes", "s2c bytes", |d| {
            d.bytes
        }),
        (
            "c2s.payload",
            "s2c.payload",
            "c2s payload",
            "s2c payload",
            |d| d.payload,
        ),
        (
            "c2s.retrans",
            "s2c.retrans",
            "c2s retrans",
            "s2c retrans",
            |d| u64::from(d.retrans),
        ),
        (
            "c2s.zero_window",
            "s2c.zero_window",
            "c2s zero-window",
            "s2c zero-window",
            |d| u64::from(d.zero_window),
        ),
        (
            "c2s.dup_ack",
            "s2c.dup_ack",
            "c2s dup-ack",
            "s2c dup-ack",
            |d| u64::from(d.dup_ack),
        ),
        (
            "c2s.out_of_order",
            "s2c.out_of_order",
            "c2s out-of-order",
            "s2c out-of-order",
            |d| u64::from(d.out_of_order),
        ),
    ];
    let mut rows = vec![
        text("proto", "proto", &|r| r.proto.as_str().to_string()),
        text("close_reason", "close reason", &|r| {
            r.close_reason.as_str().to_string()
        }),
        text("conn_state", "conn_state", &|r| {
            r.conn_state.as_str().to_string()
        }),
        text("history", "history", &|r| r.history.as_str().to_string()),
        text("flags", "flags", &|r| {
            r.flags.names().collect::<Vec<_>>().join(",")
        }),
        duration("duration_ns", "duration", &|r| Some(r.duration_ns())),
    ];
    for (c2s, s2c, c2s_label, s2c_label, f) in per_dir {
        rows.push(count(c2s, c2s_label, &|r| f(&r.c2s)));
        rows.push(count(s2c, s2c_label, &|r| f(&r.s2c)));
    }
    rows.extend([
        duration("latency_ns.syn_synack", "syn -> syn-ack", &|r| {
            r.latency.syn_synack_ns
        }),
        duration("latency_ns.synack_ack", "syn-ack -> ack", &|r| {
            r.latency.synack_ack_ns
        }),
        duration("latency_ns.ttfb", "first response", &|r| r.latency.ttfb_ns),
        duration("latency_ns.max_stall", "largest stall", &|r| {
            r.latency.max_stall_ns
        }),
        count("points_dropped", "points dropped", &|r| {
            u64::from(r.points_dropped)
        }),
    ]);
    rows
}

/// What t=0 of the aligned timelines is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    HandshakeDone,
    Syn,
    FirstPacket,
}

impl Anchor {
    pub fn as_str(self) -> &'static str {
        match self {
            Anchor::HandshakeDone => "handshake-done",
            Anchor::Syn => "syn",
            Anchor::FirstPacket => "first-packet",
        }
    }

    /// The anchor both records have, and its time in each (ns from its first packet).
    pub fn of(b: &Record<'_>, p: &Record<'_>) -> (Anchor, u64, u64) {
        let find = |r: &Record<'_>, k| r.points.iter().find(|pt| pt.kind == k).map(|pt| pt.t_ns);
        for (anchor, kind) in [
            (Anchor::HandshakeDone, PointKind::HandshakeDone),
            (Anchor::Syn, PointKind::Syn),
        ] {
            if let (Some(tb), Some(tp)) = (find(b, kind), find(p, kind)) {
                return (anchor, tb, tp);
            }
        }
        (Anchor::FirstPacket, 0, 0)
    }
}

/// One row of the aligned timelines: a point index on each side, or a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub baseline: Option<usize>,
    pub problem: Option<usize>,
    /// Matched: the same kind and direction on both sides.
    pub same: bool,
}

/// Pairs the two trails as a line diff pairs lines (see the module documentation).
pub fn align(b: &[Point], p: &[Point]) -> Vec<Row> {
    // The note that marks the end of a record's longest silence is compared as "largest
    // stall"; two of them at different places would misalign the rest. A `stall` the
    // trigger raised (a warning) is aligned like any point.
    let kept = |pts: &[Point]| -> Vec<usize> {
        (0..pts.len())
            .filter(|&i| !(pts[i].kind == PointKind::Stall && pts[i].severity == Severity::Info))
            .collect()
    };
    let (bi, pi) = (kept(b), kept(p));
    let pick =
        |pts: &[Point], idx: &[usize]| -> Vec<Point> { idx.iter().map(|&i| pts[i]).collect() };
    align_all(&pick(b, &bi), &pick(p, &pi))
        .into_iter()
        .map(|r| Row {
            baseline: r.baseline.map(|i| bi[i]),
            problem: r.problem.map(|j| pi[j]),
            same: r.same,
        })
        .collect()
}

fn align_all(b: &[Point], p: &[Point]) -> Vec<Row> {
    let key = |x: &Point| (x.kind, x.dir);
    let (n, m) = (b.len(), p.len());
    let w = m + 1;
    // lcs[i * w + j]: length of the longest common subsequence of b[i..] and p[j..].
    let mut lcs = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * w + j] = if key(&b[i]) == key(&p[j]) {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let mut rows = Vec::with_capacity(n.max(m));
    let (mut pend_b, mut pend_p) = (Vec::new(), Vec::new());
    let flush = |rows: &mut Vec<Row>, pb: &mut Vec<usize>, pp: &mut Vec<usize>| {
        for k in 0..pb.len().max(pp.len()) {
            rows.push(Row {
                baseline: pb.get(k).copied(),
                problem: pp.get(k).copied(),
                same: false,
            });
        }
        pb.clear();
        pp.clear();
    };
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if key(&b[i]) == key(&p[j]) {
            flush(&mut rows, &mut pend_b, &mut pend_p);
            rows.push(Row {
                baseline: Some(i),
                problem: Some(j),
                same: true,
            });
            i += 1;
            j += 1;
        } else if lcs[(i + 1) * w + j] >= lcs[i * w + j + 1] {
            pend_b.push(i);
            i += 1;
        } else {
            pend_p.push(j);
            j += 1;
        }
    }
    pend_b.extend(i..n);
    pend_p.extend(j..m);
    flush(&mut rows, &mut pend_b, &mut pend_p);
    rows
}

/// The first row where the connections part, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    pub row: usize,
    pub reason: String,
}

/// Both records compared.
pub struct Diff<'r> {
    pub baseline: &'r Record<'static>,
    pub problem: &'r Record<'static>,
    pub fields: Vec<FieldDiff>,
    pub anchor: Anchor,
    /// The anchor's time on each side, ns from its first packet.
    pub anchor_baseline_ns: u64,
    pub anchor_problem_ns: u64,
    pub rows: Vec<Row>,
    pub divergence: Option<Divergence>,
}

/// `+1.234 ms` / `-85.376 ms`: a time relative to the anchor.
fn rel_text(t_ns: u64, anchor_ns: u64) -> String {
    if t_ns >= anchor_ns {
        format!("+{}", duration_text(t_ns - anchor_ns))
    } else {
        format!("-{}", duration_text(anchor_ns - t_ns))
    }
}

fn point_text(p: &Point) -> String {
    format!("{} {}", p.kind.as_str(), p.dir.as_str())
}

fn steps_diverge(b: u64, p: u64) -> bool {
    let (lo, hi) = (b.min(p), b.max(p));
    hi - lo > DIVERGE_MIN_NS && hi as f64 > DIVERGE_RATIO * lo as f64
}

impl<'r> Diff<'r> {
    pub fn of(baseline: &'r Record<'static>, problem: &'r Record<'static>) -> Diff<'r> {
        let (anchor, anchor_baseline_ns, anchor_problem_ns) = Anchor::of(baseline, problem);
        let rows = align(&baseline.points, &problem.points);
        let mut diff = Diff {
            baseline,
            problem,
            fields: fields(baseline, problem),
            anchor,
            anchor_baseline_ns,
            anchor_problem_ns,
            rows,
            divergence: None,
        };
        diff.divergence = diff.find_divergence();
        diff
    }

    fn find_divergence(&self) -> Option<Divergence> {
        let (bp, pp) = (&self.baseline.points, &self.problem.points);
        // The last matched row: its point's text and its time on each side.
        let mut common: Option<(String, u64, u64)> = None;
        let got =
            |p: &Point, anchor: u64, since: Option<u64>, common: &Option<(String, u64, u64)>| {
                let mut t = format!("{} at {}", point_text(p), rel_text(p.t_ns, anchor));
                if let (Some(since), Some((what, _, _))) = (since, common) {
                    t.push_str(&format!(
                        " ({} after {what})",
                        duration_text(p.t_ns.saturating_sub(since))
                    ));
                }
                t
            };
        for (n, row) in self.rows.iter().enumerate() {
            let later =
                |side: fn(&Row) -> Option<usize>| self.rows[n..].iter().any(|r| side(r).is_some());
            let (since_b, since_p) = match &common {
                Some((_, b, p)) => (Some(*b), Some(*p)),
                None => (None, None),
            };
            let at_b = |i: usize| got(&bp[i], self.anchor_baseline_ns, since_b, &common);
            let at_p = |i: usize| got(&pp[i], self.anchor_problem_ns, since_p, &common);
            let reason = match (row.baseline, row.problem) {
                (Some(i), Some(j)) if row.same => {
                    let (tb, tp) = (bp[i].t_ns, pp[j].t_ns);
                    let (sb, sp) = (
                        tb.saturating_sub(since_b.unwrap_or(0)),
                        tp.saturating_sub(since_p.unwrap_or(0)),
                    );
                    let previous = common
                        .as_ref()
                        .map_or("the first packet".to_string(), |c| c.0.clone());
                    common = Some((point_text(&bp[i]), tb, tp));
                    if !steps_diverge(sb, sp) {
                        continue;
                    }
                    format!(
                        "baseline got {} {} after {previous}, problem {} after it",
                        point_text(&bp[i]),
                        duration_text(sb),
                        duration_text(sp)
                    )
                }
                (Some(i), Some(j)) => {
                    format!("baseline got {}, problem got {}", at_b(i), at_p(j))
                }
                (Some(i), None) => format!(
                    "baseline got {}, {}",
                    at_b(i),
                    if later(|r| r.problem) {
                        "problem had no such point"
                    } else {
                        "problem's trail ends"
                    }
                ),
                (None, Some(j)) => format!(
                    "problem got {}, {}",
                    at_p(j),
                    if later(|r| r.baseline) {
                        "baseline had no such point"
                    } else {
                        "baseline's trail ends"
                    }
                ),
                (None, None) => continue,
            };
            return Some(Divergence { row: n, reason });
        }
        None
    }

    pub fn to_text(&self, b_ref: &RecordRef, p_ref: &RecordRef) -> String {
        let mut s = String::new();
        for (name, r, rf) in [
            ("baseline", self.baseline, b_ref),
            ("problem", self.problem, p_ref),
        ] {
            s.push_str(&format!(
                "{name:<9} {}:{}  {} {} -> {}, start {}\n",
                rf.log.display(),
                rf.id,
                r.proto.as_str(),
                endpoint_text(r.client.ip, r.client.port),
                endpoint_text(r.server.ip, r.server.port),
                utc_text(r.start_ns)
            ));
        }
        s.push_str(&format!(
            "\n{:<20} {:<22} {:<22} delta\n",
            "", "baseline", "problem"
        ));
        for f in &self.fields {
            let line = format!(
                "{:<20} {:<22} {:<22} {}",
                f.label,
                FieldDiff::value_text(&f.baseline),
                FieldDiff::value_text(&f.problem),
                f.delta_text()
            );
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s.push_str(&format!(
            "\ntimeline, t=0 at {} (baseline {}, problem {} after the first packet)\n",
            self.anchor.as_str(),
            duration_text(self.anchor_baseline_ns),
            duration_text(self.anchor_problem_ns)
        ));
        const CELL: usize = 38;
        s.push_str(&format!("   {:<CELL$} problem\n", "baseline"));
        let cell = |pt: Option<&Point>, anchor: u64| {
            pt.map_or_else(String::new, |p| {
                format!("{:>12}  {}", rel_text(p.t_ns, anchor), point_text(p))
            })
        };
        for (n, row) in self.rows.iter().enumerate() {
            let diverges = self.divergence.as_ref().filter(|d| d.row == n);
            let mark = if diverges.is_some() {
                ">>"
            } else if row.same {
                "  "
            } else {
                " *"
            };
            let mut line = format!(
                "{mark} {:<CELL$} {:<CELL$}",
                cell(
                    row.baseline.and_then(|i| self.baseline.points.get(i)),
                    self.anchor_baseline_ns
                ),
                cell(
                    row.problem.and_then(|i| self.problem.points.get(i)),
                    self.anchor_problem_ns
                ),
            );
            if let Some(d) = diverges {
                line.push_str(&format!(" << diverges here: {}", d.reason));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        if self.divergence.is_none() {
            s.push_str("no divergence: the same points at comparable times\n");
        }
        s
    }

    pub fn to_json(&self, b_ref: &RecordRef, p_ref: &RecordRef) -> Value {
        let side = |pt: Option<&Point>, anchor: u64| {
            pt.map(|p| {
                json!({
                    "t_ns": i128::from(p.t_ns) - i128::from(anchor),
                    "kind": p.kind.as_str(),
                    "dir": p.dir.as_str(),
                    "severity": p.severity.as_str(),
                    "arg": p.arg,
                })
            })
        };
        let rows: Vec<Value> = self
            .rows
            .iter()
            .enumerate()
            .map(|(n, row)| {
                json!({
                    "baseline": side(row.baseline.and_then(|i| self.baseline.points.get(i)), self.anchor_baseline_ns),
                    "problem": side(row.problem.and_then(|i| self.problem.points.get(i)), self.anchor_problem_ns),
                    "same": row.same,
                    "diverges": self.divergence.as_ref().is_some_and(|d| d.row == n),
                })
            })
            .collect();
        let r = |rf: &RecordRef, rec: &Record<'_>| json!({"ref": format!("{}:{}", rf.log.display(), rf.id), "record": crate::show::to_json(rec)});
        json!({
            "baseline": r(b_ref, self.baseline),
            "problem": r(p_ref, self.problem),
            "fields": self.fields.iter().map(FieldDiff::to_json).collect::<Vec<_>>(),
            "timeline": {
                "anchor": self.anchor.as_str(),
                "baseline_anchor_ns": self.anchor_baseline_ns,
                "problem_anchor_ns": self.anchor_problem_ns,
                "rows": rows,
            },
            "divergence": self.divergence.as_ref().map(|d| json!({"row": d.row, "reason": d.reason})),
        })
    }
}

#[cfg(test)]
mod tests {
    use flowtable::point::{Dir, Severity};

    use super::*;

    fn pt(t_ms: u64, kind: PointKind, dir: Dir) -> Point {
        Point {
            t_ns: t_ms * 1_000_000,
            kind,
            dir,
            severity: Severity::Info,
            arg: 0,
        }
    }

    #[test]
    fn alignment_pairs_common_points_and_changes() {
        use Dir::*;
        use PointKind::*;
        let b = [
            pt(0, Syn, C2s),
            pt(1, SynAck, S2c),
            pt(2, HandshakeDone, C2s),
            pt(3, FirstData, C2s),
            pt(23, FirstData, S2c),
            pt(30, Fin, C2s),
            pt(31, Fin, S2c),
        ];
        let p = [
            pt(0, Syn, C2s),
            pt(1, SynAck, S2c),
            pt(2, HandshakeDone, C2s),
            pt(3, FirstData, C2s),
            pt(4, Retransmission, C2s),
            pt(6, Rst, S2c),
        ];
        let rows = align(&b, &p);
        let shape: Vec<(Option<usize>, Option<usize>, bool)> = rows
            .iter()
            .map(|r| (r.baseline, r.problem, r.same))
            .collect();
        assert_eq!(
            shape,
            [
                (Some(0), Some(0), true),
                (Some(1), Some(1), true),
                (Some(2), Some(2), true),
                (Some(3), Some(3), true),
                (Some(4), Some(4), false),
                (Some(5), Some(5), false),
                (Some(6), None, false),
            ]
        );
    }

    fn record(points: Vec<Point>) -> Record<'static> {
        use flowtable::record::{
            Addr, CloseReason, ConnState, Endpoint, Flags, History, Latency, Proto,
        };
        use std::borrow::Cow;
        let ep = |last: u8, port: u16| Endpoint {
            ip: Addr::from_ip(std::net::IpAddr::from([10, 0, 0, last])),
            port,
        };
        Record {
            id: 1,
            worker: 0,
            context: 0,
            proto: Proto::Tcp,
            ip_version: 4,
            client: ep(1, 40000),
            server: ep(2, 80),
            midstream: false,
            vlans: Cow::Owned(Vec::new()),
            start_ns: 1_000_000_000,
            end_ns: 1_000_000_000 + points.last().map_or(0, |p| p.t_ns),
            c2s: DirStats::default(),
            s2c: DirStats::default(),
            close_reason: CloseReason::TcpFin,
            conn_state: ConnState::SF,
            history: History::default(),
            flags: Flags::ALL,
            irregular_point: None,
            latency: Latency::default(),
            points: Cow::Owned(points),
            points_dropped: 0,
            icmp_type_code: 0,
        }
    }

    #[test]
    fn a_slow_response_diverges_on_its_row_by_time() {
        use Dir::*;
        use PointKind::*;
        let trail = |response_ms: u64| {
            vec![
                pt(0, Syn, C2s),
                pt(10, SynAck, S2c),
                pt(11, HandshakeDone, C2s),
                pt(12, FirstData, C2s),
                pt(12 + response_ms, FirstData, S2c),
                pt(20 + response_ms, Fin, C2s),
                pt(21 + response_ms, Fin, S2c),
            ]
        };
        let (b, p) = (record(trail(20)), record(trail(2500)));
        let diff = Diff::of(&b, &p);
        assert_eq!(diff.anchor, Anchor::HandshakeDone);
        assert_eq!(
            (diff.anchor_baseline_ns, diff.anchor_problem_ns),
            (11_000_000, 11_000_000)
        );
        assert!(diff.rows.iter().all(|r| r.same));
        let d = diff.divergence.expect("diverges");
        assert_eq!(d.row, 4);
        assert_eq!(
            d.reason,
            "baseline got first-data s2c 20.000 ms after first-data c2s, problem 2.500 s after it"
        );
        let duration = diff
            .fields
            .iter()
            .find(|f| f.field == "duration_ns")
            .expect("row");
        assert_eq!(duration.delta(), Some(2_480_000_000));
        assert_eq!(duration.delta_text(), "+2.480 s (x61.49)");
        // A connection against itself: no divergence.
        assert!(Diff::of(&b, &b).divergence.is_none());
    }

    #[test]
    fn steps_diverge_past_both_thresholds() {
        assert!(!steps_diverge(1_000_000, 90_000_000), "under 100 ms apart");
        assert!(!steps_diverge(386_000_000, 1_125_000_000), "under x4");
        assert!(steps_diverge(20_000_000, 2_000_000_000));
        assert!(steps_diverge(0, 101_000_000));
    }
}
