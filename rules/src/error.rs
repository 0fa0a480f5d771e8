//! The crate's errors.
//!
//! One crate error, plus cheap enums for the per-message hot path:
//! - [`InputError`] is what the per-message hot path returns for a bad name
//!   or uid. It is `Copy`, allocation-free, and its `Display` is the sentence
//!   the gateway puts in a 400 body.
//! - [`Error`] is what loading, validating and reloading a rule set returns.
//!   Its `Invalid` variant carries *every* problem found, each with its
//!   `file:line:col`.

use std::fmt;
use std::path::PathBuf;

use crate::diag::Diagnostics;

/// A bad name or uid on the per-message path. Cheap to build and to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("must not contain {ch:?} (at position {at}); allowed are A-Z a-z 0-9 _ -")]
    BadChar { at: usize, ch: char },
    #[error("is a reserved name")]
    Reserved,
    #[error("is too long: the physical name would be {len} characters, over the limit of {max}")]
    PhysicalTooLong { max: usize, len: usize },
    #[error("is too long: copied to a cell with a {cell_len}-character name it would be {len} characters, over the limit of {max}")]
    CopyTooLong {
        max: usize,
        len: usize,
        cell_len: usize,
    },
    #[error("is not of the form NS|CELL%NAME")]
    NotPhysical,
    #[error("must be printable ASCII without control characters")]
    NotPrintable,
    #[error("is not one of the accepted values")]
    Unknown,
}

/// Errors from loading, validating and reloading rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The rules parsed but are wrong; every problem is listed.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The new rules are valid but change something that cannot change while
    /// cellgate runs; every such change is listed.
    #[error("{0}")]
    NotReloadable(Diagnostics),
    /// The rules file's directory could not be watched.
    #[error("cannot watch {}: {reason}", path.display())]
    Watch { path: PathBuf, reason: String },
    /// `explain` was asked about a tenant the rules do not declare.
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    /// `explain` was asked about a cell the rules do not declare.
    #[error("unknown cell {0}")]
    UnknownCell(String),
    /// The tenant may not use the cell.
    #[error("tenant {tenant} may not use cell {cell}")]
    CellNotAllowed { tenant: String, cell: String },
    /// A name was refused.
    #[error("{0}")]
    Name(#[from] crate::names::NameError),
    /// A uid was refused.
    #[error("uid {0}")]
    Uid(InputError),
}

impl Error {
    /// The located problems, when there are any.
    pub fn diagnostics(&self) -> Option<&Diagnostics> {
        match self {
            Error::Invalid(d) | Error::NotReloadable(d) => Some(d),
            _ => None,
        }
    }
}

/// The kind of a name, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Namespace,
    Cell,
    City,
    Topic,
    Group,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Namespace => "namespace",
            NameKind::Cell => "cell",
            NameKind::City => "city",
            NameKind::Topic => "topic",
            NameKind::Group => "group",
        })
    }
}
