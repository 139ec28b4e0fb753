//! IGTF namespace policies: which subject DNs each CA may sign.
//!
//! Two formats sit beside a CA's `<hash>.0` in an IGTF CA directory:
//!
//! - `<hash>.namespaces` (OGF GFD.189): `TO Issuer "<dn>" PERMIT Subject "<regex>"` (or `DENY`,
//!   or `TO Issuer SELF` for the CA the file is named after), `\` continues a line, `#` starts
//!   a comment. The regular expression must match the whole subject.
//! - `<hash>.signing_policy` (Globus EACL): `access_id_CA X509 '<dn>'`, `pos_rights globus
//!   CA:sign`, `cond_subjects globus '"<glob>" "<glob>"'` where `*` matches anything.
//!
//! As in Globus and canl, the namespaces file is preferred for an issuer when both name it.

use std::collections::BTreeMap;

use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

/// One condition on subjects issued by one CA.
#[derive(Debug, Clone)]
struct Rule {
    permit: bool,
    pattern: Regex,
    source: String,
}

/// Rules per issuer DN (one-line form), from both formats.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// From `.namespaces` files.
    gfd: BTreeMap<String, Vec<Rule>>,
    /// From `.signing_policy` files.
    eacl: BTreeMap<String, Vec<Rule>>,
}

/// Why a subject is outside its issuer's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A PERMIT rule matched and no DENY did.
    Permitted,
    /// The issuer has rules and the subject is denied or matches none of them.
    Outside { rules: String },
    /// No file names this issuer.
    NoPolicy,
}

fn policy_error(file: &str, message: String) -> PolicyError {
    PolicyError {
        file: file.to_string(),
        message,
    }
}

fn anchored(re: &str, file: &str) -> Result<Regex, PolicyError> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| PolicyError {
        file: file.to_string(),
        message: format!("bad subject pattern `{re}`: {e}"),
    })
}

fn glob(g: &str, file: &str) -> Result<Regex, PolicyError> {
    let mut re = String::new();
    for ch in g.chars() {
        match ch {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    anchored(&re, file)
}

/// Split into words and quoted strings (`"…"` or `'…'`), after removing comments.
fn tokens(text: &str, file: &str) -> Result<Vec<(String, bool)>, PolicyError> {
    let mut out = Vec::new();
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    for line in joined.lines() {
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c == '#' {
                break;
            } else if c == '"' || c == '\'' {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(x) => s.push(x),
                        None => {
                            return Err(PolicyError {
                                file: file.to_string(),
                                message: format!("unterminated quote in `{line}`"),
                            })
                        }
                    }
                }
                out.push((s, true));
            } else {
                let mut s = String::new();
                while let Some(&x) = chars.peek() {
                    if x.is_whitespace() || x == '"' || x == '\'' {
                        break;
                    }
                    s.push(x);
                    chars.next();
                }
                out.push((s, false));
            }
        }
    }
    Ok(out)
}

impl Namespaces {
    /// Read a `.namespaces` file; `self_dn` is the subject of the CA it is named after.
    pub fn add_namespaces(
        &mut self,
        text: &str,
        file: &str,
        self_dn: Option<&str>,
    ) -> Result<(), PolicyError> {
        let bad = |message: String| policy_error(file, message);
        let toks = tokens(text, file)?;
        let mut i = 0;
        let mut issuer: Option<String> = None;
        while i < toks.len() {
            let (w, quoted) = &toks[i];
            let kw = if *quoted {
                String::new()
            } else {
                w.to_ascii_uppercase()
            };
            match kw.as_str() {
                "TO" => {
                    let is_issuer = toks
                        .get(i + 1)
                        .is_some_and(|t| t.0.eq_ignore_ascii_case("issuer"));
                    let Some((dn, q)) = toks.get(i + 2).filter(|_| is_issuer) else {
                        return Err(bad("`TO` must be followed by `Issuer \"<dn>\"`".into()));
                    };
                    issuer = Some(if !q && dn.eq_ignore_ascii_case("self") {
                        self_dn
                            .ok_or_else(|| {
                                bad("`TO Issuer SELF` in a file no CA is named after".into())
                            })?
                            .to_string()
                    } else {
                        dn.clone()
                    });
                    i += 3;
                }
                "PERMIT" | "DENY" => {
                    let Some(iss) = &issuer else {
                        return Err(bad(format!("`{w}` before any `TO Issuer`")));
                    };
                    let is_subject = toks
                        .get(i + 1)
                        .is_some_and(|t| t.0.eq_ignore_ascii_case("subject"));
                    let Some((re, true)) = toks.get(i + 2).filter(|_| is_subject) else {
                        return Err(bad(format!(
                            "`{w}` must be followed by `Subject \"<regex>\"`"
                        )));
                    };
                    self.gfd.entry(iss.clone()).or_default().push(Rule {
                        permit: kw == "PERMIT",
                        pattern: anchored(re, file)?,
                        source: format!("{w} Subject \"{re}\" ({file})"),
                    });
                    i += 3;
                }
                _ => return Err(bad(format!("unexpected `{w}`"))),
            }
        }
        Ok(())
    }

