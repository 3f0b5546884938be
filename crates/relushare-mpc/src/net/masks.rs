//! The weight-mask state of a model owner–helper pair when serving (the masks themselves are
//! [`crate::fast::masks`]).
//!
//! * The **owner** keeps one [`OwnerMasks`]: fresh [`MaskKeys`], a random id, the helper
//!   *instance* it was made for, and per context (suite, fractional bits) the masked weights
//!   `F`, computed on first use and then reused by every session.
//! * The **helper** keeps a [`HelperMasks`]: a random instance id drawn at start, and the keys
//!   owners registered with it, by state id (the newest few).
//! * The owner sends its state id with its request to the helper; the helper's verdict names
//!   its instance and whether it holds that state. A helper instance other than the state's
//!   (the helper restarted) makes the owner draw a new state; an owner restart starts with a
//!   new state too. The keys travel (once, inside the session, owner to helper only) while the
//!   helper does not hold them.
//! * A **client** may keep the masked weights it received in a [`WeightCache`] (a file per
//!   deployment, client, suite and fractional bits). Its request names the state id and the
//!   SHA-256 digest of the `F` it holds; when both are the owner's current ones the owner sends
//!   only the state id, the seed of the client's masks and the digest, and the client takes `F`
//!   from its file. A cache file that is unreadable, truncated, of another format or whose `F`
//!   does not match its digest is ignored (and replaced after the session).

use crate::error::{MpcError, Result};
use crate::fast::masks::MaskKeys;
use crate::prg::{self, Seed};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of a state id.
pub const MASK_ID_BYTES: usize = 16;
/// States a helper keeps (an owner uses one at a time; older ones belong to restarted owners).
const MAX_HELPER_STATES: usize = 8;

/// Hex of bytes.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `s` is a state id (32 lower-case hex digits).
pub fn is_mask_id(s: &str) -> bool {
    s.len() == 2 * MASK_ID_BYTES && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The state id of its bytes.
pub(crate) fn id_of(b: &[u8]) -> String {
    hex(b)
}

/// Bytes of a state id (`id` checked with [`is_mask_id`]).
pub(crate) fn id_bytes(id: &str) -> Result<[u8; MASK_ID_BYTES]> {
    if !is_mask_id(id) {
        return Err(MpcError::Param(format!("bad weight-mask state id {id:?}")));
    }
    let mut out = [0u8; MASK_ID_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&id[2 * i..2 * i + 2], 16)
            .map_err(|_| MpcError::Param(format!("bad weight-mask state id {id:?}")))?;
    }
    Ok(out)
}

/// Called when the owner computes the masked weights of a context (for its log).
pub type ComputeNote = Arc<dyn Fn(&str) + Send + Sync>;

/// SHA-256 digest of masked weights ([`digest_of`]).
pub type Digest = [u8; 32];

/// The SHA-256 digest of `F` (its elements as little-endian bytes, as they are sent).
pub fn digest_of(f: &[u64]) -> Digest {
    let mut h = Sha256::new();
    for chunk in f.chunks(8192) {
        h.update(crate::ring::u64s_to_bytes(chunk));
    }
    h.finalize().into()
}

/// [`digest_of`] of `F` given as those bytes (as received or read from a file).
pub fn digest_of_bytes(b: &[u8]) -> Digest {
    Sha256::digest(b).into()
}

/// Masked weights `F` of a context, with their digest.
#[derive(Clone, Debug)]
pub struct Opening {
    pub f: Arc<Vec<u64>>,
    pub digest: Digest,
}

/// Masked weights by context (suite, fractional bits).
type Openings = HashMap<(String, u32), Opening>;

/// The model owner's weight-mask state for one helper instance.
pub struct OwnerMasks {
    id: String,
    keys: MaskKeys,
    helper: String,
    openings: Mutex<Openings>,
    computed: AtomicUsize,
    note: Option<ComputeNote>,
}

impl std::fmt::Debug for OwnerMasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnerMasks({}, helper {})", self.id, self.helper)
    }
}

