//! Encryption of spool frames at rest: AES-256-GCM (ring), so no record can be read from a
//! stolen disk or a copied spool directory.
//!
//! An encrypted frame keeps the plain frame's header (length, CRC-32C, sequence number,
//! arrival time), so torn writes are still found by the checksum without any key; its
//! payload is `key id (u32) | run (u32) | ciphertext | tag (16)`. Each spool encrypts under
//! its own key, derived from the configured key and the spool's random id (HKDF-SHA256), so
//! two streams never share a (key, nonce) pair. The nonce is `run (u32) | sequence number
//! (u64)`: the run is a counter made durable before the spool writes anything, one higher at
//! every start, so a sequence number written again after a crash (a torn frame's) never
//! meets its old nonce. The header fields and the key id and run are authenticated with the
//! record. The key id (the first four bytes of the key's SHA-256) says which configured key
//! a frame needs, so `previous_keys` keep older segments readable after a key change.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use sha2::{Digest as _, Sha256};

/// Bytes an encrypted frame's payload has on top of the record: key id, run and tag.
pub const OVERHEAD: usize = 4 + 4 + 16;

/// The configured keys: the one new frames are written with, and older ones still read.
#[derive(Clone)]
pub struct SpoolKeys {
    /// Encrypts new frames (and decrypts them).
    pub current: [u8; 32],
    /// Only decrypt frames written before a key change.
    pub previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for SpoolKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpoolKeys {{ current: {:08x}, previous: {:?} }}",
            key_id(&self.current),
            self.previous.iter().map(key_id).collect::<Vec<_>>()
        )
    }
}

/// The id frames carry for `key`: not secret, it only names which key to use.
pub fn key_id(key: &[u8; 32]) -> u32 {
    let digest = Sha256::digest(key);
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes"))
}

/// Why a frame could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The frame was written with a key that is not configured.
    #[error(
        "it was encrypted with key {0:08x}, which is neither spool.encryption.key nor one of its previous_keys"
    )]
    UnknownKey(u32),
    /// The frame does not authenticate under its key: a wrong key with a colliding id, or a
    /// changed byte.
    #[error("it does not decrypt under key {0:08x} (the key is wrong or the file was changed)")]
    Rejected(u32),
    /// The payload is too short to hold a key id, a run and a tag.
    #[error("its encrypted payload is {0} bytes, shorter than any encrypted record")]
    TooShort(usize),
    /// The spool is encrypted and no key is configured.
    #[error("it is encrypted, and `spool.encryption` is not configured")]
    NoKeys,
}

/// One spool's frame keys.
pub struct SpoolCipher {
    current: (u32, LessSafeKey),
    previous: Vec<(u32, LessSafeKey)>,
    run: u32,
}

impl std::fmt::Debug for SpoolCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SpoolCipher {{ key: {:08x}, run: {} }}",
            self.current.0, self.run
        )
    }
}

/// The frame key of the spool whose id is `incarnation`, derived from `key`.
fn frame_key(key: &[u8; 32], incarnation: u64) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            32
        }
    }
    let mut derived = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &incarnation.to_be_bytes())
        .extract(key)
        .expand(&[b"hydrant spool frame key v1"], Len)
        .and_then(|okm| okm.fill(&mut derived))
        .expect("32 bytes are a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &derived).expect("a 32-byte AES-256 key"))
}

fn nonce(run: u32, seq: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[..4].copy_from_slice(&run.to_be_bytes());
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aad(seq: u64, arrival_ms: i64, key_id: u32, run: u32) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..8].copy_from_slice(&seq.to_le_bytes());
    aad[8..16].copy_from_slice(&arrival_ms.to_le_bytes());
    aad[16..20].copy_from_slice(&key_id.to_le_bytes());
    aad[20..].copy_from_slice(&run.to_le_bytes());
    aad
}

impl SpoolCipher {
    /// The cipher of the spool `incarnation` for this start, whose durable run counter is
    /// `run`.
    pub fn new(keys: &SpoolKeys, incarnation: u64, run: u32) -> Self {
        Self {
            current: (key_id(&keys.current), frame_key(&keys.current, incarnation)),
            previous: keys
                .previous
                .iter()
                .map(|key| (key_id(key), frame_key(key, incarnation)))
                .collect(),
            run,
        }
    }

