//! A fixture for `make check`'s harness self-test, not a test of the
//! code: ignored in the real run, it is run on purpose with
//! `--ignored` and `DMSR_HARNESS_SELFTEST` set to `fail` (a failing
//! assertion) or `abort` (the test process dies, so cargo prints no
//! result line for it), and the harness must count a failure either way.

#[test]
#[ignore = "harness self-test fixture: run by scripts/check with --ignored"]
fn injected_failure() {
    match std::env::var("DMSR_HARNESS_SELFTEST").as_deref() {
        Ok("fail") => panic!("injected failure (harness self-test)"),
        Ok("abort") => std::process::abort(),
        _ => {}
    }
}
