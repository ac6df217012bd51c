//! The trace a request belongs to, from the headers a tracer set: W3C `traceparent`
//! (`00-<32 hex>-<16 hex>-<2 hex>`), else B3 `x-b3-traceid` (16 or 32 hex). Only a well-formed,
//! non-zero hex id is taken, lower-cased: it goes into log lines, so nothing else a client sends
//! in those headers does.

/// The trace id of a request with these header values, if one is well-formed.
pub fn trace_id(traceparent: Option<&str>, b3_trace_id: Option<&str>) -> Option<String> {
    let hex = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && s.bytes().any(|b| b != b'0')
    };
    let from_parent = traceparent
        .and_then(|parent| parent.split('-').nth(1))
        .filter(|id| hex(id, &[32]));
    from_parent
        .or(b3_trace_id.filter(|id| hex(id, &[16, 32])))
        .map(str::to_ascii_lowercase)
}

#[cfg(test)]
mod tests {
    use super::trace_id;

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
