//! The per-probe series, stored compactly and written straight to text.
//!
//! Why not the prometheus crate's vectors: they keep every series as its own
//! object with its label pairs as protobuf strings (~5.7 KB for the ~25
//! series of an http probe), and render by first gathering everything into
//! protobuf structs (~5 KB a probe, transient, ~100 allocations a probe); at
//! 10,000 probes that was most of `probe serve`'s memory and most of a
//! render's time. Here one probe's series live in one struct ([`Cells`])
//! under one mutex (a run's values change together), and rendering writes
//! text directly into the body. The text is what the crate's encoder wrote:
//! families sorted by name, HELP and TYPE once per family, a family without
//! series left out, label names sorted with `le` last; series grouped by
//! probe, probes sorted by their label values.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};

use super::LATENCY_BUCKETS;

/// A histogram over [`LATENCY_BUCKETS`]: counts per bucket (not
/// cumulative; the last is above every bound), and the sum.
#[derive(Debug, Default, Clone)]
pub(super) struct Hist {
    counts: [u64; 13],
    sum: f64,
}

const _: () = assert!(LATENCY_BUCKETS.len() + 1 == 13);

/// The bucket bounds as the text spells them (no float formatting per line).
const LE: [&str; 13] = [
    "0.05", "0.1", "0.25", "0.5", "0.75", "1", "1.5", "2", "3", "5", "7.5", "10", "+Inf",
];

impl Hist {
    pub(super) fn observe(&mut self, v: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
    }
}

/// Every series of one probe; `None` is a series not (yet) exported.
#[derive(Debug, Default)]
pub(super) struct Cells {
    pub success: Option<f64>,
    pub duration: Option<f64>,
    pub last_success: Option<f64>,
    pub next_run: Option<f64>,
    pub target_uptime: Option<f64>,
    pub target_presence: Option<f64>,
    /// By `Outcome::ALL`'s order.
    pub runs: [Option<u64>; 5],
    pub skipped: Option<u64>,
    pub target_restarts: Option<u64>,
    pub late_replies: Option<u64>,
    pub latency: Option<Box<Hist>>,
    /// By [`DISCORD_PHASES`]' order.
    pub discord_latency: [Option<Box<Hist>>; 2],
    /// (command, phase, histogram)
    pub interaction_latency: Vec<(Box<str>, &'static str, Hist)>,
    /// (command, outcome, count)
    pub interactions: Vec<(Box<str>, &'static str, u64)>,
}

pub(super) const DISCORD_PHASES: [&str; 2] = ["reply", "first_response"];

/// One family with a series per probe: how to write a probe's series.
pub(super) struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub write: fn(&mut Writer, &Cells),
}

/// A probe's identity (`probe`, `kind`, its own labels encoded in one
/// value) → its cells.
type Map = BTreeMap<Vec<String>, Arc<Mutex<Cells>>>;

/// The probes' series, keyed by identity, and the order they render in.
pub(super) struct ProbeSeries {
    probes: RwLock<Map>,
    /// The label names every series shows, sorted: `probe`, `kind` and the
    /// current config's static label names.
    names: RwLock<Vec<String>>,
    /// The probes in render order with their label text, rebuilt after a
    /// probe comes or goes or the label names change. Lock order: `order`,
    /// then `probes` or `names`; never the other way round.
    order: Mutex<Option<Arc<Order>>>,
}

/// The probes in render order, and the label names their text was built
/// with.
struct Order {
    names: Vec<String>,
    rows: Vec<Row>,
}

/// One probe as rendered.
struct Row {
    /// `kind="http",probe="a",shard=""`: every label, sorted by name, escaped.
    labels: Box<str>,
    /// Where each label of `labels` ends (before its comma).
    ends: Box<[u32]>,
    cells: Arc<Mutex<Cells>>,
}

impl ProbeSeries {
    pub(super) fn new(static_names: &[String]) -> Self {
        let series = ProbeSeries {
            probes: RwLock::default(),
            names: RwLock::default(),
            order: Mutex::default(),
        };
        series.set_static_names(static_names);
        series
    }

