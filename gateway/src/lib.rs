//! cellgate's edge: the HTTP(S) API (SPEC §9) and the command line.
//!
//! The `cellgate` binary (src/main.rs) only parses arguments and calls
//! [`cli::run`]; everything it does lives here so it can be tested in-process
//! as well as through the real binary.

#![forbid(unsafe_code)]

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
