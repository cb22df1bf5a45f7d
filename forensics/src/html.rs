//! `conntrail show --html OUT.html`: the records as one self-contained page. Each record is
//! a section with its facts, why it was kept in plain words, and its timeline as inline SVG:
//! a client lane and a server lane (time flows down), one arrow per packet point from the
//! sender's lane to the receiver's, warn points orange, error points red, the irregular
//! point ringed and marked `>>`, a time axis labelled with each point's time.
//!
//! The page has inline CSS and SVG only: no script, no font, image or style sheet to fetch
//! (its Content-Security-Policy forbids it). Everything from the log is HTML-escaped. It is
//! written record by record, so a log of any size streams through.
//!
//! Vertical scale: the space before a point grows with the log of the gap since the
//! previous point, relative to the largest gap of the record ([`timeline::GapScale`]), so a stall of
//! seconds stands out next to microsecond exchanges without pushing them off the page.

use std::io::{self, Write};

use flowtable::point::{Dir, Severity};
use flowtable::record::Record;

use crate::timeline::{self, Layout, Row, Shape};
use crate::units::{dir_text, duration_text, endpoint_text, latency_text, utc_text};

/// Colour of the two lanes.
pub const LANE_RGB: [u8; 3] = [0x25, 0x63, 0xeb];
/// Colour of warn points (their marker, arrow and arrowhead).
pub const WARN_RGB: [u8; 3] = [0xf5, 0x9e, 0x0b];
/// Colour of error points.
pub const ERROR_RGB: [u8; 3] = [0xdc, 0x26, 0x26];
/// Colour of info points' arrows.
const INFO_RGB: [u8; 3] = [0x4b, 0x55, 0x63];
/// The time axis, its ticks and the bars of long gaps.
const AXIS_RGB: [u8; 3] = [0x9c, 0xa3, 0xaf];

fn hex(rgb: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2])
}

fn severity_rgb(s: Severity) -> [u8; 3] {
    match s {
        Severity::Info => INFO_RGB,
        Severity::Warn => WARN_RGB,
        Severity::Error => ERROR_RGB,
    }
}

