//! Compile-time behaviour of `#[cacheback]`: what it accepts, and the errors it gives for what
//! it does not. Regenerate the expected `.stderr` files with `TRYBUILD=overwrite` after changing
//! a message, and read them: each must say what to change, pointing at the offending code.
//!
//! The cases compile against the core crate with its default features only, so rustc's lists
//! of candidate impls in the expected output do not depend on which optional backends a build
//! enables.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
