//! Cities, cells, the shard map, the active GZone and takeover.

use std::collections::HashMap;

use super::{items, At, Doc, Problems};
use crate::error::NameKind;
use crate::names;
use crate::ruleset::{BrokerRef, Cell, CellId, City, Location, ZoneType};

/// The checked topology; fields are `None`/partial when something was wrong
/// (and a problem was recorded).
pub(super) struct Topology {
    pub cells: Vec<Cell>,
    pub cell_index: HashMap<Box<str>, CellId>,
    pub cities: Vec<City>,
    pub czone_of: Vec<CellId>,
    pub owners: [Option<CellId>; 100],
    pub gzone: Option<CellId>,
    pub serving: Vec<CellId>,
}

impl Topology {
    pub fn shard_owner(&self) -> Option<[CellId; 100]> {
        let mut out = [CellId(0); 100];
        for (o, s) in out.iter_mut().zip(self.owners) {
            *o = s?;
        }
        Some(out)
    }
}

pub(super) fn compile(probs: &mut Problems, docs: &[Doc]) -> Topology {
    let city_at = cities(probs, docs);
    let (cells, cell_index) = cells(probs, docs, &city_at);
    let (cities, czone_of) = czones(probs, &city_at, &cells);
    let owners = super::shards::compile(probs, docs, &cells, &cell_index);
    let gzone = gzone(probs, docs, &cells, &cell_index);
    let serving = takeover(probs, docs, &cells, &cell_index);
    Topology {
        cells,
        cell_index,
        cities,
        czone_of,
        owners,
        gzone,
        serving,
    }
}

fn cities<'a>(probs: &mut Problems, docs: &'a [Doc]) -> Vec<(&'a str, At<'a>)> {
    let mut out: Vec<(&str, At<'_>)> = Vec::new();
    for (at, c) in items(docs, "cities", |r| &r.cities) {
        if let Err(e) = names::validate(NameKind::City, &c.name) {
            probs.push(
                at.field("name")
                    .error(format!("city name {:?} {e}", c.name)),
            );
        } else if let Some((_, first)) = out.iter().find(|(n, _)| *n == c.name) {
            let msg = format!(
                "city {} is declared twice (first at {})",
                c.name,
                first.short()
            );
            probs.push(at.field("name").error(msg));
        } else {
            out.push((&c.name, at));
        }
    }
    out
}

// Long on purpose: the checks of one entry run in sequence, each pushing
// its own problem and carrying on, so that every problem is reported.
fn cells(
    probs: &mut Problems,
    docs: &[Doc],
    cities: &[(&str, At<'_>)],
) -> (Vec<Cell>, HashMap<Box<str>, CellId>) {
    let city_names: std::collections::HashSet<&str> = cities.iter().map(|(n, _)| *n).collect();
    let mut cells: Vec<Cell> = Vec::new();
    let mut index = HashMap::new();
    for (at, c) in items(docs, "cells", |r| &r.cells) {
        if let Err(e) = names::validate(NameKind::Cell, &c.name) {
            probs.push(
                at.field("name")
                    .error(format!("cell name {:?} {e}", c.name)),
            );
            continue;
        }
        if let Some(first) = index
            .get(c.name.as_str())
            .map(|id: &CellId| &cells[usize::from(id.0)])
        {
            let msg = format!(
                "cell {} is declared twice (first at {}:{})",
                c.name, first.declared_at.file, first.declared_at.line
            );
            probs.push(at.field("name").error(msg));
            continue;
        }
        if !city_names.contains(c.city.as_str()) {
            let msg = format!("cell {}: city {} is not a declared city", c.name, c.city);
            probs.push(at.field("city").error(msg));
        }
        let broker = match parse_broker(&c.broker) {
            Ok(b) => b,
            Err(why) => {
                probs.push(at.field("broker").error(format!("cell {}: {why}", c.name)));
                BrokerRef::Embedded
            }
        };
        if cells.len() >= usize::from(u16::MAX) {
            probs.push(at.error("more than 65535 cells"));
            break;
        }
        let d = at.error("");
        index.insert(c.name.as_str().into(), CellId(cells.len() as u16));
        cells.push(Cell {
            name: c.name.as_str().into(),
            zone: c.zone,
            city: c.city.as_str().into(),
            broker,
            declared_at: Location {
                file: d.file,
                line: d.line,
                col: d.col,
            },
        });
    }
    (cells, index)
}

/// `embedded` or `rocketmq://host:port[,host:port…]`.
pub(crate) fn parse_broker(s: &str) -> Result<BrokerRef, String> {
    if s == "embedded" {
        return Ok(BrokerRef::Embedded);
    }
    let bad = || format!("broker {s:?} must be `embedded` or `rocketmq://host:port[,host:port…]`");
    let list = s.strip_prefix("rocketmq://").ok_or_else(bad)?;
    let mut name_servers = Vec::new();
    for hp in list.split(',') {
        let (host, port) = hp.rsplit_once(':').ok_or_else(bad)?;
        // A DNS name or IPv4 address, or an IPv6 address in brackets.
        let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => {
                !host.is_empty()
                    && host.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                            && !l.starts_with('-')
                    })
            }
        };
        let port_ok = port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !host_ok || !port_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
        name_servers.push(hp.to_owned());
    }
    Ok(BrokerRef::RocketMq { name_servers })
}

