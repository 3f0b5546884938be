//! The runner fails cleanly (an error naming the party, no hang) when a party fails, and
//! rejects bad inputs.

use relushare_model::{presets, Arch, Model};
use relushare_mpc::cost::Comm;
use relushare_mpc::fixed::FixedPoint;
use relushare_mpc::plain::FixedModel;
use relushare_mpc::runner::{run_session, RunOptions};
use relushare_mpc::securenn::{self, SecureNn};
use relushare_mpc::suite::Suite;
use relushare_mpc::MpcError;
use std::time::{Duration, Instant};

fn model() -> FixedModel {
    let m = Model::random(presets::build(Arch::Svhn, "uniform32").unwrap(), None, 2).unwrap();
    FixedModel::from_model(&m, 13).unwrap()
}

#[test]
fn a_failing_party_is_reported_without_hanging() {
    let fm = model();
    let img = vec![fm.fp.encode(0.5); fm.input_len];
    let failing = |comm: Comm, fp: FixedPoint| -> relushare_mpc::Result<Box<dyn Suite>> {
        if comm.party() == 1 {
            return Err(MpcError::Param("party 1 refuses".into()));
        }
        Ok(Box::new(SecureNn::new(comm, fp)?))
    };
    let opts = RunOptions {
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let t = Instant::now();
    let err = run_session(&fm, &[vec![img]], &failing, &opts).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    match err {
        MpcError::PartyFailed { party, reason } => {
            assert_eq!(party, 1);
            assert!(reason.contains("refuses"), "{reason}");
        }
        e => panic!("unexpected error {e}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let fm = model();
    let short = vec![0u64; fm.input_len - 1];
    let opts = RunOptions::default();
    assert!(run_session(&fm, &[vec![short]], &securenn::factory, &opts).is_err());
    assert!(run_session(&fm, &[vec![]], &securenn::factory, &opts).is_err());
    assert!(FixedPoint::new(0).is_err());
    assert!(fm.encode_input(&[0.0; 3]).is_err());
}
