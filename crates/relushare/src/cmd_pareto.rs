//! `relushare pareto`: accuracy against comparisons against `fast` bytes over trained rows (the
//! pipeline is [`relushare_experiments::pareto`]).

pub use relushare_experiments::pareto::{run, Args};
