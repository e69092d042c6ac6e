//! The fault suite (`make test-faults`, feature `faults`): lockwarden's
//! guarantees under crashes, pauses, clock steps, failover, slot migration,
//! churn and malformed input, checked by the fenced-storage oracle
//! (`lockwarden_tests::FencedStore`). Each scenario records a row of
//! `tests/FAULTS.md`. `LOCKWARDEN_FAULTS_LONG=1` runs the long variants.

mod aof_crash;
mod bad_input;
mod clock_steps;
mod common;
mod common_a;
mod common_b;
mod holder_crash;
mod paused_holder;
mod random_history;
mod sentinel_failover;
mod slot_migration;
mod soak;