    /// Read a `.signing_policy` file (EACL).
    pub fn add_signing_policy(&mut self, text: &str, file: &str) -> Result<(), PolicyError> {
        let bad = |message: String| policy_error(file, message);
        let toks = tokens(text, file)?;
        let mut i = 0;
        let mut issuer: Option<String> = None;
        let mut may_sign = false;
        while i < toks.len() {
            let w = toks[i].0.to_ascii_lowercase();
            let arg = |n: usize| toks.get(i + n).map(|t| t.0.as_str());
            match w.as_str() {
                "access_id_ca" => {
                    if !arg(1).is_some_and(|a| a.eq_ignore_ascii_case("x509")) {
                        return Err(bad("`access_id_CA` must be `X509 '<dn>'`".into()));
                    }
                    let dn = arg(2).ok_or_else(|| bad("`access_id_CA` without a DN".into()))?;
                    issuer = Some(dn.to_string());
                    may_sign = false;
                    i += 3;
                }
                "pos_rights" => {
                    may_sign = arg(2).is_some_and(|r| r.eq_ignore_ascii_case("ca:sign"));
                    i += 3;
                }
                "neg_rights" => i += 3,
                "cond_subjects" => {
                    let Some(iss) = &issuer else {
                        return Err(bad("`cond_subjects` before `access_id_CA`".into()));
                    };
                    let list =
                        arg(2).ok_or_else(|| bad("`cond_subjects` without subjects".into()))?;
                    // Without `CA:sign` the CA signs nothing: an entry with no rules that
                    // permits.
                    let rules = self.eacl.entry(iss.clone()).or_default();
                    if may_sign {
                        for (g, _) in tokens(list, file)? {
                            rules.push(Rule {
                                permit: true,
                                pattern: glob(&g, file)?,
                                source: format!("cond_subjects \"{g}\" ({file})"),
                            });
                        }
                    }
                    i += 3;
                }
                _ => return Err(bad(format!("unexpected `{}`", toks[i].0))),
            }
        }
        Ok(())
    }

    /// Whether any policy names `issuer`.
    pub fn has_policy(&self, issuer: &str) -> bool {
        self.gfd.contains_key(issuer) || self.eacl.contains_key(issuer)
    }

    /// Whether any file was read at all.
    pub fn is_empty(&self) -> bool {
        self.gfd.is_empty() && self.eacl.is_empty()
    }

