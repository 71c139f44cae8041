//! Page sizes, the sort keys of the ranked and time-ordered tables, and the
//! opaque page tokens that point into them. A token names the kind of list it
//! belongs to, so a token from one list is refused by another; anything that
//! is not a token this service issued is INVALID_ARGUMENT.

use super::DomainError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The page size for a requested size (0 = `default`, capped at `max`).
pub fn page_size(requested: u32, default: u32, max: u32) -> usize {
    let size = if requested == 0 { default } else { requested };
    size.clamp(1, max.max(1)) as usize
}

/// Sort key of the top-polls ranking: most votes first, then poll id.
pub fn top_key(total_votes: u64, poll_id: &str) -> String {
    format!("{:020}:{poll_id}", u64::MAX - total_votes)
}

/// Sort key of a minute bucket (seconds since the epoch, offset so that
/// negative minutes sort first too).
pub fn minute_key(minute_secs: i64) -> String {
    format!("{:020}", (minute_secs as i128 - i64::MIN as i128) as u128)
}

/// The minute a [`minute_key`] stands for.
pub fn minute_from_key(key: &str) -> Option<i64> {
    let v: i128 = key.parse().ok()?;
    i64::try_from(v + i64::MIN as i128).ok()
}

/// Which list a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    TopPolls,
    Minutes,
}

impl List {
    fn tag(self) -> &'static str {
        match self {
            List::TopPolls => "t1",
            List::Minutes => "m1",
        }
    }

    fn key_is_valid(self, key: &str) -> bool {
        match self {
            List::TopPolls => key.split_once(':').is_some_and(|(votes, id)| {
                votes.len() == 20
                    && votes.bytes().all(|b| b.is_ascii_digit())
                    && !id.is_empty()
                    && id.len() <= 64
            }),
            List::Minutes => {
                key.len() == 20
                    && key.bytes().all(|b| b.is_ascii_digit())
                    && minute_from_key(key).is_some()
            }
        }
    }
}

/// The token pointing after `last_key` in `list`.
pub fn encode_token(list: List, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{last_key}", list.tag()))
}

/// The position in `token` for `list`: `None` for the first page.
pub fn decode_token(list: List, token: &str) -> Result<Option<String>, DomainError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || DomainError::invalid("page.page_token", "is not a token from a previous page");
    if token.len() > 256 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (tag, key) = text.split_once('|').ok_or_else(bad)?;
    if tag != list.tag() || !list.key_is_valid(key) {
        return Err(bad());
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_keys_sort_by_votes_descending_then_id() {
        let mut keys = vec![
            top_key(1, "b"),
            top_key(10, "z"),
            top_key(1, "a"),
            top_key(0, "c"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                top_key(10, "z"),
                top_key(1, "a"),
                top_key(1, "b"),
                top_key(0, "c")
            ]
        );
    }

    #[test]
    fn minute_keys_sort_in_time_and_round_trip() {
        let minutes = [-120i64, -60, 0, 60, 1_700_000_040];
        let keys: Vec<String> = minutes.iter().map(|m| minute_key(*m)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (m, k) in minutes.iter().zip(&keys) {
            assert_eq!(minute_from_key(k), Some(*m));
        }
    }

    #[test]
    fn tokens_round_trip_and_are_opaque() {
        let key = top_key(3, "0190-poll");
        let token = encode_token(List::TopPolls, &key);
        assert!(!token.contains("poll"));
        assert_eq!(decode_token(List::TopPolls, &token), Ok(Some(key)));
        assert_eq!(decode_token(List::TopPolls, ""), Ok(None));
        let m = minute_key(60);
        assert_eq!(
            decode_token(List::Minutes, &encode_token(List::Minutes, &m)),
            Ok(Some(m))
        );
    }

    #[test]
    fn garbage_and_foreign_tokens_are_invalid() {
        let other = encode_token(List::Minutes, &minute_key(60));
        for garbage in [
            "!!!".to_string(),
            "not base64 at all".to_string(),
            URL_SAFE_NO_PAD.encode("t1|nonsense"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            "A".repeat(1000),
            other,
        ] {
            match decode_token(List::TopPolls, &garbage) {
                Err(DomainError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "page.page_token")
                }
                other => panic!("{garbage:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0, 50, 500), 50);
        assert_eq!(page_size(7, 50, 500), 7);
        assert_eq!(page_size(9999, 50, 500), 500);
    }
}
