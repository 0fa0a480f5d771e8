//! cellgate's edge: the HTTP(S) API (SPEC §9) and the command line.
//!
//! The `cellgate` binary (src/main.rs) only parses arguments and calls
//! [`cli::run`]; everything it does lives here so it can be tested in-process
//! as well as through the real binary.

#![forbid(unsafe_code)]
// The RocketMQ client's futures nest deeply: proving a request's future
// `Send` needs more than the default 128 levels.
#![recursion_limit = "256"]

pub mod api;
pub mod brokers;
pub mod cli;
mod combine;
mod error;
pub mod metrics;
pub mod serve;
pub mod server;
mod telemetry;
mod validate;

pub use error::Error;