/// `s` safe in HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#111827;background:#fff}\
h1{font-size:1.3em}\
section{border-top:1px solid #d1d5db;padding:.6em 0 1em}\
h2{font-size:1.05em;font-family:ui-monospace,'DejaVu Sans Mono',monospace;margin:.2em 0}\
p.why{margin:.4em 0;font-size:1em}\
p.why b{color:#7c2d12}\
table.facts{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:.85em;\
border-collapse:collapse}\
table.facts th{text-align:left;font-weight:normal;color:#4b5563;padding-right:1em}\
p.damage{color:#7f1d1d;font-family:monospace}\
p.note{color:#4b5563;font-size:.9em}\
svg{display:block;max-width:100%;height:auto;margin-top:.5em}\
svg text{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px;fill:#111827}\
";

/// An HTML page being written: [`HtmlPage::start`], one [`HtmlPage::record`] per record,
/// then [`HtmlPage::finish`].
pub struct HtmlPage<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> HtmlPage<W> {
    /// Writes the head of the page; `log` names the log in the title.
    pub fn start(mut out: W, log: &str) -> io::Result<HtmlPage<W>> {
        let log = escape(log);
        write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
             style-src 'unsafe-inline'\">\n\
             <title>conntrail show {log}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>conntrail records of {log}</h1>\n\
             <p class=\"note\">Each timeline: the client lane on the left, the server lane on \
             the right, time flowing down; an arrow per tracking point from the end that sent \
             the packet. Warn points are orange, error points red, the irregular point (the \
             first warn or error) is ringed and marked &gt;&gt;. The space before a point grows \
             with the logarithm of the gap since the previous point, relative to the largest \
             gap of that record (four decades); long gaps are also drawn as a grey bar on the \
             time axis with their length. Times are relative to the first packet.</p>\n"
        )?;
        Ok(HtmlPage { out, records: 0 })
    }

    /// One record as a section: header facts, the explanation, the timeline.
    pub fn record(&mut self, rec: &Record<'_>) -> io::Result<()> {
        self.records += 1;
        let out = &mut self.out;
        writeln!(out, "<section id=\"record-{}\">", rec.id)?;
        writeln!(
            out,
            "<h2>record {} {} {} &rarr; {}: {} ({})</h2>",
            rec.id,
            rec.proto.as_str(),
            escape(&endpoint_text(rec.client.ip, rec.client.port)),
            escape(&endpoint_text(rec.server.ip, rec.server.port)),
            escape(rec.close_reason.in_words()),
            rec.close_reason.as_str()
        )?;
        writeln!(
            out,
            "<p class=\"why\"><b>why kept:</b> {}</p>",
            escape(&timeline::explain(rec))
        )?;
        let flags: Vec<&str> = rec.flags.names().collect();
        let mut facts: Vec<(&str, String)> = vec![
            ("start", utc_text(rec.start_ns)),
            ("duration", duration_text(rec.duration_ns())),
        ];
        if rec.conn_state != flowtable::record::ConnState::None {
            facts.push((
                "state",
                format!(
                    "{}, history {}",
                    rec.conn_state.as_str(),
                    rec.history.as_str()
                ),
            ));
        }
        facts.push(("flags", flags.join(",")));
        if !rec.vlans.is_empty() {
            let v: Vec<String> = rec.vlans.iter().map(u16::to_string).collect();
            facts.push(("vlans", v.join("/")));
        }
        if rec.midstream {
            facts.push(("picked up", "mid-stream".to_string()));
        }
        facts.push(("c2s", dir_text(rec.proto, &rec.c2s)));
        facts.push(("s2c", dir_text(rec.proto, &rec.s2c)));
        facts.push(("latency", latency_text(rec)));
        facts.push((
            "points",
            format!(
                "{} kept, {} dropped, worker {}",
                rec.points.len(),
                rec.points_dropped,
                rec.worker
            ),
        ));
        writeln!(out, "<table class=\"facts\">")?;
        for (k, v) in facts {
            writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v))?;
        }
        writeln!(out, "</table>")?;
        out.write_all(svg_timeline(rec).as_bytes())?;
        writeln!(out, "</section>")
    }

    /// A place where the log is damaged, as the reader described it.
    pub fn damage(&mut self, what: &str) -> io::Result<()> {
        writeln!(
            self.out,
            "<p class=\"damage\">damaged log: {}</p>",
            escape(what)
        )
    }

    /// Closes the page and returns the writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        if self.records == 0 {
            writeln!(self.out, "<p class=\"note\">No records.</p>")?;
        }
        writeln!(self.out, "</body>\n</html>")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

const WIDTH: u32 = 1000;
const AXIS_X: u32 = 130;
const CLIENT_X: u32 = 340;
const SERVER_X: u32 = 820;
const TOP: u32 = 44;
/// Vertical space before a point: at least this...
const ROW_MIN: f64 = 26.0;
/// ...plus this much times where its gap falls on the record's [`GapScale`].
const ROW_GAP: f64 = 110.0;

fn lane_x(dir: Dir) -> u32 {
    match dir {
        Dir::C2s => CLIENT_X,
        Dir::S2c => SERVER_X,
    }
}

/// The timeline of one record as an `<svg>` element.
pub fn svg_timeline(rec: &Record<'_>) -> String {
    let Layout {
        rows,
        end_gap_ns,
        scale,
    } = timeline::layout(rec);
    let step = |gap: Option<u64>| ROW_MIN + ROW_GAP * gap.map_or(0.0, |g| scale.fraction(g));
    // Where each row sits, and the end row if any.
    let mut ys = Vec::with_capacity(rows.len());
    let mut y = f64::from(TOP) + 30.0;
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            y += step(row.gap_ns);
        }
        ys.push(y);
    }
    let end_y = end_gap_ns.map(|g| y + step(Some(g)));
    let bottom = end_y.unwrap_or(y) + 30.0;
    let height = bottom.ceil() as u32 + 8;
    let mut s = String::with_capacity(512 + rows.len() * 600);
    let client = escape(&format!(
        "client {}",
        endpoint_text(rec.client.ip, rec.client.port)
    ));
    let server = escape(&format!(
        "server {}",
        endpoint_text(rec.server.ip, rec.server.port)
    ));
    s.push_str(&format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" \
         height=\"{height}\" role=\"img\" aria-label=\"timeline of record {}\">\n",
        rec.id
    ));
    // Lanes and axis.
    s.push_str(&format!(
        "<text x=\"{CLIENT_X}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{client}</text>\n\
         <text x=\"{SERVER_X}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{server}</text>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"end\">time</text>\n\
         <line x1=\"{AXIS_X}\" y1=\"{TOP}\" x2=\"{AXIS_X}\" y2=\"{bottom:.1}\" stroke=\"{}\" stroke-width=\"1\"/>\n\
         <line x1=\"{CLIENT_X}\" y1=\"{TOP}\" x2=\"{CLIENT_X}\" y2=\"{bottom:.1}\" stroke=\"{lane}\" stroke-width=\"5\"/>\n\
         <line x1=\"{SERVER_X}\" y1=\"{TOP}\" x2=\"{SERVER_X}\" y2=\"{bottom:.1}\" stroke=\"{lane}\" stroke-width=\"5\"/>\n",
        AXIS_X - 8,
        hex(AXIS_RGB),
        lane = hex(LANE_RGB),
    ));
    for (i, row) in rows.iter().enumerate() {
        let y = ys[i];
        if let (Some(g), Some(prev)) = (row.gap_ns, i.checked_sub(1).map(|j| ys[j])) {
            s.push_str(&gap_svg(g, scale.fraction(g), prev, y));
        }
        s.push_str(&tick_svg(y, row.point.t_ns));
        s.push_str(&point_svg(row, y));
    }
    if let (Some(g), Some(end)) = (end_gap_ns, end_y) {
        s.push_str(&gap_svg(g, scale.fraction(g), y, end));
        s.push_str(&tick_svg(end, rec.duration_ns()));
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{end:.1}\" x2=\"{}\" y2=\"{end:.1}\" stroke=\"{}\" \
             stroke-width=\"1\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\" font-style=\"italic\">{}</text>\n",
            CLIENT_X - 20,
            SERVER_X + 20,
            hex(AXIS_RGB),
            (CLIENT_X + SERVER_X) / 2,
            end - 6.0,
            escape(&timeline::end_label(rec))
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// A long gap (at least half the scale): a bar on the axis between two rows, with its
/// length.
fn gap_svg(gap_ns: u64, fraction: f64, from_y: f64, to_y: f64) -> String {
    if fraction < 0.5 {
        return String::new();
    }
    format!(
        "<rect x=\"{}\" y=\"{:.1}\" width=\"6\" height=\"{:.1}\" fill=\"{}\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" font-style=\"italic\">gap {}</text>\n",
        AXIS_X - 3,
        from_y + 6.0,
        (to_y - from_y - 12.0).max(1.0),
        hex(AXIS_RGB),
        AXIS_X + 10,
        (from_y + to_y) / 2.0 + 4.0,
        escape(&duration_text(gap_ns))
    )
}

/// A tick on the time axis with the time since the first packet.
fn tick_svg(y: f64, t_ns: u64) -> String {
    format!(
        "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{}\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">+{}</text>\n",
        AXIS_X - 5,
        AXIS_X + 5,
        hex(AXIS_RGB),
        AXIS_X - 8,
        y + 4.0,
        escape(&duration_text(t_ns))
    )
}

fn point_svg(row: &Row, y: f64) -> String {
    let p = &row.point;
    let colour = hex(severity_rgb(p.severity));
    let tag = match p.severity {
        Severity::Info => "",
        Severity::Warn => " [warn]",
        Severity::Error => " [error]",
    };
    let label = escape(&format!("{}{tag}", row.label));
    let title = escape(&format!(
        "+{} {} {}{tag}",
        duration_text(p.t_ns),
        p.dir.as_str(),
        row.label
    ));
    let weight = if row.irregular {
        " font-weight=\"bold\""
    } else {
        ""
    };
    let from = lane_x(p.dir);
    let mut s = String::new();
    match row.shape {
        Shape::Packet => {
            let to = lane_x(match p.dir {
                Dir::C2s => Dir::S2c,
                Dir::S2c => Dir::C2s,
            });
            // The arrow stops short of the receiving lane; its head touches it.
            let (head_base, tip) = if to > from {
                (f64::from(to) - 14.0, f64::from(to) - 3.0)
            } else {
                (f64::from(to) + 14.0, f64::from(to) + 3.0)
            };
            let width = if p.severity == Severity::Info { 2 } else { 3 };
            s.push_str(&format!(
                "<line x1=\"{from}\" y1=\"{y:.1}\" x2=\"{head_base:.1}\" y2=\"{y:.1}\" \
                 stroke=\"{colour}\" stroke-width=\"{width}\"/>\n\
                 <polygon points=\"{tip:.1},{y:.1} {head_base:.1},{:.1} {head_base:.1},{:.1}\" \
                 fill=\"{colour}\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\"{weight}>{label}</text>\n",
                y - 6.0,
                y + 6.0,
                (from + to) / 2,
                y - 6.0
            ));
        }
        Shape::Note => {
            let (x, anchor) = match p.dir {
                Dir::C2s => (from + 16, "start"),
                Dir::S2c => (from - 16, "end"),
            };
            s.push_str(&format!(
                "<text x=\"{x}\" y=\"{:.1}\" text-anchor=\"{anchor}\" font-style=\"italic\"{weight}>\
                 {label}</text>\n",
                y + 4.0
            ));
        }
        Shape::Break => {
            s.push_str(&format!(
                "<line x1=\"{}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{}\" \
                 stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\" font-style=\"italic\">\
                 {label}</text>\n",
                AXIS_X + 10,
                SERVER_X + 40,
                hex(AXIS_RGB),
                (CLIENT_X + SERVER_X) / 2,
                y - 6.0
            ));
            return s;
        }
    }
    // The point itself on the sender's lane, ringed when irregular.
    if row.irregular {
        s.push_str(&format!(
            "<circle cx=\"{from}\" cy=\"{y:.1}\" r=\"14\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"3\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">&gt;&gt;</text>\n",
            match p.dir {
                Dir::C2s => from - 30,
                Dir::S2c => from + 30,
            },
            y + 4.0
        ));
    }
    let (fill, stroke) = match p.severity {
        Severity::Info => ("#ffffff".to_string(), hex(INFO_RGB)),
        _ => (colour.clone(), colour.clone()),
    };
    let r = if row.shape == Shape::Note { 6 } else { 8 };
    s.push_str(&format!(
        "<circle cx=\"{from}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\" stroke=\"{stroke}\" \
         stroke-width=\"2\"><title>{title}</title></circle>\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>a&b \"c\" 'd'</script>"),
            "&lt;script&gt;a&amp;b &quot;c&quot; &#39;d&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn page_has_nothing_to_fetch() {
        let page = HtmlPage::start(Vec::new(), "<x>.log").expect("start");
        let bytes = page.finish().expect("finish");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.contains("&lt;x&gt;.log"));
        assert!(!text.contains("<x>"));
        for banned in [
            "<script", "src=", "href=", "http:", "https:", "@import", "url(",
        ] {
            assert!(!text.contains(banned), "page contains {banned}");
        }
    }
}
