//! Code shared by the example binaries in `src/bin/`.
//!
//! Each example is one binary a reader finishes in a minute. What two binaries must agree on
//! lives here, in one copy both import: [`fleet`], the job and the Redis set-up of the
//! `fleet_web` and `fleet_worker` pair; [`pg`], the throwaway PostgreSQL database of the
//! `service` example and its tests.

pub mod fleet;
pub mod pg;
pub mod split;