    /// The config's static label names (a reload may change them).
    pub(super) fn set_static_names(&self, static_names: &[String]) {
        let mut names: Vec<String> = ["probe", "kind"]
            .into_iter()
            .map(String::from)
            .chain(static_names.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        let changed = {
            let mut current = write(&self.names);
            let changed = *current != names;
            *current = names;
            changed
        };
        if changed {
            *lock(&self.order) = None;
        }
    }

    /// Runs `f` on the probe's cells, adding the probe when new.
    pub(super) fn with<T>(&self, identity: &[String], f: impl FnOnce(&mut Cells) -> T) -> T {
        let found = read(&self.probes).get(identity).cloned();
        let cells = match found {
            Some(c) => c,
            None => {
                let cells = write(&self.probes)
                    .entry(identity.to_vec())
                    .or_default()
                    .clone();
                // After the insert: a render in between may miss the probe
                // once, never keep missing it.
                *lock(&self.order) = None;
                cells
            }
        };
        f(&mut lock(&cells))
    }

    /// Runs `f` on the probe's cells when it has any.
    pub(super) fn with_existing(&self, identity: &[String], f: impl FnOnce(&mut Cells)) {
        let found = read(&self.probes).get(identity).cloned();
        if let Some(cells) = found {
            f(&mut lock(&cells));
        }
    }

    pub(super) fn remove(&self, identity: &[String]) {
        let removed = write(&self.probes).remove(identity).is_some();
        if removed {
            *lock(&self.order) = None;
        }
    }

    /// The probes in render order, built when stale.
    fn order(&self) -> Arc<Order> {
        let mut order = lock(&self.order);
        if let Some(order) = &*order {
            return order.clone();
        }
        let probes = read(&self.probes);
        let names = read(&self.names);
        let mut rows: Vec<(Vec<&str>, &Arc<Mutex<Cells>>)> = probes
            .iter()
            .map(|(identity, cells)| {
                let own = super::decode_labels(&identity[2]);
                let values = names
                    .iter()
                    .map(|name| match name.as_str() {
                        "probe" => identity[0].as_str(),
                        "kind" => identity[1].as_str(),
                        name => own.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v),
                    })
                    .collect();
                (values, cells)
            })
            .collect();
        // As the crate sorted series: by label values, in label name order.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let rows = rows
            .into_iter()
            .map(|(values, cells)| {
                let mut labels = String::new();
                let mut ends = Vec::with_capacity(names.len());
                for (name, value) in names.iter().zip(values) {
                    if !labels.is_empty() {
                        labels.push(',');
                    }
                    label(&mut labels, name, value);
                    ends.push(u32::try_from(labels.len()).unwrap_or(u32::MAX));
                }
                Row {
                    labels: labels.into(),
                    ends: ends.into(),
                    cells: cells.clone(),
                }
            })
            .collect();
        let built = Arc::new(Order {
            names: names.clone(),
            rows,
        });
        *order = Some(built.clone());
        built
    }

    /// Writes every family that has a series (`families` sorted by name)
    /// into `out`, handing it to `drain` (which empties it) whenever it
    /// holds `chunk` bytes or more.
    pub(super) fn render(
        &self,
        families: &[Family],
        out: &mut String,
        chunk: usize,
        drain: &mut dyn FnMut(&mut String),
    ) {
        let order = self.order();
        for family in families {
            let start = out.len();
            out.push_str("# HELP ");
            out.push_str(family.name);
            out.push(' ');
            out.push_str(family.help);
            out.push_str("\n# TYPE ");
            out.push_str(family.name);
            out.push(' ');
            out.push_str(family.kind);
            out.push('\n');
            let header = out.len();
            // A family with no line loses its header; once drained, the
            // header is gone with lines after it.
            let mut drained = false;
            for row in &order.rows {
                let mut w = Writer {
                    out: &mut *out,
                    names: &order.names,
                    name: family.name,
                    row,
                };
                (family.write)(&mut w, &lock(&row.cells));
                if out.len() >= chunk && (drained || out.len() > header) {
                    drain(out);
                    drained = true;
                }
            }
            if !drained && out.len() == header {
                out.truncate(start);
            }
        }
    }
}

/// Writes one probe's lines of one family.
pub(super) struct Writer<'a> {
    out: &'a mut String,
    /// The label names of every row, sorted.
    names: &'a [String],
    /// The family being written.
    name: &'static str,
    row: &'a Row,
}

