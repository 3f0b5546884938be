//! Cost accounting: [`Comm`] wraps a [`Transport`] and counts, for its party, the bytes sent, the
//! messages and the rounds, per layer label and per phase (offline / online).
//!
//! # What a round is
//! Protocol code performs all communication through [`Comm::round`]: one *communication step*
//! of the protocol schedule. In a step a party sends a set of messages concurrently and then
//! waits for a set of messages (possibly from the same step of its peers) before it can take its
//! next step. Each call that sends or receives at least one message counts as **one round** for
//! that party. The parties of a protocol call `round` in lockstep (a party that neither sends
//! nor receives in a step does not call it), so the round count of an operation is the length of
//! its schedule; a report takes the maximum over the parties (see [`CostReport`]). Messages
//! that could overlap with a later step (e.g. a dealer's input-independent message) are still
//! counted in the step where the protocol sends them: this is the convention of the SecureNN
//! paper's Table 1 (Mul = 2 rounds: the helper's triple, then the opening).
//!
//! Bytes are counted at the sender (payload bytes only; a transport's framing is not counted).
//! Messages to the client (output shares) are outside the three-party transport and counted
//! separately as `client_bytes`.

use crate::error::{MpcError, Result};
use crate::transport::Transport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Input-independent preprocessing vs. input-dependent evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Input-independent (dealer material, weight masks).
    Offline,
    /// Depends on the input.
    Online,
}

/// Counters of one party for one (label, phase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Payload bytes sent.
    pub bytes: u64,
    /// Messages sent.
    pub messages: u64,
    /// Rounds (communication steps) this party took part in.
    pub rounds: u64,
}

impl Counter {
    fn add(&mut self, o: &Counter) {
        self.bytes += o.bytes;
        self.messages += o.messages;
        self.rounds += o.rounds;
    }
}

/// One party's counters, keyed by (label, phase).
pub type PartyCosts = BTreeMap<(String, Phase), Counter>;

/// A metered connection of one party to the other two.
pub struct Comm {
    t: Box<dyn Transport>,
    label: String,
    phase: Phase,
    costs: PartyCosts,
    client_bytes: u64,
}

impl Comm {
    /// Wrap a transport. Initial label "setup", phase online.
    pub fn new(t: Box<dyn Transport>) -> Comm {
        Comm {
            t,
            label: "setup".to_string(),
            phase: Phase::Online,
            costs: BTreeMap::new(),
            client_bytes: 0,
        }
    }

    /// This party's index.
    pub fn party(&self) -> usize {
        self.t.party()
    }

    /// Moves this connection onto another transport of the same party (e.g. from a session's
    /// whole mesh to one lane of it, [`crate::pipeline`]); counters, label and phase are kept.
    /// Returns the previous transport.
    pub fn replace_transport(&mut self, t: Box<dyn Transport>) -> Result<Box<dyn Transport>> {
        if t.party() != self.t.party() {
            return Err(MpcError::Param(format!(
                "party {}'s connection moved onto party {}'s transport",
                self.t.party(),
                t.party()
            )));
        }
        Ok(std::mem::replace(&mut self.t, t))
    }

    /// Attribute subsequent traffic to `label` (normally the layer name).
    pub fn set_label(&mut self, label: &str) {
        if self.label != label {
            self.label = label.to_string();
        }
    }

    /// The current label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Attribute subsequent traffic to `phase`.
    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn counter(&mut self) -> &mut Counter {
        let key = (self.label.clone(), self.phase);
        self.costs.entry(key).or_default()
    }

    /// One communication step: send every `(to, payload)` in `out`, then receive one message
    /// from each party in `from` (returned in that order). Counts one round if anything is sent
    /// or received.
    pub fn round(&mut self, out: Vec<(usize, Vec<u8>)>, from: &[usize]) -> Result<Vec<Vec<u8>>> {
        let me = self.party();
        let mut bytes = 0u64;
        let n = out.len() as u64;
        for (to, msg) in out {
            if to == me || to > 2 {
                return Err(MpcError::BadParty(to));
            }
            bytes += msg.len() as u64;
            self.t.send_owned(to, msg)?;
        }
        let mut got = Vec::with_capacity(from.len());
        for &f in from {
            if f == me || f > 2 {
                return Err(MpcError::BadParty(f));
            }
            got.push(self.t.recv(f)?);
        }
        if n > 0 || !from.is_empty() {
            let c = self.counter();
            c.bytes += bytes;
            c.messages += n;
            c.rounds += 1;
        }
        Ok(got)
    }

    /// [`Comm::round`] with ring-element payloads; `from` lists (party, expected length).
    pub fn round_u64(
        &mut self,
        out: &[(usize, &[u64])],
        from: &[(usize, usize)],
    ) -> Result<Vec<Vec<u64>>> {
        let msgs = out
            .iter()
            .map(|(to, v)| (*to, u64s_to_le_bytes(v)))
            .collect();
        let parties: Vec<usize> = from.iter().map(|(p, _)| *p).collect();
        let got = self.round(msgs, &parties)?;
        got.iter()
            .zip(from)
            .map(|(b, (p, n))| le_bytes_to_u64s(b, *n, *p))
            .collect()
    }

