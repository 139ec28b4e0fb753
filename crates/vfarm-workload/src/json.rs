//! The one JSON line a workload prints, written by hand (no serde: the binary stays small and
//! dependency-free).

use std::fmt;

/// One measured figure of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

/// A workload's result line: `{"workload", "params", "metrics", "checksum", "secs"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub workload: &'static str,
    /// Parameters as (name, already-encoded JSON value).
    pub params: Vec<(&'static str, String)>,
    pub metrics: Vec<Metric>,
    /// Hex digest of what was computed: equal parameters give equal checksums everywhere.
    pub checksum: String,
    /// Wall time of the measured part.
    pub secs: f64,
}

impl Line {
    pub fn new(workload: &'static str, checksum: u64, secs: f64) -> Line {
        Line {
            workload,
            params: Vec::new(),
            metrics: Vec::new(),
            checksum: format!("{checksum:016x}"),
            secs,
        }
    }

    pub fn param_num(mut self, name: &'static str, v: u64) -> Line {
        self.params.push((name, v.to_string()));
        self
    }

    pub fn param_str(mut self, name: &'static str, v: &str) -> Line {
        self.params.push((name, quote(v)));
        self
    }

    pub fn metric(mut self, name: &str, value: f64, unit: &'static str, higher: bool) -> Line {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit,
            higher_is_better: higher,
        });
        self
    }
}

/// A finite number as JSON (non-finite values have no JSON form: null).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{\"workload\":{},\"params\":{{", quote(self.workload))?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{v}", quote(k))?;
        }
        f.write_str("},\"metrics\":[")?;
        for (i, m) in self.metrics.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{{\"name\":{},\"value\":{},\"unit\":{},\"higher_is_better\":{}}}",
                quote(&m.name),
                num(m.value),
                quote(m.unit),
                m.higher_is_better
            )?;
        }
        write!(
            f,
            "],\"checksum\":{},\"secs\":{}}}",
            quote(&self.checksum),
            num(self.secs)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_json_with_escapes() {
        let l = Line::new("io", 0xabc, 1.5)
            .param_num("size", 4096)
            .param_str("dir", "/tmp/a\"b")
            .metric("io-write", 12.5, "MB/s", true);
        assert_eq!(
            l.to_string(),
            r#"{"workload":"io","params":{"size":4096,"dir":"/tmp/a\"b"},"metrics":[{"name":"io-write","value":12.5,"unit":"MB/s","higher_is_better":true}],"checksum":"0000000000000abc","secs":1.5}"#
        );
        assert_eq!(num(f64::INFINITY), "null");
    }
}