impl OwnerMasks {
    /// A new state (fresh keys and id) for helper instance `helper`.
    pub fn new(helper: &str, note: Option<ComputeNote>) -> Result<OwnerMasks> {
        Ok(OwnerMasks {
            id: hex(&prg::os_seed()?),
            keys: MaskKeys::fresh()?,
            helper: helper.to_string(),
            openings: Mutex::new(HashMap::new()),
            computed: AtomicUsize::new(0),
            note,
        })
    }

    /// The state id (public: it only names the state).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The helper instance the state was made for.
    pub fn helper_instance(&self) -> &str {
        &self.helper
    }

    pub(crate) fn keys(&self) -> &MaskKeys {
        &self.keys
    }

    /// How many times `F` was computed (once per context used).
    pub fn openings_computed(&self) -> usize {
        self.computed.load(Ordering::SeqCst)
    }

    /// `F` of (`protocol`, `frac_bits`) and its digest: computed by `compute` from the
    /// context's seeds on first use (concurrent sessions wait for it), then the same vector for
    /// every session.
    pub(crate) fn opening(
        &self,
        protocol: &str,
        frac_bits: u32,
        compute: impl FnOnce((Seed, Seed)) -> Result<Vec<u64>>,
    ) -> Result<Opening> {
        let mut m = self.openings.lock().unwrap_or_else(|p| p.into_inner());
        let key = (protocol.to_string(), frac_bits);
        if let Some(o) = m.get(&key) {
            return Ok(o.clone());
        }
        let f = compute(self.keys.seeds(protocol, frac_bits)?)?;
        let o = Opening {
            digest: digest_of(&f),
            f: Arc::new(f),
        };
        let f = o.f.clone();
        m.insert(key, o.clone());
        self.computed.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = &self.note {
            n(&format!(
                "weight-mask state {}: masked weights for {protocol} with {frac_bits} fractional bits computed ({} elements); every session of this owner-helper pair reuses them",
                self.id,
                f.len()
            ));
        }
        Ok(o)
    }
}

/// The helper's weight-mask keys, by state id.
pub struct HelperMasks {
    instance: String,
    states: Mutex<VecDeque<(String, MaskKeys)>>,
}

impl std::fmt::Debug for HelperMasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HelperMasks(instance {})", self.instance)
    }
}

impl HelperMasks {
    /// An empty store with a fresh instance id.
    pub fn new() -> Result<HelperMasks> {
        Ok(HelperMasks {
            instance: hex(&prg::os_seed()?),
            states: Mutex::new(VecDeque::new()),
        })
    }

    /// This helper process's instance id (public).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether state `id` is held.
    pub fn knows(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Number of states held.
    pub fn len(&self) -> usize {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no state is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, id: &str) -> Option<MaskKeys> {
        let st = self.states.lock().unwrap_or_else(|p| p.into_inner());
        st.iter().find(|(i, _)| i == id).map(|(_, k)| k.clone())
    }

    /// Holds `keys` as state `id` (the newest [`MAX_HELPER_STATES`] are kept). Registering
    /// the same state again is a no-op; other keys under a held id are refused.
    pub(crate) fn register(&self, id: &str, keys: MaskKeys) -> Result<()> {
        let mut st = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, k)) = st.iter().find(|(i, _)| i == id) {
            return if *k == keys {
                Ok(())
            } else {
                Err(MpcError::Malformed {
                    from: 1,
                    reason: format!("other keys for the held weight-mask state {id}"),
                })
            };
        }
        if st.len() >= MAX_HELPER_STATES {
            st.pop_front();
        }
        st.push_back((id.to_string(), keys));
        Ok(())
    }
}

