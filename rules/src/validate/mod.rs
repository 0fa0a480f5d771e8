//! Raw YAML → [`RuleSet`], collecting every problem.
//!
//! Validation never stops at the first problem: each check pushes a located
//! [`Diagnostic`] and carries on with what it can, so one run of
//! `cellgate rules check` lists everything that is wrong. Only when no
//! problem was found is a `RuleSet` assembled.
//!
//! Sources may be several files (a rules directory); list sections (`cells`,
//! `tenants`, …) concatenate across them and single-valued ones (`gzone`,
//! `platform_admin`) may be set in one file only.

mod shards;
mod telemetry;
mod tenants;
mod topology;

use std::collections::HashMap;

use regex::{Regex, RegexSet};

use crate::diag::{Diagnostic, Diagnostics, Source};
use crate::raw::RawRules;
use crate::ruleset::{Patterns, RuleSet, RulesMeta};

/// One parsed source file.
#[derive(Debug)]
pub(crate) struct Doc {
    pub(crate) src: Source,
    pub(crate) raw: RawRules,
}

/// Where a value is: its source and its path in it.
#[derive(Debug, Clone)]
pub(crate) struct At<'a> {
    pub(crate) src: &'a Source,
    pub(crate) path: String,
}

impl<'a> At<'a> {
    fn field(&self, name: &str) -> At<'a> {
        At {
            src: self.src,
            path: format!("{}.{name}", self.path),
        }
    }

    fn index(&self, i: usize) -> At<'a> {
        At {
            src: self.src,
            path: format!("{}[{i}]", self.path),
        }
    }

    fn error(&self, msg: impl Into<String>) -> Diagnostic {
        self.src.at(&self.path, msg)
    }

    /// `file:line` of this value, to point at a first declaration.
    fn short(&self) -> String {
        let (line, _) = self.src.marks.get(&self.path);
        format!("{}:{line}", self.src.file)
    }
}

/// The items of one list section across every doc, with their locations.
fn items<'a, T>(
    docs: &'a [Doc],
    section: &str,
    get: impl Fn(&'a RawRules) -> &'a Vec<T>,
) -> Vec<(At<'a>, &'a T)> {
    docs.iter()
        .flat_map(|d| {
            get(&d.raw).iter().enumerate().map(move |(i, item)| {
                (
                    At {
                        src: &d.src,
                        path: format!("{section}[{i}]"),
                    },
                    item,
                )
            })
        })
        .collect()
}

/// The collected problems.
#[derive(Default)]
pub(crate) struct Problems(Vec<Diagnostic>);

impl Problems {
    fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
}

/// Compiles `p` as a whole-name match. The error is one sentence.
pub(crate) fn whole_match(p: &str) -> Result<Regex, String> {
    Regex::new(&anchored(p)?).map_err(|e| regex_reason(p, &e))
}

/// `^(?:p)$`, after checking `p` compiles on its own: wrapped, a pattern
/// like `a)|(b` would compile and mean something else.
fn anchored(p: &str) -> Result<String, String> {
    regex::Regex::new(p).map_err(|e| regex_reason(p, &e))?;
    Ok(format!("^(?:{p})$"))
}

fn regex_reason(p: &str, e: &regex::Error) -> String {
    let why = match e {
        regex::Error::Syntax(s) => s
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or(s)
            .to_owned(),
        regex::Error::CompiledTooBig(n) => format!("it compiles to more than {n} bytes"),
        other => other.to_string(),
    };
    format!("regex {p:?} does not compile: {why}")
}

/// A list of patterns (absent: match everything).
fn patterns(probs: &mut Problems, at: &At<'_>, src: Option<&Vec<String>>) -> Patterns {
    let src: Vec<String> = src.cloned().unwrap_or_else(|| vec![".*".to_owned()]);
    let mut ok = Vec::with_capacity(src.len());
    for (i, p) in src.iter().enumerate() {
        match anchored(p) {
            Ok(a) => ok.push(a),
            Err(e) => probs.push(at.index(i).error(e)),
        }
    }
    let set = RegexSet::new(&ok).unwrap_or_else(|e| {
        // Each compiled alone, so only the whole set can be too big.
        let why = match e {
            regex::Error::CompiledTooBig(n) => format!("more than {n} bytes"),
            other => other.to_string(),
        };
        probs.push(at.error(format!("these patterns together do not compile: {why}")));
        RegexSet::empty()
    });
    Patterns { src, set }
}

/// Compiles every doc into one rule set, or returns every problem.
pub(crate) fn compile(docs: &[Doc], meta: RulesMeta) -> Result<RuleSet, Diagnostics> {
    let mut probs = Problems::default();
    let topo = topology::compile(&mut probs, docs);
    let ten = tenants::compile(&mut probs, docs, &topo);
    let telemetry = telemetry::compile(&mut probs, docs);
    if !probs.0.is_empty() {
        let mut d = Diagnostics(probs.0);
        d.sort();
        return Err(d);
    }
    let (Some(gzone), Some(shard_owner)) = (topo.gzone, topo.shard_owner()) else {
        // A missing gzone or shard is always a problem above; should that
        // ever change, say so rather than fail without a word.
        let at = docs
            .first()
            .map(|d| d.src.at("", "incomplete topology: no GZone or shard map"));
        return Err(Diagnostics(at.into_iter().collect()));
    };
    let tenant_index: HashMap<Box<str>, _> = ten
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.namespace.clone(), crate::TenantId(i as u16)))
        .collect();
    Ok(RuleSet {
        meta,
        cell_index: topo.cell_index,
        cells: topo.cells,
        cities: topo.cities,
        czone_of: topo.czone_of,
        shard_owner,
        gzone,
        serving: topo.serving,
        tenants: ten.tenants,
        tenant_index,
        grants: ten.grants,
        telemetry,
    })
}
