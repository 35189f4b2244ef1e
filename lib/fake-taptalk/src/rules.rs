//! The field rules as the stand-in (playing TapTalk) applies them.
//!
//! First the documented rules, the same ones the worker checks before calling
//! (required fields, `userPlatform`, `xcUserID` length, IP address). Then
//! format checks on optional fields that only the upstream decides: an
//! `email` with one `@` and a dotted domain, a `phone` of 6 to 15 digits with
//! an optional leading `+` (country code first), http(s) photo URLs. The worker
//! forwards such values untouched, so an event can pass the worker and still be
//! refused upstream with `ParamValidationFailed`, as with the real TapTalk.

use serde_json::{Map, Value};
use taptalk_api::{Field, FieldError, TicketRequest};

/// Checks a request body, naming the first field that breaks a rule.
pub fn check(object: &Map<String, Value>) -> Result<(), FieldError> {
    let request = TicketRequest::from_json(object)?;
    let fail = |field: Field, problem: &str| FieldError {
        field,
        problem: problem.into(),
    };
    if let Some(email) = request.get(Field::Email)
        && !is_email(email)
    {
        return Err(fail(Field::Email, "must be an e-mail address"));
    }
    if let Some(phone) = request.get(Field::Phone)
        && !is_phone(phone)
    {
        return Err(fail(
            Field::Phone,
            "must be 6 to 15 digits, starting with the country code",
        ));
    }
    for field in [Field::PhotoThumbnailUrl, Field::PhotoFullsizeUrl] {
        if let Some(url) = request.get(field)
            && !is_http_url(url)
        {
            return Err(fail(field, "must be an http(s) URL"));
        }
    }
    Ok(())
}

fn is_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.split('.').count() >= 2
                && domain.split('.').all(|label| !label.is_empty())
                && !value.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn is_phone(value: &str) -> bool {
    let digits = value.strip_prefix('+').unwrap_or(value);
    (6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_http_url(value: &str) -> bool {
    url::Url::parse(value)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(extra: Value) -> Map<String, Value> {
        let mut base = json!({
            "userIPAddress": "10.0.0.1", "userAgent": "ua", "userPlatform": "web",
            "userDeviceID": "d", "xcUserID": "u", "fullName": "N"
        });
        if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
            base.extend(extra);
        }
        match base {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn formats_only_the_upstream_checks() {
        assert!(check(&body(json!({"email": "a@b.co", "phone": "+628123456789", "photoThumbnailURL": "https://x.io/a.png"}))).is_ok());
        for (extra, field) in [
            (json!({"email": "ana"}), Field::Email),
            (json!({"email": "a@b"}), Field::Email),
            (json!({"phone": "08-123"}), Field::Phone),
            (json!({"phone": "+12"}), Field::Phone),
            (
                json!({"photoFullsizeURL": "ftp://x/y"}),
                Field::PhotoFullsizeUrl,
            ),
            (json!({"userPlatform": "tv"}), Field::UserPlatform),
        ] {
            assert_eq!(
                check(&body(extra.clone())).map_err(|e| e.field),
                Err(field),
                "{extra}"
            );
        }
    }
}