/// A party's part in a session that reuses its owner–helper pair's weight masks
/// ([`super::session::run_with`]); the `fast`, `fss` and `mimo` suites.
#[derive(Clone, Debug)]
pub enum MaskReuse {
    /// The client (P0): receives `F` and the seed of its `B_0` from the owner; with a cache,
    /// takes `F` from it when the owner says it is current, and stores a new `F` in it.
    Client { cache: Option<Arc<WeightCache>> },
    /// The model owner (P1): its state; `register`: send the keys to the helper, which does not
    /// hold them yet; `client_holds`: the client's [`WeightCache::claim`] (empty: none).
    Owner {
        state: Arc<OwnerMasks>,
        register: bool,
        client_holds: String,
    },
    /// The helper (P2): the keys registered with it.
    Helper(Arc<HelperMasks>),
}

/// Whether `s` is a well-formed [`WeightCache::claim`]: empty, or a state id, `:` and 64 hex
/// digits of a digest.
pub fn is_claim(s: &str) -> bool {
    s.is_empty()
        || s.split_once(':').is_some_and(|(id, d)| {
            is_mask_id(id)
                && d.len() == 64
                && d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The claim naming state `id` and digest `d`.
pub(crate) fn claim_of(id: &str, d: &Digest) -> String {
    format!("{id}:{}", hex(d))
}

/// First bytes of a cache file (format version 1).
const CACHE_MAGIC: &[u8; 8] = b"RSMWC\x00\x00\x01";
/// Bytes of a cache file before `F`: magic, state id, digest, element count.
const CACHE_HEAD: usize = 8 + MASK_ID_BYTES + 32 + 8;
/// Largest cache file read (a model's masked weights are far smaller).
const MAX_CACHE_FILE: u64 = 4 << 30;

/// Masked weights held by a client: the owner's state id, their digest and `F`.
#[derive(Clone)]
pub struct Held {
    pub id: String,
    pub digest: Digest,
    pub f: Arc<Vec<u64>>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Held(state {}, {} elements, digest {})",
            self.id,
            self.f.len(),
            hex(&self.digest)
        )
    }
}

/// A client's cache of one deployment's masked weights for one context (suite, fractional
/// bits): a file written after a session that received `F`, read before the next. `F` is the
/// client's own view of earlier sessions (the owner sends it to every client), so storing it
/// reveals nothing more than the client already saw.
pub struct WeightCache {
    path: PathBuf,
    held: Option<Held>,
    /// Why an existing file was not used.
    ignored: Option<String>,
}

impl std::fmt::Debug for WeightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WeightCache({}, {})",
            self.path.display(),
            self.held
                .as_ref()
                .map_or("empty".to_string(), |h| format!("state {}", h.id))
        )
    }
}

