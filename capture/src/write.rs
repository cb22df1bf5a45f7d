//! The capture writer: pcap and pcapng files, little-endian, each frame's timestamp written
//! as given (the units its input stored), so a copied frame keeps its time to the unit.

use std::io::{self, Write};

/// Bytes of a pcap record header.
const RECORD_HEADER: usize = 16;

/// A pcap file being written: one link type, micro- or nanosecond timestamps.
pub struct PcapWriter<W: Write> {
    out: W,
    nanos: bool,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header: link type `linktype` (`LINKTYPE_*`), nanosecond timestamps
    /// when `nanos` (else microseconds), snapshot length `snaplen`.
    pub fn new(mut out: W, linktype: u32, nanos: bool, snaplen: u32) -> io::Result<PcapWriter<W>> {
        let magic: u32 = if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 };
        let mut header = [0u8; 24];
        header[0..4].copy_from_slice(&magic.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // Bytes 8..16: time zone and timestamp accuracy, both 0.
        header[16..20].copy_from_slice(&snaplen.to_le_bytes());
        header[20..24].copy_from_slice(&linktype.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, nanos })
    }

    /// Whether the file's timestamps are in nanoseconds.
    pub fn nanos(&self) -> bool {
        self.nanos
    }

    /// Writes a frame of `wire_len` bytes on the wire, `data` of them captured, stamped
    /// `secs` and `frac` (in the file's unit).
    pub fn frame(&mut self, secs: u32, frac: u32, wire_len: u32, data: &[u8]) -> io::Result<()> {
        let mut header = [0u8; RECORD_HEADER];
        header[0..4].copy_from_slice(&secs.to_le_bytes());
        header[4..8].copy_from_slice(&frac.to_le_bytes());
        header[8..12].copy_from_slice(&captured(data)?.to_le_bytes());
        header[12..16].copy_from_slice(&wire_len.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(data)
    }

    /// Writes a frame stamped `ts_ns` ns since the epoch, in the file's unit (a microsecond
    /// file drops the nanoseconds).
    pub fn frame_at(&mut self, ts_ns: u64, wire_len: u32, data: &[u8]) -> io::Result<()> {
        let secs = u32::try_from(ts_ns / 1_000_000_000).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a timestamp past 2106 does not fit a pcap record",
            )
        })?;
        let frac_ns = (ts_ns % 1_000_000_000) as u32;
        let frac = if self.nanos { frac_ns } else { frac_ns / 1000 };
        self.frame(secs, frac, wire_len, data)
    }

    /// The writer the file went to, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A frame's captured length as a record says it.
fn captured(data: &[u8]) -> io::Result<u32> {
    u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a frame of 4 GiB or more does not fit a capture record",
        )
    })
}

/// An interface of a pcapng file, as [`PcapNgWriter::interface`] describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NgInterface {
    /// Link type number (`LINKTYPE_*`).
    pub linktype: u32,
    /// Largest captured length (0: not said).
    pub snaplen: u32,
    /// Timestamp resolution as pcapng codes it (`if_tsresol`; 6, microseconds, is the
    /// default and is not written).
    pub tsresol: u8,
    /// Seconds added to the timestamps (`if_tsoffset`; 0 is not written).
    pub offset_s: i64,
    /// Its name (`if_name`), if it has one.
    pub name: Option<String>,
}

/// A pcapng file being written: one section, interfaces added as they are needed.
pub struct PcapNgWriter<W: Write> {
    out: W,
    interfaces: u32,
}

/// pcapng block types written here.
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;

/// pcapng option codes written here.
const OPT_END: u16 = 0;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

impl<W: Write> PcapNgWriter<W> {
    /// Writes the section header (version 1.0, length not given).
    pub fn new(mut out: W) -> io::Result<PcapNgWriter<W>> {
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        block(&mut out, SECTION_HEADER, &body)?;
        Ok(PcapNgWriter { out, interfaces: 0 })
    }

    /// Describes an interface; its frames are written with the id this returns.
    pub fn interface(&mut self, iface: &NgInterface) -> io::Result<u32> {
        let mut body = Vec::with_capacity(32);
        // The link type takes 16 bits, then 16 reserved.
        body.extend_from_slice(&(iface.linktype as u16).to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&iface.snaplen.to_le_bytes());
        let mut options = false;
        if let Some(name) = &iface.name {
            option(&mut body, IF_NAME, name.as_bytes())?;
            options = true;
        }
        if iface.tsresol != 6 {
            option(&mut body, IF_TSRESOL, &[iface.tsresol])?;
            options = true;
        }
        if iface.offset_s != 0 {
            option(&mut body, IF_TSOFFSET, &iface.offset_s.to_le_bytes())?;
            options = true;
        }
        if options {
            option(&mut body, OPT_END, &[])?;
        }
        block(&mut self.out, INTERFACE_DESCRIPTION, &body)?;
        let id = self.interfaces;
        self.interfaces += 1;
        Ok(id)
    }

    /// Writes a frame of interface `interface` (an id [`PcapNgWriter::interface`] gave):
    /// `wire_len` bytes on the wire, `data` of them captured, stamped `units` of the
    /// interface's resolution.
    pub fn frame(
        &mut self,
        interface: u32,
        units: u64,
        wire_len: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let mut body = Vec::with_capacity(20 + data.len() + 3);
        body.extend_from_slice(&interface.to_le_bytes());
        body.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
        body.extend_from_slice(&(units as u32).to_le_bytes());
        body.extend_from_slice(&captured(data)?.to_le_bytes());
        body.extend_from_slice(&wire_len.to_le_bytes());
        body.extend_from_slice(data);
        body.resize(body.len().next_multiple_of(4), 0);
        block(&mut self.out, ENHANCED_PACKET, &body)
    }

    /// The writer the file went to, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes a pcapng block: type, total length, `body` (a multiple of 4 bytes), total length.
fn block(out: &mut impl Write, kind: u32, body: &[u8]) -> io::Result<()> {
    let total = u32::try_from(body.len() + 12).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a pcapng block of 4 GiB or more",
        )
    })?;
    out.write_all(&kind.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&total.to_le_bytes())
}

/// Appends an option to a block body: code, length, value padded to 4 bytes.
fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) -> io::Result<()> {
    let len = u16::try_from(value.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a pcapng option of 64 KiB or more",
        )
    })?;
    body.extend_from_slice(&code.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(value);
    body.resize(body.len().next_multiple_of(4), 0);
    Ok(())
}
