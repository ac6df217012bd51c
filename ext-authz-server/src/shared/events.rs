//! The shared tier's wire format: the Lua scripts that publish a change under the next shared
//! sequence number, and the stream entries and snapshot values they write, decoded back into
//! [`Change`]s.

use crate::versions::{Change, SwitchChange};
use authz_core::token_hash::{digest_hex, parse_digest_hex};
use redis::streams::StreamId;
use redis::Value as RedisValue;

/// Publishes one change. KEYS: seq, events, subjects, policy, switches. ARGV: kind, value,
/// at_ms, stream max length, origin, the switch's slot (switches only). Returns {seq, n} (n:
/// the subject's epoch or policy version). A switch change is kept in the switches hash under
/// its slot as `<seq> <at_ms> <change>` unless the hash holds a later one (by `at_ms`): the
/// last change of each switch, read back on (re)connect.
pub(super) const PUBLISH_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local n = 0
local at = tonumber(ARGV[3])
if ARGV[1] == 'subject' then
  local prev = redis.call('HGET', KEYS[3], ARGV[2])
  local epoch, prev_at = 0, 0
  if prev then
    local e, a = string.match(prev, '^(%d+):(%d+):')
    epoch, prev_at = tonumber(e), tonumber(a)
  end
  n = epoch + 1
  if prev_at > at then at = prev_at end
  redis.call('HSET', KEYS[3], ARGV[2], string.format('%d:%d:%d', n, at, seq))
elseif ARGV[1] == 'policy' then
  n = redis.call('HINCRBY', KEYS[4], 'version', 1)
  redis.call('HSET', KEYS[4], 'seq', seq)
elseif ARGV[1] == 'switch' then
  local prev = redis.call('HGET', KEYS[5], ARGV[6])
  local prev_at, prev_change = -1, ''
  if prev then
    local a, c = string.match(prev, '^%d+ (%d+) (.*)$')
    prev_at, prev_change = tonumber(a or '-1'), c or ''
  end
  if at > prev_at or (at == prev_at and ARGV[2] > prev_change) then
    redis.call('HSET', KEYS[5], ARGV[6], string.format('%d %d ', seq, at) .. ARGV[2])
  end
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], string.format('%d-1', seq),
  'kind', ARGV[1], 'value', ARGV[2], 'at', string.format('%d', at), 'n', n, 'origin', ARGV[5])
return {seq, n}
"#;

/// Raises the sequence to at least ARGV[1]. KEYS: seq.
pub(super) const FLOOR_LUA: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return cur
"#;

/// Encodes a change as the stream's (kind, value, at_ms) fields.
pub(super) fn encode(change: &Change) -> (&'static str, String, u64) {
    match change {
        // For tokens and jtis, `at` carries the expiry (0: none).
        Change::RevokeToken(key, expiry) => ("token", digest_hex(key), expiry.unwrap_or(0)),
        Change::RevokeJti(jti, expiry) => ("jti", jti.clone(), expiry.unwrap_or(0)),
        // A Status List entry: `<index> <uri>` (a uri has no space).
        Change::RevokeStatus(entry, expiry) => (
            "status",
            format!("{} {}", entry.index, entry.uri),
            expiry.unwrap_or(0),
        ),
        Change::RevokeSubject {
            subject,
            revoked_at_ms,
            ..
        } => ("subject", subject.clone(), *revoked_at_ms),
        Change::BumpPolicy { .. } => ("policy", String::new(), 0),
        Change::Switch(switch) => ("switch", switch.to_json(), switch.at_ms),
    }
}