    /// One round in which this party and `peer` swap equally long ring vectors.
    pub fn exchange_u64(&mut self, peer: usize, v: &[u64]) -> Result<Vec<u64>> {
        let mut r = self.round_u64(&[(peer, v)], &[(peer, v.len())])?;
        Ok(r.pop().unwrap_or_default())
    }

    /// One round: send ring elements to `to` (the receiver calls [`Comm::recv_u64`]).
    pub fn send_u64(&mut self, to: usize, v: &[u64]) -> Result<()> {
        self.round_u64(&[(to, v)], &[]).map(|_| ())
    }

    /// One round: receive exactly `n` ring elements from `from`.
    pub fn recv_u64(&mut self, from: usize, n: usize) -> Result<Vec<u64>> {
        let mut r = self.round_u64(&[], &[(from, n)])?;
        Ok(r.pop().unwrap_or_default())
    }

    /// Record `bytes` sent to the client (outside the three-party transport).
    pub fn record_client_bytes(&mut self, bytes: u64) {
        self.client_bytes += bytes;
    }

    /// Bytes sent to the client so far.
    pub fn client_bytes(&self) -> u64 {
        self.client_bytes
    }

    /// Take the bytes sent to the client so far, leaving zero.
    pub fn take_client_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.client_bytes)
    }

    /// This party's counters so far.
    pub fn costs(&self) -> &PartyCosts {
        &self.costs
    }

    /// Take this party's counters, leaving them empty (the client bytes are reset too; take
    /// them first with [`Comm::take_client_bytes`] to report them).
    pub fn take_costs(&mut self) -> PartyCosts {
        self.client_bytes = 0;
        std::mem::take(&mut self.costs)
    }
}

/// Little-endian bytes of ring elements (one bulk copy on little-endian targets).
fn u64s_to_le_bytes(v: &[u64]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        // SAFETY: any u64 memory may be viewed as bytes; the view covers exactly `v`.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
            .to_vec()
    } else {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}

/// Exactly `n` ring elements from little-endian bytes; `from` names the sender.
fn le_bytes_to_u64s(b: &[u8], n: usize, from: usize) -> Result<Vec<u64>> {
    if b.len() != n * 8 {
        return Err(MpcError::Malformed {
            from,
            reason: format!(
                "expected {} bytes ({n} ring elements), got {}",
                n * 8,
                b.len()
            ),
        });
    }
    let mut out = vec![0u64; n];
    if cfg!(target_endian = "little") {
        // SAFETY: `out` has exactly `b.len()` bytes and every byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, b.len()) }
            .copy_from_slice(b);
    } else {
        for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
            *o = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
    }
    Ok(out)
}

/// Costs of one label (layer) aggregated over the three parties.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelCost {
    /// Layer label.
    pub label: String,
    /// Bytes sent by all parties, online.
    pub online_bytes: u64,
    /// Bytes sent by all parties, offline.
    pub offline_bytes: u64,
    /// Online rounds (maximum over parties).
    pub online_rounds: u64,
    /// Offline rounds (maximum over parties).
    pub offline_rounds: u64,
    /// Bytes sent per party (online + offline).
    pub bytes_per_party: [u64; 3],
    /// Wall-clock seconds spent in this layer (filled by the runner; 0 if unknown).
    pub seconds: f64,
}

/// One label's costs without its timing: (label, online bytes, offline bytes, online rounds,
/// offline rounds). Two runs that cost the same have equal shapes.
pub type LabelShape = (String, u64, u64, u64, u64);

impl LabelCost {
    /// This label's [`LabelShape`].
    pub fn shape(&self) -> LabelShape {
        (
            self.label.clone(),
            self.online_bytes,
            self.offline_bytes,
            self.online_rounds,
            self.offline_rounds,
        )
    }
}

/// Costs of a whole run, aggregated over the three parties, in layer order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// Per label, in first-seen order of `order` then any remaining labels alphabetically.
    pub layers: Vec<LabelCost>,
    /// Bytes of output shares sent to the client (outside the three-party transport, so not in
    /// any layer or total above); set by whoever knows them (the runner, a party).
    #[serde(default)]
    pub client_bytes: u64,
}

