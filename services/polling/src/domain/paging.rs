//! List pages: how big they are and how the opaque page token encodes the
//! position (the last sort key returned, base64url). Poll ids are UUIDv7, so
//! sorting by id is sorting by creation time, and a position stays valid
//! while polls are added.

use super::DomainError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page; bigger requests are capped.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The page size to use for a requested size (0 = default, capped at `max`).
pub fn page_size(requested: u32, default: u32, max: u32) -> usize {
    let size = if requested == 0 { default } else { requested };
    size.clamp(1, max.max(1)) as usize
}

/// The token pointing after `last_key`.
pub fn encode_token(last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_key.as_bytes())
}

/// The position in `token`: `None` for the first page. Anything that is not
/// a token this service issued is INVALID_ARGUMENT on `page.page_token`.
pub fn decode_token(token: &str) -> Result<Option<String>, DomainError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || DomainError::invalid("page.page_token", "is not a token from a previous page");
    if token.len() > 128 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    uuid::Uuid::try_parse(&key).map_err(|_| bad())?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 50);
        assert_eq!(page_size(7, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 7);
        assert_eq!(page_size(500, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 500);
        assert_eq!(page_size(501, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 500);
        assert_eq!(page_size(u32::MAX, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), 500);
    }

    #[test]
    fn token_round_trips() {
        let id = uuid::Uuid::now_v7().to_string();
        let token = encode_token(&id);
        assert!(!token.contains(&id), "token should be opaque");
        assert_eq!(decode_token(&token), Ok(Some(id)));
        assert_eq!(decode_token(""), Ok(None));
    }

    #[test]
    fn garbage_tokens_are_invalid_argument() {
        for garbage in [
            "!!!",
            "not base64 at all",
            &URL_SAFE_NO_PAD.encode("not-a-uuid"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            &"A".repeat(1000),
        ] {
            match decode_token(garbage) {
                Err(DomainError::InvalidArgument { field, .. }) => {
                    assert_eq!(field, "page.page_token")
                }
                other => panic!("{garbage:?} gave {other:?}"),
            }
        }
    }
}
