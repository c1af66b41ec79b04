//! Compile-time behaviour of `#[cacheback]`: what it accepts, and the errors it gives for what
//! it does not. Regenerate the expected `.stderr` files with `TRYBUILD=overwrite` after changing
//! a message, and read them: each must say what to change, pointing at the offending code.
//!
//! The expected output is that of the README's test command (`--all-features`): rustc's list of
//! the types implementing `Deserialize` depends on the crates in the build, and the `nats`
//! feature brings `time`, whose impls change how rustc prints that list. Without that feature
//! the test is ignored (it says so), never run against the wrong expectation.

#[test]
#[cfg_attr(
    not(feature = "nats"),
    ignore = "expected output is for --all-features (the `nats` feature changes rustc's list of Deserialize impls)"
)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