    /// Appends the encrypted payload of record `seq` to `out`.
    pub fn seal(&self, seq: u64, arrival_ms: i64, record: &[u8], out: &mut Vec<u8>) {
        let (id, key) = &self.current;
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&self.run.to_le_bytes());
        let start = out.len();
        out.extend_from_slice(record);
        let tag = key
            .seal_in_place_separate_tag(
                nonce(self.run, seq),
                Aad::from(aad(seq, arrival_ms, *id, self.run)),
                &mut out[start..],
            )
            .expect("a record is far below AES-GCM's length limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Decrypts, in place, the encrypted payload of record `seq`; returns where the record
    /// is within `payload`.
    pub fn open(
        &self,
        seq: u64,
        arrival_ms: i64,
        payload: &mut [u8],
    ) -> Result<std::ops::Range<usize>, DecryptError> {
        if payload.len() < OVERHEAD {
            return Err(DecryptError::TooShort(payload.len()));
        }
        let id = u32::from_le_bytes(payload[..4].try_into().expect("checked length"));
        let run = u32::from_le_bytes(payload[4..8].try_into().expect("checked length"));
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(key_id, _)| *key_id == id)
            .map(|(_, key)| key)
            .ok_or(DecryptError::UnknownKey(id))?;
        let plain = key
            .open_in_place(
                nonce(run, seq),
                Aad::from(aad(seq, arrival_ms, id, run)),
                &mut payload[8..],
            )
            .map_err(|_| DecryptError::Rejected(id))?;
        Ok(8..8 + plain.len())
    }
}

/// Reads the spool's run counter, adds one and makes it durable: the run of this start.
pub fn next_run(dir: &Path) -> std::io::Result<u32> {
    let path = dir.join("spool.run");
    let run = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is damaged: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let next = run.checked_add(1).ok_or_else(|| {
        std::io::Error::other(format!(
            "{} has counted 2^32 starts; re-key the spool",
            path.display()
        ))
    })?;
    let tmp = dir.join("spool.run.tmp");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{next}")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    super::segments::sync_dir(dir)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: u8, previous: &[u8]) -> SpoolKeys {
        SpoolKeys {
            current: [current; 32],
            previous: previous.iter().map(|&b| [b; 32]).collect(),
        }
    }

    #[test]
    fn frames_round_trip_and_are_bound_to_their_place() {
        let cipher = SpoolCipher::new(&keys(1, &[]), 77, 3);
        let mut sealed = Vec::new();
        cipher.seal(9, 1_700, b"secret record", &mut sealed);
        assert_eq!(sealed.len(), b"secret record".len() + OVERHEAD);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let mut copy = sealed.clone();
        let range = cipher.open(9, 1_700, &mut copy).unwrap();
        assert_eq!(&copy[range], b"secret record");
        // Another sequence number, arrival time, spool or a flipped bit: refused.
        for (seq, arrival) in [(10, 1_700), (9, 1_701)] {
            let mut copy = sealed.clone();
            assert!(matches!(
                cipher.open(seq, arrival, &mut copy),
                Err(DecryptError::Rejected(_))
            ));
        }
        let other_spool = SpoolCipher::new(&keys(1, &[]), 78, 3);
        assert!(other_spool.open(9, 1_700, &mut sealed.clone()).is_err());
        let mut flipped = sealed.clone();
        flipped[12] ^= 1;
        assert!(cipher.open(9, 1_700, &mut flipped).is_err());
    }

    #[test]
    fn a_payload_too_short_to_be_encrypted_is_refused_not_a_panic() {
        let cipher = SpoolCipher::new(&keys(1, &[]), 5, 1);
        for len in 0..OVERHEAD {
            assert_eq!(
                cipher.open(0, 0, &mut vec![0u8; len]),
                Err(DecryptError::TooShort(len))
            );
        }
    }

    #[test]
    fn previous_keys_read_old_frames_and_unknown_keys_are_named() {
        let old = SpoolCipher::new(&keys(1, &[]), 5, 1);
        let mut sealed = Vec::new();
        old.seal(0, 0, b"written before the key change", &mut sealed);
        let rotated = SpoolCipher::new(&keys(2, &[1]), 5, 2);
        let range = rotated.open(0, 0, &mut sealed.clone()).unwrap();
        assert_eq!(range.len(), b"written before the key change".len());
        let without = SpoolCipher::new(&keys(2, &[]), 5, 2);
        assert_eq!(
            without.open(0, 0, &mut sealed.clone()),
            Err(DecryptError::UnknownKey(key_id(&[1; 32])))
        );
    }

    #[test]
    fn the_run_counter_grows_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_run(dir.path()).unwrap(), 1);
        assert_eq!(next_run(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join("spool.run"), "junk").unwrap();
        assert!(next_run(dir.path()).is_err());
    }
}