impl Writer<'_> {
    pub(super) fn float(&mut self, extra: &[(&str, &str)], v: Option<f64>) {
        if let Some(v) = v {
            self.line("", extra, None);
            write_f64(self.out, v);
            self.out.push('\n');
        }
    }

    pub(super) fn int(&mut self, extra: &[(&str, &str)], v: Option<u64>) {
        if let Some(v) = v {
            self.line("", extra, None);
            write_u64(self.out, v);
            self.out.push('\n');
        }
    }

    pub(super) fn histogram(&mut self, h: &Hist, extra: &[(&str, &str)]) {
        let mut cumulative = 0;
        for (n, le) in h.counts.iter().zip(LE) {
            cumulative += n;
            self.line("_bucket", extra, Some(le));
            write_u64(self.out, cumulative);
            self.out.push('\n');
        }
        self.line("_sum", extra, None);
        write_f64(self.out, h.sum);
        self.out.push('\n');
        self.line("_count", extra, None);
        write_u64(self.out, cumulative);
        self.out.push('\n');
    }

    /// Writes `name{labels} `: the row's labels with `extra` (sorted by
    /// name) among them by name, `le` last.
    fn line(&mut self, suffix: &str, extra: &[(&str, &str)], le: Option<&str>) {
        let row = self.row;
        self.out.push_str(self.name);
        self.out.push_str(suffix);
        self.out.push('{');
        if extra.is_empty() {
            self.out.push_str(&row.labels);
        } else {
            let mut extra = extra.iter().peekable();
            let mut start = 0;
            let mut first = true;
            for (name, end) in self.names.iter().zip(&row.ends) {
                while let Some((n, v)) = extra.next_if(|(n, _)| *n < name.as_str()) {
                    if !first {
                        self.out.push(',');
                    }
                    label(self.out, n, v);
                    first = false;
                }
                let end = *end as usize;
                if !first {
                    self.out.push(',');
                }
                self.out.push_str(&row.labels[start..end]);
                first = false;
                start = end + 1;
            }
            for (n, v) in extra {
                self.out.push(',');
                label(self.out, n, v);
            }
        }
        if let Some(le) = le {
            self.out.push_str(",le=\"");
            self.out.push_str(le);
            self.out.push('"');
        }
        self.out.push_str("} ");
    }
}

/// `name="value"` with the text format's escapes (`\\`, `\"`, `\n`).
fn label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as the text format spells it: Rust's shortest round-trip
/// decimal, as the crate wrote it (`+Inf`, `-Inf`, `NaN`); whole numbers
/// (most values: 0, 1, counts) without the formatting machinery.
fn write_f64(out: &mut String, v: f64) {
    if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        if v.is_sign_negative() {
            out.push('-');
        }
        write_u64(out, v.abs() as u64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Decimal digits, without the formatting machinery (the hot path: 15 of
/// an http probe's 25 lines end in a count).
fn write_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_spelled_as_the_crate_spelled_them() {
        for v in [
            0.0,
            1.0,
            -1.0,
            0.5,
            1e15,
            1e16,
            1.7e9,
            1_700_000_000.25,
            -0.0,
            3e-7,
        ] {
            let mut out = String::new();
            write_f64(&mut out, v);
            let want = format!("{v}");
            // The crate wrote -0 as "-0"; whole numbers as integers.
            assert_eq!(out, want, "{v}");
        }
        for v in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = String::new();
            write_u64(&mut out, v);
            assert_eq!(out, v.to_string());
        }
        for (le, b) in LE.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*le, format!("{b}"));
        }
    }
}