/// Every city has exactly one CZone.
fn czones(
    probs: &mut Problems,
    cities: &[(&str, At<'_>)],
    cells: &[Cell],
) -> (Vec<City>, Vec<CellId>) {
    // city -> its CZone cells, in one pass (topologies can be large).
    let mut by_city: HashMap<&str, Vec<(usize, &Cell)>> = HashMap::new();
    for (i, c) in cells
        .iter()
        .enumerate()
        .filter(|(_, c)| c.zone == ZoneType::C)
    {
        by_city.entry(&c.city).or_default().push((i, c));
    }
    let mut out = Vec::new();
    for (name, at) in cities {
        let cz = by_city.get(name).map_or(&[][..], Vec::as_slice);
        match cz {
            [] => probs.push(at.error(format!("city {name} has no CZone"))),
            [(i, _)] => out.push(City {
                name: (*name).into(),
                czone: CellId(*i as u16),
            }),
            many => {
                let count = if many.len() == 2 {
                    "two".to_owned()
                } else {
                    many.len().to_string()
                };
                let names: Vec<&str> = many.iter().map(|(_, c)| &*c.name).collect();
                let msg = format!("city {name} has {count} CZones ({})", names.join(", "));
                probs.push(at.error(msg));
            }
        }
    }
    let czone: HashMap<&str, CellId> = out.iter().map(|c| (&*c.name, c.czone)).collect();
    let czone_of = cells
        .iter()
        .enumerate()
        .map(|(i, c)| czone.get(&*c.city).copied().unwrap_or(CellId(i as u16)))
        .collect();
    (out, czone_of)
}

fn gzone(
    probs: &mut Problems,
    docs: &[Doc],
    cells: &[Cell],
    index: &HashMap<Box<str>, CellId>,
) -> Option<CellId> {
    let set: Vec<(At<'_>, &String)> = docs
        .iter()
        .filter_map(|d| {
            let at = At {
                src: &d.src,
                path: "gzone".to_owned(),
            };
            d.raw.gzone.as_ref().map(|g| (at, g))
        })
        .collect();
    let Some((at, name)) = set.first() else {
        if let Some(d) = docs.first() {
            probs.push(d.src.at("", "no active GZone: set `gzone` to a GZone cell"));
        }
        return None;
    };
    for (again, _) in &set[1..] {
        probs.push(again.error(format!("gzone is already set at {}", at.short())));
    }
    match index.get(name.as_str()) {
        None => probs.push(at.error(format!("GZone {name} is not a declared cell"))),
        Some(&id) if cells[usize::from(id.0)].zone != ZoneType::G => {
            let zone = cells[usize::from(id.0)].zone;
            let msg = format!("GZone {name} is {} cell, not a GZone", zone.with_article());
            probs.push(at.error(msg));
        }
        Some(&id) => return Some(id),
    }
    None
}

// Long on purpose: the checks of one entry run in sequence, each pushing
// its own problem and carrying on, so that every problem is reported.
/// `serving[c]`: `c`, or the cell that took `c` over.
fn takeover(
    probs: &mut Problems,
    docs: &[Doc],
    cells: &[Cell],
    index: &HashMap<Box<str>, CellId>,
) -> Vec<CellId> {
    let mut serving: Vec<CellId> = (0..cells.len()).map(|i| CellId(i as u16)).collect();
    let entries = items(docs, "takeover", |r| &r.takeover);
    let mut taken: Vec<(CellId, CellId, &At<'_>)> = Vec::new();
    for (at, t) in &entries {
        let cell = |field: &str, name: &str| {
            let id = index.get(name).copied();
            if id.is_none() {
                let msg = format!("takeover: {name} is not a declared cell");
                (None, Some(at.field(field).error(msg)))
            } else {
                (id, None)
            }
        };
        let (a, ea) = cell("cell", &t.cell);
        let (b, eb) = cell("by", &t.by);
        for e in ea.into_iter().chain(eb) {
            probs.push(e);
        }
        let (Some(a), Some(b)) = (a, b) else { continue };
        let (za, zb) = (cells[usize::from(a.0)].zone, cells[usize::from(b.0)].zone);
        if a == b {
            probs.push(
                at.field("by")
                    .error(format!("cell {} cannot take itself over", t.cell)),
            );
        } else if za != zb {
            let msg = format!(
                "takeover of {} by {}: both must be the same zone type ({za} vs {zb})",
                t.cell, t.by
            );
            probs.push(at.field("by").error(msg));
        } else if let Some((_, _, first)) = taken.iter().find(|(x, _, _)| *x == a) {
            let msg = format!(
                "{} is taken over twice (first at {})",
                t.cell,
                first.short()
            );
            probs.push(at.field("cell").error(msg));
        } else {
            taken.push((a, b, at));
        }
    }
    for &(a, b, at) in &taken {
        if taken.iter().any(|(x, _, _)| *x == b) {
            let msg = format!(
                "takeover of {} by {}: {} is itself taken over; name the cell that serves it",
                cells[usize::from(a.0)].name,
                cells[usize::from(b.0)].name,
                cells[usize::from(b.0)].name
            );
            probs.push(at.field("by").error(msg));
        } else {
            serving[usize::from(a.0)] = b;
        }
    }
    serving
}
