//! cellgate's edge: the command line now, the HTTP(S) API next (issue 4).
//!
//! The `cellgate` binary (src/main.rs) only parses arguments and calls
//! [`cli::run`]; everything it does lives here so it can be tested in-process
//! as well as through the real binary.

#![forbid(unsafe_code)]

pub mod cli;
mod error;

pub use error::Error;
