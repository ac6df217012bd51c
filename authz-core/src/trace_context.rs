//! The trace a request or a call belongs to, from the headers a tracer set: W3C `traceparent`
//! (`<version>-<32 hex>-<16 hex>-<2 hex flags>`), else B3's multi-header form (`x-b3-traceid`
//! of 16 or 32 hex, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`). Only well-formed, non-zero hex
//! ids are taken, lower-cased, a 16-digit B3 trace id left-padded to 32 (as W3C asks): they go
//! into log lines and spans, so nothing else a client sends in those headers does.
//!
//! These headers are whatever the sender put there: on a request they are the client's (or an
//! upstream proxy's); only on Envoy's own ext_authz call are they Envoy's. Who may be trusted to
//! set the parent and the sampling is the caller's decision (see the server's `otlp`).

/// Whether the trace's sender asked for it to be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampled {
    Yes,
    No,
    /// B3 without `x-b3-sampled` (or `x-b3-flags`): the receiver decides.
    Undecided,
}

/// The trace context a request carries: the trace, the sender's span, its sampling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// 32 hex digits.
    pub trace_id: String,
    /// The sender's span (16 hex digits), when it sent one.
    pub span_id: Option<String>,
    pub sampled: Sampled,
}

fn is_hex(s: &str, lengths: &[usize]) -> bool {
    lengths.contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b != b'0')
}

/// W3C trace context: version (2 hex, not `ff`; version `00` has exactly four fields), trace
/// id, parent id, flags (2 hex; bit 0: sampled).
fn w3c(header: &str) -> Option<Parent> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let (version, trace, span, flags) = match parts.as_slice() {
        [version, trace, span, flags, rest @ ..] if rest.is_empty() || *version != "00" => {
            (*version, *trace, *span, *flags)
        }
        _ => return None,
    };
    let two_hex = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !two_hex(version) || version.eq_ignore_ascii_case("ff") || !two_hex(flags) {
        return None;
    }
    if !(is_hex(trace, &[32]) && is_hex(span, &[16])) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some(Parent {
        trace_id: trace.to_ascii_lowercase(),
        span_id: Some(span.to_ascii_lowercase()),
        sampled: if sampled { Sampled::Yes } else { Sampled::No },
    })
}

/// B3's headers, as they came.
#[derive(Debug, Clone, Copy, Default)]
pub struct B3<'a> {
    pub trace_id: Option<&'a str>,
    pub span_id: Option<&'a str>,
    pub sampled: Option<&'a str>,
    pub flags: Option<&'a str>,
}

/// The trace context of `traceparent`, else of `b3`, if well-formed.
pub fn parent(traceparent: Option<&str>, b3: B3<'_>) -> Option<Parent> {
    if let Some(parent) = traceparent.and_then(w3c) {
        return Some(parent);
    }
    let trace = b3.trace_id.filter(|id| is_hex(id, &[16, 32]))?;
    let sampled = match (b3.flags, b3.sampled) {
        (Some("1"), _) => Sampled::Yes,
        (_, Some("1" | "true")) => Sampled::Yes,
        (_, Some("0" | "false")) => Sampled::No,
        _ => Sampled::Undecided,
    };
    Some(Parent {
        trace_id: format!("{:0>32}", trace.to_ascii_lowercase()),
        span_id: b3
            .span_id
            .filter(|id| is_hex(id, &[16]))
            .map(str::to_ascii_lowercase),
        sampled,
    })
}

/// The trace id of a request with these header values, if one is well-formed (what
/// [`parent`] would name).
pub fn trace_id(traceparent: Option<&str>, b3_trace_id: Option<&str>) -> Option<String> {
    let b3 = B3 {
        trace_id: b3_trace_id,
        ..B3::default()
    };
    parent(traceparent, b3).map(|p| p.trace_id)
}

#[cfg(test)]
mod tests {
    use super::{parent, trace_id, Parent, Sampled, B3};

    fn b3<'a>(trace: &'a str, sampled: Option<&'a str>, flags: Option<&'a str>) -> B3<'a> {
        B3 {
            trace_id: Some(trace),
            span_id: Some("a2fb4a1d1a96d312"),
            sampled,
            flags,
        }
    }

    #[test]
    fn a_parent_is_w3c_first_then_b3_and_carries_its_sampling() {
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        assert_eq!(
            parent(Some(w3c), B3::default()),
            Some(Parent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: Some("00f067aa0ba902b7".into()),
                sampled: Sampled::Yes
            })
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            parent(Some(unsampled), B3::default()).map(|p| p.sampled),
            Some(Sampled::No)
        );
        // A later version may add fields; version 00 may not; ff is invalid.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parent(Some(later), B3::default()).is_some());
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01",
        ] {
            assert_eq!(parent(Some(bad), B3::default()), None, "{bad}");
        }
        let from_b3 = parent(Some("garbage"), b3("463ac35c9f6413ad", Some("1"), None));
        assert_eq!(
            from_b3,
            Some(Parent {
                trace_id: "0000000000000000463ac35c9f6413ad".into(),
                span_id: Some("a2fb4a1d1a96d312".into()),
                sampled: Sampled::Yes
            })
        );
        let sampling = |sampled, flags| {
            parent(None, b3("463ac35c9f6413ad", sampled, flags)).map(|p| p.sampled)
        };
        assert_eq!(sampling(Some("0"), None), Some(Sampled::No));
        assert_eq!(sampling(Some("false"), None), Some(Sampled::No));
        assert_eq!(sampling(None, None), Some(Sampled::Undecided));
        assert_eq!(sampling(Some("garbage"), None), Some(Sampled::Undecided));
        assert_eq!(sampling(Some("0"), Some("1")), Some(Sampled::Yes), "debug");
        assert_eq!(parent(None, B3::default()), None);
    }

    #[test]
    fn only_well_formed_ids_are_taken_w3c_first_and_logged_as_the_spans_name_them() {
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(Some(w3c), Some("463ac35c9f6413ad")).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(Some("00-nothex-x-01"), Some("463ac35c9f6413ad")).as_deref(),
            Some("0000000000000000463ac35c9f6413ad")
        );
        let zero = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        assert_eq!(trace_id(Some(&zero), None), None);
        assert_eq!(trace_id(None, Some("463ac35c9f6413a")), None, "15 digits");
        assert_eq!(trace_id(None, Some("x=1\nfake log")), None);
        assert_eq!(trace_id(None, None), None);
    }
}
