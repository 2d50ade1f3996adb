//! A strict parser for the Prometheus text exposition format (version 0.0.4), so tests check
//! that `/metrics` is really well-formed rather than grepping for names.
//!
//! It checks: `# HELP` / `# TYPE` lines name valid metrics, a family's TYPE comes before its
//! samples and is declared once, sample names belong to a declared family (with the
//! `_bucket`/`_sum`/`_count` suffixes of histograms and summaries), label sets are well-formed
//! with escaped values, values are floats (`+Inf`, `-Inf`, `NaN` included), and histogram
//! buckets are cumulative and end in `+Inf` equal to `_count`.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (with any suffix).
    pub name: String,
    /// Labels in order of appearance.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }
}

/// A metric family: its TYPE, HELP and samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    /// counter, gauge, histogram, summary or untyped.
    pub kind: String,
    /// Help text.
    pub help: Option<String>,
    /// Samples, in order.
    pub samples: Vec<Sample>,
}

/// A parsed exposition: families by name.
pub type Exposition = BTreeMap<String, Family>;

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Label pairs in order of appearance.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    // s starts just after '{'; returns labels and the rest after '}'.
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' at {rest:?}"));
        }
    }
}

/// The family a sample name belongs to, given the declared families.
fn family_of<'a>(name: &'a str, families: &Exposition) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families.get(base).is_some_and(|f| f.kind == "histogram" || f.kind == "summary")
        {
            return Some(base);
        }
    }
    None
}

/// Parses and validates an exposition.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut families: Exposition = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next());
            match kw {
                "HELP" => {
                    if !valid_name(name) {
                        return Err(at("bad metric name in HELP".into()));
                    }
                    families.entry(name.to_string()).or_default().help = Some(tail.unwrap_or("").to_string());
                }
                "TYPE" => {
                    if !valid_name(name) {
                        return Err(at("bad metric name in TYPE".into()));
                    }
                    let kind = tail.unwrap_or("").trim();
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if !f.kind.is_empty() {
                        return Err(at("TYPE declared twice".into()));
                    }
                    if !f.samples.is_empty() {
                        return Err(at("TYPE after samples".into()));
                    }
                    f.kind = kind.to_string();
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("sample without value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(at("bad sample name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("missing value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|e| at(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text".into()));
        }
        let family = family_of(name, &families).ok_or_else(|| at(format!("sample {name} has no TYPE")))?;
        let family = family.to_string();
        let f = families.get_mut(&family).expect("found above");
        if f.kind == "counter" && (value < 0.0 || value.is_nan()) {
            return Err(at("negative counter".into()));
        }
        f.samples.push(Sample { name: name.to_string(), labels, value });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("{name} has HELP but no TYPE"));
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(families)
}

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    // Group by labels other than `le`.
    // Per series: (le, cumulative count) buckets and the _count.
    type Series = (Vec<(f64, f64)>, Option<f64>);
    let mut series: BTreeMap<Labels, Series> = BTreeMap::new();
    for s in &f.samples {
        let key: Labels = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let entry = series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = s.label("le").ok_or(format!("{name}: bucket without le"))?;
            entry.0.push((parse_value(le)?, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        }
    }
    for (labels, (buckets, count)) in series {
        let mut last = (f64::NEG_INFINITY, 0.0);
        for &(le, v) in &buckets {
            if le <= last.0 || v < last.1 {
                return Err(format!("{name}{labels:?}: buckets not cumulative"));
            }
            last = (le, v);
        }
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{labels:?}: no +Inf bucket"));
        }
        if count != Some(last.1) {
            return Err(format!("{name}{labels:?}: +Inf bucket {} != count {count:?}", last.1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_exposition() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\n\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n\
                    # TYPE g gauge\ng NaN 1700000000\n";
        let e = parse(text).unwrap();
        assert_eq!(e["a_total"].samples[0].label("y"), Some("q\"\n"));
        assert_eq!(e["h"].samples.len(), 4);
        assert!(e["g"].samples[0].value.is_nan());
    }

    #[test]
    fn rejects_malformed_expositions() {
        for bad in [
            "x 1\n",                                                                          // no TYPE
            "# TYPE x counter\nx -1\n",                                                       // negative counter
            "# TYPE x gauge\nx{a=1} 1\n",                                                     // unquoted label
            "# TYPE x gauge\nx one\n",                                                        // bad value
            "# TYPE x gauge\n# TYPE x gauge\n",                                               // declared twice
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n",                          // no +Inf
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n",                       // count mismatch
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
            "# TYPE x wat\n",                                                                 // unknown type
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
