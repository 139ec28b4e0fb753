//! A small namespace-resolved element tree with line numbers, built with quick-xml's
//! `NsReader`. The typed parser works on this tree so it can look at children in any order.

use crate::error::JsdlError;
use crate::model::{AnyAttribute, AnyElement, QName};
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

#[derive(Debug)]
pub(crate) struct Node {
    pub name: QName,
    pub attrs: Vec<AnyAttribute>,
    pub children: Vec<Node>,
    /// All direct text, untrimmed (entities resolved, CDATA included).
    pub text: String,
    pub line: usize,
}

impl Node {
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.name.namespace.as_deref() == Some(ns) && self.name.local == local
    }

    pub fn qname(&self) -> String {
        self.name.to_string()
    }

    /// Unqualified attribute (JSDL's own attributes are never namespaced).
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.namespace.is_none() && a.name.local == local)
            .map(|a| a.value.as_str())
    }

    /// Converts to the public, line-free representation of an extension element.
    pub fn to_any(&self) -> AnyElement {
        let text = self.text.trim();
        AnyElement {
            name: self.name.clone(),
            attributes: self.attrs.clone(),
            text: (!text.is_empty()).then(|| text.to_owned()),
            children: self.children.iter().map(Node::to_any).collect(),
        }
    }
}

/// Maps byte offsets to 1-based line numbers.
struct Lines(Vec<usize>);

impl Lines {
    fn new(s: &str) -> Self {
        Lines(s.match_indices('\n').map(|(i, _)| i).collect())
    }

    fn line(&self, pos: u64) -> usize {
        let pos = usize::try_from(pos).unwrap_or(usize::MAX);
        self.0.partition_point(|&nl| nl < pos) + 1
    }
}

fn resolved(r: &ResolveResult<'_>) -> Result<Option<String>, String> {
    match r {
        ResolveResult::Bound(ns) => Ok(Some(String::from_utf8_lossy(ns.as_ref()).into_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(p) => Err(String::from_utf8_lossy(p).into_owned()),
    }
}

/// An XML `Name` (with the colon of a prefix), approximated: ASCII letters, digits and
/// `_ - . :`, not starting with a digit, `-` or `.`; non-ASCII letters are let through.
/// quick-xml takes whatever stands between `<` and a space, so `<m<` would be an element
/// that the writer could not write back.
fn check_name(name: &str, line: usize) -> Result<(), JsdlError> {
    let ok_char = |c: char| !c.is_ascii() || c.is_ascii_alphanumeric() || "_-.:".contains(c);
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| !c.is_ascii_digit() && c != '-' && c != '.')
        && name.chars().all(ok_char);
    if ok {
        Ok(())
    } else {
        Err(JsdlError::BadName {
            name: name.to_string(),
            line,
        })
    }
}

fn start_node(
    reader: &NsReader<&[u8]>,
    ns: Result<Option<String>, String>,
    e: &BytesStart<'_>,
    line: usize,
) -> Result<Node, JsdlError> {
    let raw_name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
    check_name(&raw_name, line)?;
    let namespace = ns.map_err(|prefix| JsdlError::UnboundPrefix {
        element: raw_name.clone(),
        line,
        prefix,
    })?;
    // Namespaces in XML: no element is in the namespace of declarations (`<xmlns:a>`).
    if namespace.as_deref() == Some("http://www.w3.org/2000/xmlns/") {
        return Err(JsdlError::BadName {
            name: raw_name,
            line,
        });
    }
    let mut attrs = Vec::new();
    for attr in e.attributes() {
        let attr = attr.map_err(|err| JsdlError::Xml {
            line,
            source: err.into(),
        })?;
        // Declarations too: `xmlns:a`b` would bind a prefix no writer can declare again.
        check_name(&String::from_utf8_lossy(attr.key.as_ref()), line)?;
        if attr.key.as_namespace_binding().is_some() {
            continue;
        }
        let (ans, alocal) = reader.resolve_attribute(attr.key);
        let ans = resolved(&ans).map_err(|prefix| JsdlError::UnboundPrefix {
            element: raw_name.clone(),
            line,
            prefix,
        })?;
        if ans.as_deref() == Some("http://www.w3.org/2000/xmlns/") {
            continue; // a declaration in another spelling, not an attribute
        }
        let value = attr
            .unescape_value()
            .map_err(|source| JsdlError::Xml { line, source })?;
        attrs.push(AnyAttribute {
            name: QName {
                namespace: ans,
                local: String::from_utf8_lossy(alocal.as_ref()).into_owned(),
            },
            value: value.into_owned(),
        });
    }
    Ok(Node {
        name: QName { namespace, local },
        attrs,
        children: Vec::new(),
        text: String::new(),
        line,
    })
}

/// Refuses `node` when it would sit below `open` open elements and so deeper than
/// MAX_DEPTH: every later pass (typed parsing, to_any, Drop) recurses over the tree.
fn check_depth(node: &Node, open: usize, line: usize) -> Result<(), JsdlError> {
    if open >= crate::MAX_DEPTH {
        return Err(JsdlError::TooDeep {
            element: node.qname(),
            line,
            depth: open + 1,
            max: crate::MAX_DEPTH,
        });
    }
    Ok(())
}

/// Parses a whole document into its root element.
pub(crate) fn parse_tree(xml: &str) -> Result<Node, JsdlError> {
    let lines = Lines::new(xml);
    let mut reader = NsReader::from_str(xml);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        // Text is not trimmed, so the position before an event is where its `<` is.
        let pos = reader.buffer_position();
        let line = lines.line(pos);
        let (ns, event) = match reader.read_resolved_event() {
            // Owned, so the reader can be borrowed again to resolve attributes.
            Ok((ns, event)) => (resolved(&ns), event),
            Err(source) => {
                return Err(JsdlError::Xml {
                    line: lines.line(reader.error_position()),
                    source,
                })
            }
        };
        match event {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let node = start_node(&reader, ns, &e, line)?;
                return Err(JsdlError::SecondRoot {
                    element: node.qname(),
                    line,
                });
            }
            Event::Start(e) => {
                let node = start_node(&reader, ns, &e, line)?;
                check_depth(&node, stack.len(), line)?;
                stack.push(node);
            }
            Event::Empty(e) => {
                let node = start_node(&reader, ns, &e, line)?;
                check_depth(&node, stack.len(), line)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                // quick-xml checks that end names match, so this pops the right element.
                if let Some(node) = stack.pop() {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let text = t.unescape().map_err(|source| JsdlError::Xml {
                        line: lines.line(pos),
                        source,
                    })?;
                    top.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c.into_inner()));
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if let Some(open) = stack.last() {
        return Err(JsdlError::Unclosed {
            element: open.qname(),
            line: open.line,
        });
    }
    root.ok_or(JsdlError::NoRoot {
        line: lines.line(xml.len() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the `jsdl` fuzz target: `<m<\r/>` and `<\r/>` were elements, and the writer
    // wrote them back as `<m</>` and `</>`, which do not parse.
    #[test]
    fn element_names_that_are_not_xml_names_are_refused() {
        for (xml, bad) in [("<a>x<m<\r/></a>", "m<"), ("<a>\n<\r/></a>", "")] {
            match parse_tree(xml) {
                Err(JsdlError::BadName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{xml:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_tree("<a><b 1x=\"v\"/></a>"),
            Err(JsdlError::BadName { line: 1, .. })
        ));
        let ok =
            parse_tree("<p:a xmlns:p=\"urn:x\" p:x-1=\"1\"><\u{e9}t\u{e9}/><_b.c/></p:a>").unwrap();
        assert_eq!(ok.children.len(), 2);
    }
}
