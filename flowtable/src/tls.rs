//! TLS from the first bytes of a segment: ClientHello (with a hash of the SNI), ServerHello
//! and alerts. No reassembly: one record header at the start of a segment is all we read.

/// What a segment's first TLS record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsEvent {
    /// ClientHello; FNV-1a hash of the server name (0 when there is none).
    ClientHello { sni_hash: u32 },
    /// ServerHello; the legacy version field.
    ServerHello { version: u16 },
    /// A plaintext alert with its level (1 warning, 2 fatal) and description.
    Alert { level: u8, description: u8 },
    /// An encrypted alert (its level is not visible).
    EncryptedAlert,
}

/// Content type of a TLS alert record.
pub const ALERT: u8 = 0x15;
const HANDSHAKE: u8 = 0x16;

/// Looks at the first TLS record of a segment's payload.
pub fn inspect(payload: &[u8]) -> Option<TlsEvent> {
    let (&content_type, rest) = payload.split_first()?;
    if rest.first() != Some(&3) {
        return None;
    }
    let record_len = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
    match content_type {
        ALERT if record_len == 2 => Some(TlsEvent::Alert {
            level: *payload.get(5)?,
            description: *payload.get(6)?,
        }),
        ALERT => Some(TlsEvent::EncryptedAlert),
        HANDSHAKE => match payload.get(5)? {
            1 => Some(TlsEvent::ClientHello {
                sni_hash: sni(payload).map_or(0, fnv1a),
            }),
            2 => Some(TlsEvent::ServerHello {
                version: u16::from_be_bytes([*payload.get(9)?, *payload.get(10)?]),
            }),
            _ => None,
        },
        _ => None,
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// The server name of a ClientHello that starts at `payload[0]` (record header included).
fn sni(payload: &[u8]) -> Option<&[u8]> {
    // record header 5, handshake header 4, version 2, random 32
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + usize::from(*payload.get(at)?); // session id
    at += 2 + be16(payload, at)?; // cipher suites
    at += 1 + usize::from(*payload.get(at)?); // compression methods
    let ext_end = (at + 2 + be16(payload, at)?).min(payload.len());
    at += 2;
    while at + 4 <= ext_end {
        let ext_type = be16(payload, at)?;
        let ext_len = be16(payload, at + 2)?;
        at += 4;
        if ext_type == 0 {
            // server_name_list length 2, name type 1, name length 2
            let name_len = be16(payload, at + 3)?;
            return payload.get(at + 5..at + 5 + name_len);
        }
        at += ext_len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(name: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        ext.extend_from_slice(&[0, 0]);
        let list_len = name.len() + 3;
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn client_hello_with_sni() {
        let ch = client_hello(b"example.com");
        assert_eq!(
            inspect(&ch),
            Some(TlsEvent::ClientHello {
                sni_hash: fnv1a(b"example.com")
            })
        );
        // Any truncation is handled without panicking.
        for n in 0..ch.len() {
            let _ = inspect(&ch[..n]);
        }
    }

    #[test]
    fn alerts_and_server_hello() {
        assert_eq!(
            inspect(&[0x15, 3, 3, 0, 2, 2, 40]),
            Some(TlsEvent::Alert {
                level: 2,
                description: 40
            })
        );
        assert_eq!(
            inspect(&[0x15, 3, 3, 0, 26, 1, 2, 3]),
            Some(TlsEvent::EncryptedAlert)
        );
        assert_eq!(
            inspect(&[0x16, 3, 3, 0, 80, 2, 0, 0, 76, 3, 3]),
            Some(TlsEvent::ServerHello { version: 0x0303 })
        );
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), None);
    }
}