/// A file-name-safe form of `s` (letters, digits, `-`, `_`, `.`; anything else `_`).
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl WeightCache {
    /// The cache file in `dir` of deployment `deployment`, client `client`, suite `protocol`
    /// and `frac_bits`.
    pub fn path_in(
        dir: &Path,
        deployment: &str,
        client: &str,
        protocol: &str,
        frac_bits: u32,
    ) -> PathBuf {
        dir.join(format!(
            "masked-weights-{}-{}-{}-f{frac_bits}.bin",
            file_safe(deployment),
            file_safe(client),
            file_safe(protocol)
        ))
    }

    /// Opens the cache at `path`. Never fails: a missing file is an empty cache, and a file
    /// that cannot be read or is not a valid cache is ignored ([`WeightCache::ignored`]) and
    /// replaced when the next `F` arrives.
    pub fn open(path: &Path) -> WeightCache {
        let (held, ignored) = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => (None, Some(format!("{}: {e}", path.display()))),
            Ok(m) if m.len() > MAX_CACHE_FILE => (
                None,
                Some(format!(
                    "{}: {} bytes, more than a cache file can hold",
                    path.display(),
                    m.len()
                )),
            ),
            Ok(_) => match std::fs::read(path) {
                Err(e) => (None, Some(format!("{}: {e}", path.display()))),
                Ok(b) => match Self::parse(&b) {
                    Ok(h) => (Some(h), None),
                    Err(why) => (None, Some(format!("{}: {why}", path.display()))),
                },
            },
        };
        WeightCache {
            path: path.to_path_buf(),
            held,
            ignored,
        }
    }

    /// The masked weights of a cache file's bytes, or why they are not valid.
    pub fn parse(b: &[u8]) -> std::result::Result<Held, String> {
        if b.len() < CACHE_HEAD || &b[..8] != CACHE_MAGIC {
            return Err("not a masked-weights cache file (format 1)".into());
        }
        let id = id_of(&b[8..8 + MASK_ID_BYTES]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[8 + MASK_ID_BYTES..8 + MASK_ID_BYTES + 32]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[CACHE_HEAD - 8..CACHE_HEAD]);
        let n = u64::from_le_bytes(n);
        let body = &b[CACHE_HEAD..];
        if n.checked_mul(8) != Some(body.len() as u64) {
            return Err(format!(
                "{} bytes of masked weights where the header says {n} elements",
                body.len()
            ));
        }
        if digest_of_bytes(body) != digest {
            return Err("the masked weights do not match their digest (corrupt file)".into());
        }
        let f: Vec<u64> = body
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Held {
            id,
            digest,
            f: Arc::new(f),
        })
    }

    /// The cache file's bytes for `held`.
    pub fn encode(held: &Held) -> Result<Vec<u8>> {
        let mut b = Vec::with_capacity(CACHE_HEAD + 8 * held.f.len());
        b.extend_from_slice(CACHE_MAGIC);
        b.extend_from_slice(&id_bytes(&held.id)?);
        b.extend_from_slice(&held.digest);
        b.extend_from_slice(&(held.f.len() as u64).to_le_bytes());
        b.extend_from_slice(&crate::ring::u64s_to_bytes(&held.f));
        Ok(b)
    }

    /// The masked weights held, if any.
    pub fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    /// Why an existing cache file was not used, if it was not.
    pub fn ignored(&self) -> Option<&str> {
        self.ignored.as_deref()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the client's request says it holds: `STATE:DIGEST`, or empty.
    pub fn claim(&self) -> String {
        self.held
            .as_ref()
            .map_or_else(String::new, |h| claim_of(&h.id, &h.digest))
    }

    /// Writes `held` to the file: to a temporary file beside it, then renamed over it, so a
    /// crash leaves the old file or the new one, never a torn one.
    pub fn store(&self, held: &Held) -> Result<()> {
        let io = |e: std::io::Error, what: &str| {
            MpcError::Param(format!(
                "masked-weights cache {}: {what}: {e}",
                self.path.display()
            ))
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(e, "creating its directory"))?;
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, Self::encode(held)?).map_err(|e| io(e, "writing"))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e, "renaming the new file into place")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_the_helper_store() {
        let o = OwnerMasks::new("inst", None).unwrap();
        assert!(is_mask_id(o.id()));
        assert_eq!(id_of(&id_bytes(o.id()).unwrap()), o.id());
        assert!(id_bytes("xyz").is_err());
        let h = HelperMasks::new().unwrap();
        assert!(is_mask_id(h.instance()));
        assert!(!h.knows(o.id()));
        h.register(o.id(), o.keys().clone()).unwrap();
        h.register(o.id(), o.keys().clone()).unwrap();
        assert!(h.knows(o.id()));
        assert!(h.register(o.id(), MaskKeys::fresh().unwrap()).is_err());
        for _ in 0..MAX_HELPER_STATES {
            let n = OwnerMasks::new("inst", None).unwrap();
            h.register(n.id(), n.keys().clone()).unwrap();
        }
        assert_eq!(h.len(), MAX_HELPER_STATES);
        assert!(!h.knows(o.id()), "the oldest state is dropped");
        // F is computed once per context.
        let mut calls = 0;
        for _ in 0..3 {
            let f = o
                .opening("fast", 13, |_| {
                    calls += 1;
                    Ok(vec![1, 2])
                })
                .unwrap();
            assert_eq!(*f.f, vec![1, 2]);
            assert_eq!(f.digest, digest_of(&[1, 2]));
        }
        o.opening("fss", 13, |_| Ok(vec![3])).unwrap();
        assert_eq!((calls, o.openings_computed()), (1, 2));
    }

    #[test]
    fn weight_cache_round_trip_and_damaged_files() {
        let dir = std::env::temp_dir().join(format!("relushare-wcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = WeightCache::path_in(&dir, "dep/1", "client-1", "mimo", 13);
        assert!(path.starts_with(&dir), "{}", path.display());
        let empty = WeightCache::open(&path);
        assert!(empty.held().is_none() && empty.ignored().is_none());
        assert_eq!(empty.claim(), "");
        assert!(is_claim(""));

        let f: Vec<u64> = (0..1000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        assert_eq!(
            digest_of_bytes(&crate::ring::u64s_to_bytes(&f)),
            digest_of(&f)
        );
        let held = Held {
            id: "0123456789abcdef0123456789abcdef".into(),
            digest: digest_of(&f),
            f: Arc::new(f.clone()),
        };
        empty.store(&held).unwrap();
        let c = WeightCache::open(&path);
        let h = c.held().expect("stored");
        assert_eq!(
            (h.id.as_str(), h.digest, h.f.as_slice()),
            (held.id.as_str(), held.digest, &f[..])
        );
        assert!(is_claim(&c.claim()), "{}", c.claim());
        assert_eq!(c.claim(), claim_of(&held.id, &held.digest));
        // no temporary file is left behind
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // Every damaged file is ignored with a reason, never used.
        let good = std::fs::read(&path).unwrap();
        let mut damaged: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "elements"),
            (good[..10].to_vec(), "not a masked-weights cache"),
            (Vec::new(), "not a masked-weights cache"),
        ];
        let mut flip = good.clone();
        flip[CACHE_HEAD + 100] ^= 4;
        damaged.push((flip, "digest"));
        let mut magic = good.clone();
        magic[7] = 2;
        damaged.push((magic, "format 1"));
        let mut count = good.clone();
        count[CACHE_HEAD - 8] ^= 1;
        damaged.push((count, "elements"));
        for (b, why) in damaged {
            std::fs::write(&path, &b).unwrap();
            let c = WeightCache::open(&path);
            assert!(c.held().is_none(), "{why}");
            let r = c.ignored().expect("a reason");
            assert!(r.contains(why), "{r} lacks {why}");
            assert_eq!(c.claim(), "");
        }
        // A cache that cannot be written (its directory is a file) says why and changes nothing.
        let file = dir.join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let blocked = WeightCache::open(&file.join("f.bin"));
        assert!(blocked.held().is_none());
        let e = blocked.store(&held).unwrap_err().to_string();
        assert!(e.contains("creating its directory"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
        for bad in [
            "x",
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef:00",
        ] {
            assert!(!is_claim(bad), "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Arbitrary bytes, and valid files with arbitrary damage, never make the cache parser or
    /// the client's check of the owner's message panic, and nothing that does not match its
    /// digest is accepted.
    #[test]
    fn cache_and_message_parsers_take_any_bytes() {
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(256), |(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            n in 0usize..40,
            at in any::<usize>(),
            bit in 0u8..8,
        )| {
            if let Ok(h) = WeightCache::parse(&bytes) {
                prop_assert_eq!(digest_of(&h.f), h.digest);
            }
            let f: Vec<u64> = (0..n as u64).map(|i| i * 31 + 7).collect();
            let held = Held {
                id: "00112233445566778899aabbccddeeff".into(),
                digest: digest_of(&f),
                f: Arc::new(f),
            };
            let mut good = WeightCache::encode(&held).unwrap();
            prop_assert!(WeightCache::parse(&good).is_ok());
            let i = at % good.len();
            good[i] ^= 1 << bit;
            // one flipped bit: refused, except in the state id (which names, not checks)
            let r = WeightCache::parse(&good);
            prop_assert_eq!(r.is_ok(), (8..8 + MASK_ID_BYTES).contains(&i));
            let _ = crate::net::session::client_fixed(&bytes, n, Some(&held));
            let _ = crate::net::session::client_fixed(&bytes, n, None);
        });
    }
}