/// The change with the shared count `n` the publish script returned.
pub(super) fn with_shared_count(change: Change, n: u64) -> Change {
    match change {
        Change::RevokeSubject {
            subject,
            revoked_at_ms,
            ..
        } => Change::RevokeSubject {
            subject,
            revoked_at_ms,
            epoch: Some(n),
        },
        Change::BumpPolicy { .. } => Change::BumpPolicy { version: Some(n) },
        other => other,
    }
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        RedisValue::BulkString(b) => String::from_utf8(b.clone()).ok(),
        RedisValue::SimpleString(s) => Some(s.clone()),
        RedisValue::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Decodes one stream entry into its sequence number and change.
pub(super) fn decode(entry: &StreamId) -> Option<(u64, Change)> {
    let seq = entry.id.split('-').next()?.parse().ok()?;
    let value = field(entry, "value")?;
    let at: u64 = field(entry, "at")?.parse().ok()?;
    let n: u64 = field(entry, "n")?.parse().ok()?;
    let change = match field(entry, "kind")?.as_str() {
        "token" => Change::RevokeToken(parse_digest_hex(&value)?, (at > 0).then_some(at)),
        "jti" => Change::RevokeJti(value, (at > 0).then_some(at)),
        "status" => {
            let (index, uri) = value.split_once(' ')?;
            Change::RevokeStatus(
                authz_core::status_list::StatusRef {
                    uri: uri.to_owned(),
                    index: index.parse().ok()?,
                },
                (at > 0).then_some(at),
            )
        }
        "subject" => Change::RevokeSubject {
            subject: value,
            revoked_at_ms: at,
            epoch: Some(n),
        },
        "policy" => Change::BumpPolicy { version: Some(n) },
        "switch" => Change::Switch(SwitchChange::from_json(&value)?),
        _ => return None,
    };
    Some((seq, change))
}

/// A switch's snapshot value: `<seq> <at_ms> <change>` (or `<seq> <change>`, as the first
/// servers with switches wrote it).
pub(super) fn decode_switch(value: &str) -> Option<(u64, Change)> {
    let (seq, rest) = value.split_once(' ')?;
    let json = match rest.split_once(' ') {
        Some((_at_ms, json)) if !rest.starts_with('{') => json,
        _ => rest,
    };
    Some((
        seq.parse().ok()?,
        Change::Switch(SwitchChange::from_json(json)?),
    ))
}

/// A subject's snapshot value: `epoch:revoked_at_ms:seq`.
pub(super) fn decode_subject(subject: &str, value: &str) -> Option<(u64, Change)> {
    let mut parts = value.split(':').map(str::parse::<u64>);
    let (Some(Ok(epoch)), Some(Ok(at)), Some(Ok(seq))) = (parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some((
        seq,
        Change::RevokeSubject {
            subject: subject.to_owned(),
            revoked_at_ms: at,
            epoch: Some(epoch),
        },
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::shared) fn entry(id: &str, fields: &[(&str, &str)]) -> StreamId {
        StreamId {
            id: id.into(),
            map: fields
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        RedisValue::BulkString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn stream_entries_decode_to_changes() {
        let hash = "cd".repeat(32);
        let e = entry(
            "41-1",
            &[("kind", "token"), ("value", &hash), ("at", "0"), ("n", "0")],
        );
        assert_eq!(
            decode(&e),
            Some((41, Change::RevokeToken([0xcd; 32], None)))
        );
        let s = entry(
            "42-1",
            &[
                ("kind", "subject"),
                ("value", "alice"),
                ("at", "1700"),
                ("n", "3"),
            ],
        );
        assert_eq!(
            decode(&s),
            Some((
                42,
                Change::RevokeSubject {
                    subject: "alice".into(),
                    revoked_at_ms: 1700,
                    epoch: Some(3)
                }
            ))
        );
        let p = entry(
            "43-1",
            &[("kind", "policy"), ("value", ""), ("at", "0"), ("n", "7")],
        );
        assert_eq!(
            decode(&p),
            Some((43, Change::BumpPolicy { version: Some(7) }))
        );
        assert_eq!(
            decode(&entry(
                "44-1",
                &[("kind", "token"), ("value", "zz"), ("at", "0"), ("n", "0")]
            )),
            None
        );
        let switch = SwitchChange {
            setting: authz_core::switches::Setting::JwksRefetch,
            at_ms: 1_700,
            by: "oncall".into(),
        };
        let w = entry(
            "45-1",
            &[
                ("kind", "switch"),
                ("value", &switch.to_json()),
                ("at", "1700"),
                ("n", "0"),
            ],
        );
        assert_eq!(decode(&w), Some((45, Change::Switch(switch.clone()))));
        assert_eq!(
            decode_switch(&format!("46 1700 {}", switch.to_json())),
            Some((46, Change::Switch(switch.clone())))
        );
        assert_eq!(
            decode_switch(&format!("46 {}", switch.to_json())).map(|(seq, _)| seq),
            Some(46),
            "the first format"
        );
        assert_eq!(decode_switch("46 1700 {}"), None);
        assert_eq!(decode_switch("46 {}"), None);
        assert_eq!(decode_subject("bob", "2:900:17").map(|(s, _)| s), Some(17));
        assert_eq!(decode_subject("bob", "2:900"), None);
    }
}
