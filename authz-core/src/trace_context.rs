//! The trace a request belongs to, from the headers a tracer set: W3C `traceparent`
//! (`00-<32 hex>-<16 hex>-<2 hex>`), else B3 `x-b3-traceid` (16 or 32 hex). Only a well-formed,
//! non-zero hex id is taken, lower-cased: it goes into log lines, so nothing else a client sends
//! in those headers does.

/// The trace context a request carries: the trace, the caller's span, whether it is sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// 32 hex digits (a 16-digit B3 id is left-padded with zeros, as W3C asks).
    pub trace_id: String,
    /// The caller's span (16 hex digits), when it sent one.
    pub span_id: Option<String>,
    pub sampled: bool,
}

fn is_hex(s: &str, lengths: &[usize]) -> bool {
    lengths.contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b != b'0')
}

/// The trace context of a request with W3C `traceparent`, else B3 (`x-b3-traceid`,
/// `x-b3-spanid`, `x-b3-sampled`: absent or `1`/`d` is sampled), if well-formed.
pub fn parent(
    traceparent: Option<&str>,
    b3_trace_id: Option<&str>,
    b3_span_id: Option<&str>,
    b3_sampled: Option<&str>,
) -> Option<Parent> {
    if let Some(header) = traceparent {
        let mut parts = header.split('-');
        if let (Some(_), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let flags = u8::from_str_radix(flags, 16)
                .ok()
                .filter(|_| flags.len() == 2);
            if let (true, true, Some(flags)) = (is_hex(trace, &[32]), is_hex(span, &[16]), flags) {
                return Some(Parent {
                    trace_id: trace.to_ascii_lowercase(),
                    span_id: Some(span.to_ascii_lowercase()),
                    sampled: flags & 1 == 1,
                });
            }
        }
    }
    let trace = b3_trace_id.filter(|id| is_hex(id, &[16, 32]))?;
    Some(Parent {
        trace_id: format!("{:0>32}", trace.to_ascii_lowercase()),
        span_id: b3_span_id
            .filter(|id| is_hex(id, &[16]))
            .map(str::to_ascii_lowercase),
        sampled: !matches!(b3_sampled, Some("0")),
    })
}

/// The trace id of a request with these header values, if one is well-formed.
pub fn trace_id(traceparent: Option<&str>, b3_trace_id: Option<&str>) -> Option<String> {
    let hex = is_hex;
    let from_parent = traceparent
        .and_then(|parent| parent.split('-').nth(1))
        .filter(|id| hex(id, &[32]));
    from_parent
        .or(b3_trace_id.filter(|id| hex(id, &[16, 32])))
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::{parent, trace_id, Parent};

    #[test]
    fn a_parent_is_w3c_first_then_b3_and_carries_its_sampling() {
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        assert_eq!(
            parent(Some(w3c), None, None, None),
            Some(Parent {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: Some("00f067aa0ba902b7".into()),
                sampled: true
            })
        );
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            parent(Some(unsampled), None, None, None).map(|p| p.sampled),
            Some(false)
        );
        let b3 = parent(
            Some("garbage"),
            Some("463ac35c9f6413ad"),
            Some("a2fb4a1d1a96d312"),
            None,
        );
        assert_eq!(
            b3,
            Some(Parent {
                trace_id: "0000000000000000463ac35c9f6413ad".into(),
                span_id: Some("a2fb4a1d1a96d312".into()),
                sampled: true
            })
        );
        assert_eq!(
            parent(None, Some("463ac35c9f6413ad"), None, Some("0")).map(|p| p.sampled),
            Some(false)
        );
        assert_eq!(parent(None, None, None, None), None);
        assert_eq!(
            parent(
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01"),
                None,
                None,
                None
            ),
            None
        );
    }

    #[test]
    fn only_well_formed_ids_are_taken_w3c_first() {
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(Some(w3c), Some("463ac35c9f6413ad")).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(Some("00-nothex-x-01"), Some("463ac35c9f6413ad")).as_deref(),
            Some("463ac35c9f6413ad")
        );
        assert_eq!(
            trace_id(Some(&format!("00-{}-a-01", "0".repeat(32))), None),
            None
        );
        assert_eq!(trace_id(None, Some("463ac35c9f6413a")), None, "15 digits");
        assert_eq!(trace_id(None, Some("x=1\nfake log")), None);
        assert_eq!(trace_id(None, None), None);
    }
}