impl CostReport {
    /// Aggregate the three parties' counters: bytes are summed, rounds are the maximum over
    /// parties (all parties run the same schedule). `order` gives the label order.
    pub fn from_parties(parties: &[PartyCosts], order: &[String]) -> CostReport {
        let mut labels: Vec<String> = order.to_vec();
        for pc in parties {
            for (l, _) in pc.keys() {
                if !labels.contains(l) {
                    labels.push(l.clone());
                }
            }
        }
        let mut layers = Vec::new();
        for l in labels {
            let mut lc = LabelCost {
                label: l.clone(),
                ..Default::default()
            };
            let mut any = false;
            for (pi, pc) in parties.iter().enumerate() {
                for phase in [Phase::Offline, Phase::Online] {
                    if let Some(c) = pc.get(&(l.clone(), phase)) {
                        any = true;
                        if pi < 3 {
                            lc.bytes_per_party[pi] += c.bytes;
                        }
                        match phase {
                            Phase::Offline => {
                                lc.offline_bytes += c.bytes;
                                lc.offline_rounds = lc.offline_rounds.max(c.rounds);
                            }
                            Phase::Online => {
                                lc.online_bytes += c.bytes;
                                lc.online_rounds = lc.online_rounds.max(c.rounds);
                            }
                        }
                    }
                }
            }
            if any || order.contains(&l) {
                layers.push(lc);
            }
        }
        CostReport {
            layers,
            client_bytes: 0,
        }
    }

    /// Total online bytes.
    pub fn online_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.online_bytes).sum()
    }
    /// Total offline bytes.
    pub fn offline_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.offline_bytes).sum()
    }
    /// Total online rounds (layers run one after the other).
    pub fn online_rounds(&self) -> u64 {
        self.layers.iter().map(|l| l.online_rounds).sum()
    }
    /// Total offline rounds.
    pub fn offline_rounds(&self) -> u64 {
        self.layers.iter().map(|l| l.offline_rounds).sum()
    }
    /// The entry for `label`, if any.
    pub fn get(&self, label: &str) -> Option<&LabelCost> {
        self.layers.iter().find(|l| l.label == label)
    }
    /// Everything except the given labels (e.g. to drop one-time "setup" costs).
    pub fn without(&self, labels: &[&str]) -> CostReport {
        CostReport {
            layers: self
                .layers
                .iter()
                .filter(|l| !labels.contains(&l.label.as_str()))
                .cloned()
                .collect(),
            client_bytes: self.client_bytes,
        }
    }
}

/// Sum per-party counters of several runs (e.g. to accumulate).
pub fn merge_into(acc: &mut PartyCosts, other: &PartyCosts) {
    for (k, c) in other {
        acc.entry(k.clone()).or_default().add(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_roundtrip() {
        let v: Vec<u64> = (0..37u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let b = u64s_to_le_bytes(&v);
        assert_eq!(
            b,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()
        );
        assert_eq!(le_bytes_to_u64s(&b, 37, 1).unwrap(), v);
        assert!(le_bytes_to_u64s(&b, 36, 1).is_err());
        assert!(le_bytes_to_u64s(&b[1..], 37, 1).is_err());
    }
    use crate::transport::MemTransport;

    #[test]
    fn counts_bytes_and_rounds() {
        let [a, b, c] = MemTransport::trio();
        let h = std::thread::spawn(move || {
            let mut cb = Comm::new(Box::new(b));
            cb.set_label("L");
            let x = cb.exchange_u64(0, &[5, 6]).unwrap();
            let y = cb.recv_u64(2, 1).unwrap();
            (x, y, cb.take_costs())
        });
        let h2 = std::thread::spawn(move || {
            let mut cc = Comm::new(Box::new(c));
            cc.set_label("L");
            cc.set_phase(Phase::Offline);
            cc.send_u64(1, &[9]).unwrap();
            cc.take_costs()
        });
        let mut ca = Comm::new(Box::new(a));
        ca.set_label("L");
        let got = ca.exchange_u64(1, &[1, 2]).unwrap();
        assert_eq!(got, vec![5, 6]);
        let (x, y, cb) = h.join().unwrap();
        assert_eq!(x, vec![1, 2]);
        assert_eq!(y, vec![9]);
        let cc = h2.join().unwrap();
        let ca = ca.take_costs();
        let k = ("L".to_string(), Phase::Online);
        assert_eq!(
            ca[&k],
            Counter {
                bytes: 16,
                messages: 1,
                rounds: 1
            }
        );
        assert_eq!(
            cb[&k],
            Counter {
                bytes: 16,
                messages: 1,
                rounds: 2
            }
        );
        let rep = CostReport::from_parties(&[ca, cb, cc], &["L".to_string()]);
        let l = rep.get("L").unwrap();
        assert_eq!(l.online_bytes, 32);
        assert_eq!(l.offline_bytes, 8);
        assert_eq!(l.online_rounds, 2);
        assert_eq!(l.offline_rounds, 1);
        assert_eq!(l.bytes_per_party, [16, 16, 8]);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let [a, b, _c] = MemTransport::trio();
        let mut ca = Comm::new(Box::new(a));
        let mut cb = Comm::new(Box::new(b));
        ca.send_u64(1, &[1, 2, 3]).unwrap();
        assert!(matches!(cb.recv_u64(0, 2), Err(MpcError::Malformed { .. })));
        assert!(matches!(ca.send_u64(0, &[1]), Err(MpcError::BadParty(0))));
    }
}