    /// Judge `subject` as issued by `issuer` (both one-line DNs).
    pub fn check(&self, issuer: &str, subject: &str) -> Verdict {
        let Some(rules) = self.gfd.get(issuer).or_else(|| self.eacl.get(issuer)) else {
            return Verdict::NoPolicy;
        };
        let mut permitted = false;
        for r in rules {
            if r.pattern.is_match(subject) {
                if !r.permit {
                    return Verdict::Outside {
                        rules: r.source.clone(),
                    };
                }
                permitted = true;
            }
        }
        if permitted {
            Verdict::Permitted
        } else {
            Verdict::Outside {
                rules: rules
                    .iter()
                    .map(|r| r.source.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        }
    }
}

/// `s` quoted for a `.namespaces` regular expression.
pub fn escape(s: &str) -> String {
    regex::escape(s)
}

/// The two files `vfarm ca init` writes for a CA whose subjects live under `prefix`
/// (the CA's DN without its CN): (`namespaces`, `signing_policy`).
pub fn files_for(ca_subject: &str, prefix: &str) -> (String, String) {
    let ns = format!(
        "# Namespace policy of {ca_subject} (OGF GFD.189)\n\
         #NAMESPACES-VERSION: 1.0\n\
         TO Issuer \"{ca_subject}\" \\\n  PERMIT Subject \"{}/.*\"\n",
        regex::escape(prefix)
    );
    let eacl = format!(
        "# EACL of {ca_subject}\n\
         access_id_CA   X509   '{ca_subject}'\n\
         pos_rights     globus CA:sign\n\
         cond_subjects  globus '\"{prefix}/*\"'\n"
    );
    (ns, eacl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/C=XX/O=A/CN=A CA";

    #[test]
    fn gfd189_permit_deny_self_and_continuations() {
        let mut n = Namespaces::default();
        n.add_namespaces(
            "# comment\nTO Issuer SELF \\\n  PERMIT Subject \"/C=XX/O=A/.*\"\n\
             TO Issuer \"/C=XX/O=A/CN=A CA\" DENY Subject \"/C=XX/O=A/CN=evil.*\"\n",
            "a.namespaces",
            Some(A),
        )
        .unwrap();
        assert_eq!(n.check(A, "/C=XX/O=A/CN=Alice"), Verdict::Permitted);
        assert!(matches!(
            n.check(A, "/C=XX/O=A/CN=evil one"),
            Verdict::Outside { .. }
        ));
        // Anchored: a prefix elsewhere in the DN does not match.
        assert!(matches!(
            n.check(A, "/C=YY/O=B/CN=x/C=XX/O=A/CN=y"),
            Verdict::Outside { .. }
        ));
        assert_eq!(
            n.check("/C=XX/O=B/CN=B", "/C=XX/O=A/CN=x"),
            Verdict::NoPolicy
        );
    }

    #[test]
    fn eacl_globs_and_rights() {
        let mut n = Namespaces::default();
        n.add_signing_policy(
            " access_id_CA  X509  '/C=XX/O=A/CN=A CA'\n pos_rights globus CA:sign\n \
             cond_subjects globus '\"/C=XX/O=A/*\" \"/O=A/*\"'\n",
            "a.signing_policy",
        )
        .unwrap();
        assert_eq!(n.check(A, "/O=A/CN=x"), Verdict::Permitted);
        assert!(matches!(
            n.check(A, "/C=XX/O=B/CN=x"),
            Verdict::Outside { .. }
        ));
        // The namespaces file wins for the same issuer.
        n.add_namespaces(
            "TO Issuer SELF PERMIT Subject \"/C=XX/O=B/.*\"",
            "a.namespaces",
            Some(A),
        )
        .unwrap();
        assert_eq!(n.check(A, "/C=XX/O=B/CN=x"), Verdict::Permitted);
        assert!(matches!(n.check(A, "/O=A/CN=x"), Verdict::Outside { .. }));
    }

    #[test]
    fn written_files_read_back_and_bad_files_are_named() {
        let (ns, eacl) = files_for(A, "/C=XX/O=A");
        for (text, is_ns) in [(ns, true), (eacl, false)] {
            let mut n = Namespaces::default();
            if is_ns {
                n.add_namespaces(&text, "f", None).unwrap();
            } else {
                n.add_signing_policy(&text, "f").unwrap();
            }
            assert_eq!(n.check(A, "/C=XX/O=A/CN=u"), Verdict::Permitted, "{text}");
            assert!(
                matches!(n.check(A, "/C=XX/O=AB/CN=u"), Verdict::Outside { .. }),
                "{text}"
            );
        }
        let e = Namespaces::default()
            .add_namespaces("PERMIT Subject \".*\"", "x.namespaces", None)
            .unwrap_err();
        assert!(
            e.to_string().contains("x.namespaces") && e.to_string().contains("before"),
            "{e}"
        );
        let e = Namespaces::default()
            .add_namespaces(
                "TO Issuer SELF PERMIT Subject \"(\"",
                "y.namespaces",
                Some(A),
            )
            .unwrap_err();
        assert!(e.to_string().contains("bad subject pattern"), "{e}");
    }
}
