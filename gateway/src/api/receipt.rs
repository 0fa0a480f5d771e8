//! Receipt handles that a tenant cannot forge or reuse elsewhere.
//!
//! The broker's receipt (`queue.offset.nonce`) names a delivery but not who
//! may settle it. The gateway wraps it with an HMAC-SHA256 over the
//! physical group and topic (which contain the namespace and the cell), so
//! a handle is accepted only for the group, topic, cell and tenant it was
//! issued for: another tenant's handle, or a made-up one, fails the check
//! before the broker sees it. For broadcast consumption the consumer id
//! rides inside the handle, so ack needs nothing else.
//!
//! Handle: `v1.<base64url(receipt '\n' consumer_id '\n' message_id ['\n' traceparent])>.<base64url(mac[..16])>`
//! (the message id names the message in its trace; handles issued before
//! it existed have none; the `traceparent`, the message's creation
//! context, is there only while OpenTelemetry tracing is on, for the
//! settle span's links).
//!
//! The key lives in `<data>/gateway.secret` (32 random bytes, mode 0600),
//! created on first start, so handles stay valid across a restart (the
//! broker's in-flight state is durable too). Gateways that share a data
//! directory share handles.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

const FILE: &str = "gateway.secret";
const MAC_BYTES: usize = 16;

/// The HMAC key.
pub struct ReceiptKey([u8; 32]);

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

/// What a valid handle carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub receipt: String,
    pub consumer_id: Option<String>,
    pub message_id: Option<uuid::Uuid>,
    pub traceparent: Option<String>,
}

// === impl ReceiptKey ===

impl ReceiptKey {
    pub fn load_or_create(dir: &Path) -> Result<ReceiptKey, Error> {
        let path = dir.join(FILE);
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        match OpenOptions::new().read(true).open(&path) {
            Ok(mut f) => {
                let mut key = [0u8; 32];
                let mut extra = [0u8; 1];
                f.read_exact(&mut key).map_err(io)?;
                if f.read(&mut extra).map_err(io)? != 0 {
                    return Err(Error::Io(format!(
                        "{}: must be exactly 32 bytes",
                        path.display()
                    )));
                }
                Ok(ReceiptKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| Error::Io(format!("random key: {e}")))?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(ReceiptKey(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The MAC over (group, topic, payload), ready to finalize or verify.
    fn mac(&self, group: &str, topic: &str, payload: &[u8]) -> Option<Hmac<Sha256>> {
        // Fails only for key lengths HMAC cannot take; any length works
        // for HMAC-SHA256.
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        m.update(group.as_bytes());
        m.update(&[0]);
        m.update(topic.as_bytes());
        m.update(&[0]);
        m.update(payload);
        Some(m)
    }

    /// Wraps a broker receipt for `group` on `topic` (physical names).
    pub fn seal(
        &self,
        group: &str,
        topic: &str,
        receipt: &str,
        consumer_id: Option<&str>,
        message_id: &uuid::Uuid,
        traceparent: Option<&str>,
    ) -> String {
        let mut payload = format!("{receipt}\n{}\n{message_id}", consumer_id.unwrap_or(""));
        if let Some(tp) = traceparent.filter(|t| !t.contains('\n')) {
            payload.push('\n');
            payload.push_str(tp);
        }
        let mac = self
            .mac(group, topic, payload.as_bytes())
            .map(|m| m.finalize().into_bytes())
            .unwrap_or_default();
        format!(
            "v1.{}.{}",
            B64.encode(&payload),
            B64.encode(&mac[..MAC_BYTES])
        )
    }

    /// Checks a handle against `group` and `topic`; `None` if it is garbage
    /// or was issued for something else (the two are not told apart, so a
    /// handle reveals nothing about where it came from).
    pub fn open(&self, group: &str, topic: &str, handle: &str) -> Option<Opened> {
        let rest = handle.strip_prefix("v1.")?;
        let (payload, mac) = rest.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let mac = B64.decode(mac).ok()?;
        if mac.len() != MAC_BYTES {
            return None;
        }
        // Constant-time comparison, through the Mac trait.
        self.mac(group, topic, &payload)?
            .verify_truncated_left(&mac)
            .ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(4, '\n');
        let (receipt, consumer) = (parts.next()?, parts.next()?);
        Some(Opened {
            receipt: receipt.to_owned(),
            consumer_id: (!consumer.is_empty()).then(|| consumer.to_owned()),
            message_id: parts.next().and_then(|i| uuid::Uuid::try_parse(i).ok()),
            traceparent: parts.next().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_opens_only_for_its_group_and_topic() {
        let dir = tempfile::tempdir().unwrap();
        let k = ReceiptKey::load_or_create(dir.path()).unwrap();
        let id = uuid::Uuid::from_u128(7);
        let h = k.seal("ANT|RZ00A%G1", "ANT|RZ00A%T1", "0.5.00ff", None, &id, None);
        let o = k.open("ANT|RZ00A%G1", "ANT|RZ00A%T1", &h).unwrap();
        assert_eq!(o.receipt, "0.5.00ff");
        assert_eq!(o.consumer_id, None);
        assert_eq!(o.message_id, Some(id));
        assert_eq!(o.traceparent, None);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let t = k.seal("g", "t", "1.2.3", None, &id, Some(tp));
        assert_eq!(
            k.open("g", "t", &t).unwrap().traceparent.as_deref(),
            Some(tp)
        );
        assert!(k.open("BETA|RZ00A%G1", "BETA|RZ00A%T1", &h).is_none());
        assert!(k.open("ANT|RZ01A%G1", "ANT|RZ00A%T1", &h).is_none());
        assert!(k
            .open("ANT|RZ00A%G1", "ANT|RZ00A%T1", "v1.garbage")
            .is_none());
        assert!(k.open("ANT|RZ00A%G1", "ANT|RZ00A%T1", "").is_none());
        let mut forged = h.clone();
        forged.pop();
        assert!(k.open("ANT|RZ00A%G1", "ANT|RZ00A%T1", &forged).is_none());
        let b = k.seal("g", "t", "1.2.3", Some("c-1"), &id, None);
        assert_eq!(
            k.open("g", "t", &b).unwrap().consumer_id.as_deref(),
            Some("c-1")
        );
        // The key persists: a restarted gateway opens old handles.
        let k2 = ReceiptKey::load_or_create(dir.path()).unwrap();
        assert!(k2.open("ANT|RZ00A%G1", "ANT|RZ00A%T1", &h).is_some());
    }
}
