//! Load generator for the Sova relay, and the same workload against NATS and Redis, so
//! the three can be compared on one machine in one run.
//!
//! A workload is groups of clients (relay sessions, NATS subjects, Redis channels); some
//! clients of each group publish, at a fixed rate or flat out with a bounded window of
//! messages in flight, and every other client of the group receives. Each payload
//! carries its send time, so every delivery gives a one-way latency; the server's CPU time
//! and memory come from `/proc/PID`. See `BENCHMARKS.md` at the repository root.

pub mod clock;
pub mod cluster;
pub mod payload;
pub mod procfs;
mod proto;
pub mod report;
pub mod scenario;
pub mod servers;
pub mod soak;
pub mod suite;
pub mod workload;

pub use proto::{frames, Target};
pub use report::Report;
pub use workload::{Mode, Workload};
