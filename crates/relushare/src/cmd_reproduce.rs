//! `relushare reproduce`: the paper's tables (the pipeline is
//! [`relushare_experiments::reproduce`]).

pub use relushare_experiments::reproduce::{run, Args};
