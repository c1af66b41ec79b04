//! Conformance suites that every [`Store`](crate::Store) and [`Queue`](crate::Queue)
//! implementation must pass (feature `testing`).
