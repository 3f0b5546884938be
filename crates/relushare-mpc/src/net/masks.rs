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

use crate::error::{MpcError, Result};
use crate::fast::masks::MaskKeys;
use crate::prg::{self, Seed};
use std::collections::{HashMap, VecDeque};
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

/// Masked weights `F` by context (suite, fractional bits).
type Openings = HashMap<(String, u32), Arc<Vec<u64>>>;

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

    /// `F` of (`protocol`, `frac_bits`): computed by `compute` from the context's seeds on
    /// first use (concurrent sessions wait for it), then the same vector for every session.
    pub(crate) fn opening(
        &self,
        protocol: &str,
        frac_bits: u32,
        compute: impl FnOnce((Seed, Seed)) -> Result<Vec<u64>>,
    ) -> Result<Arc<Vec<u64>>> {
        let mut m = self.openings.lock().unwrap_or_else(|p| p.into_inner());
        let key = (protocol.to_string(), frac_bits);
        if let Some(f) = m.get(&key) {
            return Ok(f.clone());
        }
        let f = Arc::new(compute(self.keys.seeds(protocol, frac_bits)?)?);
        m.insert(key, f.clone());
        self.computed.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = &self.note {
            n(&format!(
                "weight-mask state {}: masked weights for {protocol} with {frac_bits} fractional bits computed ({} elements); every session of this owner-helper pair reuses them",
                self.id,
                f.len()
            ));
        }
        Ok(f)
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
    /// The client (P0): receives `F` and the seed of its `B_0` from the owner.
    Client,
    /// The model owner (P1): its state; `register`: send the keys to the helper, which does not
    /// hold them yet.
    Owner {
        state: Arc<OwnerMasks>,
        register: bool,
    },
    /// The helper (P2): the keys registered with it.
    Helper(Arc<HelperMasks>),
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
            assert_eq!(*f, vec![1, 2]);
        }
        o.opening("fss", 13, |_| Ok(vec![3])).unwrap();
        assert_eq!((calls, o.openings_computed()), (1, 2));
    }
}
