//! The committed interface XML (`dbus/io.secureev.Ota1.xml`) must match what the
//! service really exposes. Run with `SECUREEV_BLESS_XML=1` to rewrite the file from
//! live introspection after an intended change (then review the diff).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use secureev_dbus::{BUS_NAME, INTERFACE, OBJECT_PATH};
use zbus_xml::{Annotation, Arg, Node};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/io.secureev.Ota1.xml");

// Doc strings are for people; they may be worded differently without changing the API.
fn annotations(list: &[Annotation]) -> String {
    let mut v: Vec<String> = list
        .iter()
        .filter(|a| a.name() != "org.gtk.GDBus.DocString")
        .map(|a| format!("@{}={}", a.name(), a.value()))
        .collect();
    v.sort();
    v.join(" ")
}

fn args(list: &[Arg]) -> String {
    list.iter()
        .map(|a| {
            format!(
                "{}:{}:{:?} {}",
                a.name().unwrap_or("-"),
                a.ty().inner(),
                a.direction(),
                annotations(a.annotations())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line per member, sorted: the API as a comparable list.
fn normalise(xml: &str) -> Vec<String> {
    let node = Node::from_reader(xml.as_bytes()).expect("parse introspection XML");
    let iface = node
        .interfaces()
        .iter()
        .find(|i| i.name() == INTERFACE)
        .expect("interface io.secureev.Ota1 present");
    let mut out = vec![format!("interface {}", annotations(iface.annotations()))];
    for m in iface.methods() {
        out.push(format!(
            "method {}({}) {}",
            m.name(),
            args(m.args()),
            annotations(m.annotations())
        ));
    }
    for s in iface.signals() {
        out.push(format!(
            "signal {}({}) {}",
            s.name(),
            args(s.args()),
            annotations(s.annotations())
        ));
    }
    for p in iface.properties() {
        out.push(format!(
            "property {} {} {:?} {}",
            p.name(),
            p.ty().inner(),
            p.access(),
            annotations(p.annotations())
        ));
    }
    out.sort();
    out
}

/// Cuts our interface out of the live XML and wraps it as the committed file.
fn committed_form(live: &str) -> String {
    let start = live
        .find(&format!("<interface name=\"{INTERFACE}\">"))
        .unwrap();
    let end = start + live[start..].find("</interface>").unwrap() + "</interface>".len();
    // Re-indent from the live nesting level to one level below <node>.
    let line_start = live[..start].rfind('\n').map_or(0, |i| i + 1);
    let indent = start - line_start;
    let body: String = live[start..end]
        .lines()
        .map(|l| {
            let trimmed = l
                .get(indent.min(l.len() - l.trim_start().len())..)
                .unwrap_or(l);
            format!("  {trimmed}\n")
        })
        .collect();
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n\
         <!-- io.secureev.Ota1: SecureEV-OTA vehicle update service.\n     \
         Bus name {BUS_NAME}, object {OBJECT_PATH}. Documented in docs/dbus-api.md.\n     \
         Generated from live introspection (SECUREEV_BLESS_XML=1 and the introspection\n     \
         test of secureev-dbus) and checked against it by that test. -->\n\
         <node>\n{body}</node>\n"
    )
}

#[tokio::test]
async fn live_introspection_matches_committed_xml() {
    let h = common::Harness::start(Duration::from_millis(50)).await;
    let proxy = zbus::fdo::IntrospectableProxy::builder(&h.client)
        .destination(BUS_NAME)
        .unwrap()
        .path(OBJECT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let live = proxy.introspect().await.unwrap();

    if std::env::var_os("SECUREEV_BLESS_XML").is_some() {
        std::fs::write(PathBuf::from(COMMITTED), committed_form(&live)).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).expect("read committed XML");
    let (want, got) = (normalise(&committed), normalise(&live));
    assert!(
        want == got,
        "live introspection differs from {COMMITTED}\n--- committed\n{}\n--- live\n{}\n\
         (if the change is intended: SECUREEV_BLESS_XML=1 and review the diff)",
        want.join("\n"),
        got.join("\n")
    );
}

/// XML forbids `--` inside a comment; xmllint and gdbus-codegen refused the
/// committed file when its header said `--test` (regression).
#[test]
fn committed_xml_has_no_double_hyphen_in_comments() {
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    let mut rest = committed.as_str();
    while let Some(start) = rest.find("<!--") {
        let body = &rest[start + 4..];
        let end = body.find("-->").expect("unterminated comment");
        assert!(
            !body[..end].contains("--"),
            "'--' inside a comment of {COMMITTED}: {:?}",
            &body[..end]
        );
        rest = &body[end + 3..];
    }
}

#[test]
fn normalisation_ignores_comments_and_docstrings() {
    let a = r#"<node><interface name="io.secureev.Ota1"><!-- x -->
        <method name="Cancel"><annotation name="org.gtk.GDBus.DocString" value="d"/></method>
        </interface></node>"#;
    let b =
        r#"<node><interface name="io.secureev.Ota1"><method name="Cancel"/></interface></node>"#;
    assert_eq!(normalise(a), normalise(b));
    let c = r#"<node><interface name="io.secureev.Ota1"><method name="Cancel"><arg name="x" type="u" direction="in"/></method></interface></node>"#;
    assert_ne!(normalise(b), normalise(c));
}
