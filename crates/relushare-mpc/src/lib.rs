//! Secure 3-party inference over Z_2^64: ring arithmetic, sharing, PRGs, dealer, protocols, transport, cost accounting. No Burn.
