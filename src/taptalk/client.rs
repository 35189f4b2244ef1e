//! The TapTalk.io client: one auth-ticket request per call, its answer sorted
//! into what the worker must do next (store it, fail the event, retry later,
//! or stop everything because the configuration is wrong).

use super::api::{
    AUTH_TICKET_PATH, ApiEnvelope, HEADER_VALIDATION_FAILED, PARAM_VALIDATION_FAILED,
    SERVER_KEY_HEADER, ServerKey, TicketData,
};
use crate::domain::{AuthTicket, Field, IssuedTicket, TicketRequest};
use crate::health::Failure;
use crate::observe::metrics::RequestResult;
use chrono::{SubsecRound, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::Duration;
use url::Url;

/// What went wrong with one request, sorted by what the worker does about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TicketError {
    /// `ParamValidationFailed`: this event is bad; never send it again.
    #[error("TapTalk rejected the request{}: {message}", field.as_ref().map(|f| format!(" ({f})")).unwrap_or_default())]
    Rejected {
        /// TapTalk's error code as it gave it (`ParamValidationFailed`, `40002`).
        code: String,
        field: Option<String>,
        message: String,
    },
    /// `HeaderValidationFailed`, `401xx`, a wrong endpoint: every event will fail
    /// the same way until an operator fixes the configuration.
    #[error("TapTalk refused the worker's configuration: {0}")]
    Misconfigured(String),
    /// 5xx, 429, a timeout, a dropped connection, an answer that makes no sense:
    /// try again later.
    #[error("{detail}")]
    Transient {
        detail: String,
        retry_after: Option<Duration>,
    },
}

impl TicketError {
    /// What the error says about TapTalk as a whole; `None` when it concerns
    /// this event only.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            TicketError::Rejected { .. } => None,
            TicketError::Misconfigured(reason) => Some(Failure::Misconfigured(reason.clone())),
            TicketError::Transient { detail, .. } => Some(Failure::Transient(detail.clone())),
        }
    }

    fn transient(detail: String) -> TicketError {
        TicketError::Transient {
            detail,
            retry_after: None,
        }
    }
}

/// How a failed request counts in the metrics. Only a 429 carries a
/// `Retry-After` (see [`TaptalkClient::request_ticket`]), so that tells rate
/// limiting apart.
impl From<&TicketError> for RequestResult {
    fn from(error: &TicketError) -> RequestResult {
        match error {
            TicketError::Rejected { .. } => RequestResult::Rejected,
            TicketError::Misconfigured(_) => RequestResult::Misconfigured,
            TicketError::Transient {
                retry_after: Some(_),
                ..
            } => RequestResult::RateLimited,
            TicketError::Transient { .. } => RequestResult::Transient,
        }
    }
}

/// Why a [`TaptalkClient`] cannot be built: the settings it was given cannot
/// work, so the worker does not start. None of them quotes the server key.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `TAPTALK_BASE_URL` and the endpoint path do not make a URL. Said in
    /// the message itself, so not a `source` (it would be said twice).
    #[error("TAPTALK_BASE_URL does not form a valid endpoint URL: {0}")]
    Endpoint(url::ParseError),
    #[error("the server key cannot be sent as an HTTP header")]
    KeyHeader,
    /// The TLS backend or the system's settings refuse the HTTP client; the
    /// message says why, with every cause.
    #[error("cannot build the HTTP client: {}", chain(.0))]
    Http(reqwest::Error),
}

/// A client for TapTalk's auth-ticket endpoint, with the server key attached.
#[derive(Debug, Clone)]
pub struct TaptalkClient {
    http: reqwest::Client,
    endpoint: Url,
    key: ServerKey,
    key_header: HeaderValue,
}

impl TaptalkClient {
    /// A client for the TapTalk server at `base_url` (for example
    /// `https://taptalk.io`); `timeout` bounds each request.
    pub fn new(
        base_url: &Url,
        key: ServerKey,
        timeout: Duration,
    ) -> Result<TaptalkClient, ClientError> {
        let endpoint = endpoint(base_url)?;
        // The commands register the key already; a client built any other
        // way (the demo's, a library user's) is covered too.
        crate::taptalk::register_with_logs(&key);
        let mut key_header = HeaderValue::from_str(key.header_value().expose_secret())
            .map_err(|_| ClientError::KeyHeader)?;
        key_header.set_sensitive(true);
        if endpoint.scheme() == "http" && !is_loopback(&endpoint) {
            tracing::warn!(
                endpoint = %crate::observe::redact_url(endpoint.as_str()),
                "TAPTALK_BASE_URL is plain http: the server key travels unencrypted; use https outside a test setup"
            );
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("taptalk-ticket-worker/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the Server-Key header to another URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ClientError::Http)?;
        Ok(TaptalkClient {
            http,
            endpoint,
            key,
            key_header,
        })
    }

    /// The full URL of the auth-ticket endpoint.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Requests one auth ticket. The ticket's expiry runs from the moment the
    /// request was sent.
    #[tracing::instrument(name = "taptalk.request_ticket", level = "debug", skip_all, fields(xc_user_id = request.xc_user_id()))]
    pub async fn request_ticket(
        &self,
        request: &TicketRequest,
    ) -> Result<IssuedTicket, TicketError> {
        // Postgres keeps microseconds: round here so the stored row and the
        // value in memory agree.
        let requested_at = Utc::now().trunc_subsecs(6);
        let data = self.post(&request.to_json()).await?;
        Ok(IssuedTicket {
            user_id: data.user_id,
            ticket: AuthTicket::new(data.ticket),
            requested_at,
        })
    }

    /// Asks TapTalk whether it would serve us, without side effects: an empty
    /// body with our key. A healthy TapTalk that accepts the key answers
    /// `ParamValidationFailed` (no user is created, no ticket issued).
    #[tracing::instrument(name = "taptalk.probe", skip_all)]
    pub async fn probe(&self) -> Result<(), TicketError> {
        match self.post(&Map::new()).await {
            Ok(_) | Err(TicketError::Rejected { .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn post(&self, body: &Map<String, Value>) -> Result<TicketData, TicketError> {
        let response = self
            .http
            .post(self.endpoint.clone())
            .header(SERVER_KEY_HEADER, self.key_header.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error("request", e, &self.endpoint))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = read_limited(response, MAX_RESPONSE_BYTES, &self.endpoint).await?;
        classify(status, retry_after, &body).map_err(|e| self.scrubbed(e))
    }

    /// Upstream texts are echoed into logs and events: make sure they cannot
    /// carry our secret back.
    fn scrubbed(&self, error: TicketError) -> TicketError {
        match error {
            TicketError::Rejected {
                code,
                field,
                message,
            } => TicketError::Rejected {
                code: self.key.scrub(&code),
                field: field.map(|f| self.key.scrub(&f)),
                message: self.key.scrub(&message),
            },
            TicketError::Misconfigured(detail) => {
                TicketError::Misconfigured(self.key.scrub(&detail))
            }
            TicketError::Transient {
                detail,
                retry_after,
            } => TicketError::Transient {
                detail: self.key.scrub(&detail),
                retry_after,
            },
        }
    }
}

/// `base_url` + the endpoint path, keeping any path prefix of the base.
fn endpoint(base_url: &Url) -> Result<Url, ClientError> {
    let base = base_url.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}{AUTH_TICKET_PATH}")).map_err(ClientError::Endpoint)
}

/// Sorts one HTTP answer. Only a clean success is a ticket: HTTP 2xx, an
/// envelope whose `status` is 2xx too, no `error.code` or `error.message`,
/// and a usable `data.userID` and `data.ticket`. Anything else is sorted like
/// the failure it reports: TapTalk's error codes first, then the HTTP status,
/// then, when HTTP says 2xx but the envelope does not, the envelope's status.
fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<TicketData, TicketError> {
    let envelope = serde_json::from_slice::<ApiEnvelope>(body).ok();
    let answered = || describe(status, envelope.as_ref());
    let check_key = || {
        TicketError::Misconfigured(format!(
            "{}; check TAPTALK_SERVER_KEY_ID and TAPTALK_SERVER_KEY_SECRET",
            answered()
        ))
    };
    if let Some(error) = envelope.as_ref().map(|e| &e.error) {
        if error.is(PARAM_VALIDATION_FAILED) {
            let field = Field::lookup(&error.field)
                .map(|f| f.name().to_owned())
                .or_else(|| Some(clip(&error.field)).filter(|f| !f.is_empty()));
            return Err(TicketError::Rejected {
                code: clip(&error.code),
                field,
                message: clip(&error.message),
            });
        }
        if error.is(HEADER_VALIDATION_FAILED) || error.is_authorization_failure() {
            return Err(check_key());
        }
    }
    match status.as_u16() {
        200..=299 => {}
        401 | 403 => return Err(check_key()),
        300..=399 | 404 | 405 => {
            return Err(TicketError::Misconfigured(format!(
                "{}; check TAPTALK_BASE_URL (redirects are not followed)",
                answered()
            )));
        }
        429 => {
            return Err(TicketError::Transient {
                detail: answered(),
                retry_after,
            });
        }
        _ => return Err(TicketError::transient(answered())),
    }
    // HTTP says success; the envelope must agree.
    let Some(envelope) = envelope.as_ref() else {
        return Err(TicketError::transient(format!(
            "{} without a TapTalk envelope",
            answered()
        )));
    };
    match envelope.status {
        200..=299 => {}
        401 | 403 => return Err(check_key()),
        429 => {
            return Err(TicketError::Transient {
                detail: format!("{}; not a ticket", answered()),
                retry_after,
            });
        }
        _ => {
            return Err(TicketError::transient(format!(
                "{}; not a ticket",
                answered()
            )));
        }
    }
    if !envelope.error.code.is_empty() || !envelope.error.message.is_empty() {
        return Err(TicketError::transient(format!(
            "{}: an error in a success envelope is not a ticket",
            answered()
        )));
    }
    TicketData::deserialize(&envelope.data)
        .ok()
        .filter(|d| usable(&d.user_id, 255) && usable(&d.ticket, 4096))
        .ok_or_else(|| {
            TicketError::transient(format!("{} without a usable userID and ticket", answered()))
        })
}

/// The most of an answer the client reads; TapTalk's answers are tiny.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Reads a response body, refusing one larger than `limit`.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    endpoint: &Url,
) -> Result<Vec<u8>, TicketError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error("response", e, endpoint))?
    {
        if body.len() + chunk.len() > limit {
            return Err(TicketError::transient(format!(
                "TapTalk answered HTTP {} with a body over {limit} bytes",
                response.status()
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A value that can be stored and shown: non-empty, bounded, no control or
/// invisible format characters (an id with U+202E or U+200B in it looks
/// like another; see [`crate::domain::text::is_unsafe`]).
fn usable(value: &str, max_chars: usize) -> bool {
    !value.is_empty()
        && value.chars().count() <= max_chars
        && !value.chars().any(crate::domain::text::is_unsafe)
}

/// "TapTalk answered HTTP <status>", the envelope's status when it differs,
/// and the envelope's error code and message when there are any.
fn describe(status: StatusCode, envelope: Option<&ApiEnvelope>) -> String {
    let mut text = format!("TapTalk answered HTTP {status}");
    if let Some(inner) = envelope
        .map(|e| e.status)
        .filter(|inner| *inner != status.as_u16())
    {
        text.push_str(&format!(" with envelope status {inner}"));
    }
    if let Some(error) = envelope
        .map(|e| &e.error)
        .filter(|e| !e.code.is_empty() || !e.message.is_empty())
    {
        text.push_str(&format!(
            " ({}: {})",
            clip(&error.code),
            clip(&error.message)
        ));
    }
    text
}

/// `Retry-After` in seconds (TapTalk-style servers send seconds, not dates).
/// A `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110). Any
/// number of seconds is read, up to `u64::MAX`; the pause it imposes is
/// capped where it is honoured ([`UpstreamPause`](super::UpstreamPause)).
/// A date in the past is no pause; anything else is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// A request that got no answer. When TapTalk could not be reached at all
/// (refused, unknown host, connect timeout), the likeliest cause is the URL:
/// the detail names the setting and the endpoint it led to.
fn transport_error(stage: &str, error: reqwest::Error, endpoint: &Url) -> TicketError {
    let connect = error.is_connect();
    let what = if error.is_timeout() {
        "timed out"
    } else if connect {
        "could not connect"
    } else {
        "failed"
    };
    let mut detail = format!("TapTalk {stage} {what}: {}", chain(&error.without_url()));
    if connect {
        detail.push_str(&format!(
            "; check TAPTALK_BASE_URL (the endpoint is {})",
            crate::observe::redact_url(endpoint.as_str())
        ));
    }
    TicketError::transient(detail)
}

/// An error and its sources, joined, so "error sending request" says why.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn clip(text: &str) -> String {
    const MAX: usize = 200;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        text.chars().take(MAX).chain("…".chars()).collect()
    }
}

impl crate::health::Probe for TaptalkClient {
    fn probe(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Failure>> + Send + '_>> {
        Box::pin(async { TaptalkClient::probe(self).await.err()?.failure() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sort(status: u16, body: &str) -> Result<TicketData, TicketError> {
        classify(
            StatusCode::from_u16(status).expect("status"),
            Some(Duration::from_secs(3)),
            body.as_bytes(),
        )
    }

    #[test]
    fn success() {
        let data = sort(
            200,
            r#"{"status":200,"error":{"code":"","message":"","field":""},"data":{"userID":"u1","ticket":"t1"}}"#,
        );
        assert_eq!(
            data,
            Ok(TicketData {
                user_id: "u1".into(),
                ticket: "t1".into()
            })
        );
    }

    #[test]
    fn success_without_data_is_transient() {
        for body in [
            r#"{"status":200,"data":{}}"#,
            "<html>",
            r#"{"status":200,"data":{"userID":"u","ticket":""}}"#,
            // Control and invisible format characters: not an id or ticket.
            r#"{"status":200,"data":{"userID":"u","ticket":"t\u001b[2J"}}"#,
            r#"{"status":200,"data":{"userID":"u\u202e1","ticket":"t"}}"#,
            r#"{"status":200,"data":{"userID":"u","ticket":"t\u200b1"}}"#,
        ] {
            assert!(
                matches!(sort(200, body), Err(TicketError::Transient { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn param_validation_names_the_field_by_name_or_code() {
        let by_name = sort(
            400,
            r#"{"status":400,"error":{"code":"ParamValidationFailed","message":"bad","field":"email"}}"#,
        );
        assert_eq!(
            by_name,
            Err(TicketError::Rejected {
                code: "ParamValidationFailed".into(),
                field: Some("email".into()),
                message: "bad".into()
            })
        );
        let by_code = sort(
            400,
            r#"{"status":400,"error":{"code":40002,"message":"bad","field":"105"}}"#,
        );
        assert_eq!(
            by_code,
            Err(TicketError::Rejected {
                code: "40002".into(),
                field: Some("xcUserID".into()),
                message: "bad".into()
            })
        );
    }

    #[test]
    fn configuration_failures() {
        for (status, body) in [
            (
                401,
                r#"{"status":401,"error":{"code":"HeaderValidationFailed","message":"no"}}"#,
            ),
            (400, r#"{"status":400,"error":{"code":"40001"}}"#),
            (
                401,
                r#"{"status":401,"error":{"code":"40104","message":"expired"}}"#,
            ),
            (403, "forbidden"),
            (404, "not found"),
            (301, ""),
            (307, ""),
        ] {
            assert!(
                matches!(sort(status, body), Err(TicketError::Misconfigured(_))),
                "{status} {body}"
            );
        }
    }

    #[test]
    fn transient_failures_carry_retry_after_for_429_only() {
        assert_eq!(
            sort(429, "slow down"),
            Err(TicketError::Transient {
                detail: "TapTalk answered HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(3))
            })
        );
        for status in [500, 502, 503, 504, 400, 418] {
            assert!(
                matches!(
                    sort(status, "{}"),
                    Err(TicketError::Transient {
                        retry_after: None,
                        ..
                    })
                ),
                "{status}"
            );
        }
    }

    const DATA: &str = r#""data":{"userID":"u-x","ticket":"HOSTILE"}"#;

    fn transient_detail(result: Result<TicketData, TicketError>) -> String {
        match result {
            Err(TicketError::Transient { detail, .. }) => detail,
            other => panic!("expected a transient error, got {other:?}"),
        }
    }

    #[test]
    fn http_200_with_an_error_status_in_the_envelope_is_not_a_ticket() {
        for status in [500, 502, 503, 400, 404, 418] {
            let body =
                format!(r#"{{"status":{status},"error":{{"code":"","message":""}},{DATA}}}"#);
            let detail = transient_detail(sort(200, &body));
            assert!(
                detail.contains(&format!("with envelope status {status}"))
                    && detail.contains("not a ticket"),
                "{detail}"
            );
        }
        // A 429 in the envelope is rate limiting: Retry-After is honoured.
        let body = format!(r#"{{"status":429,{DATA}}}"#);
        assert!(matches!(
            sort(200, &body),
            Err(TicketError::Transient {
                retry_after: Some(_),
                ..
            })
        ));
        // 401 and 403 in the envelope: the key, as with the HTTP status.
        for status in [401, 403] {
            let body = format!(r#"{{"status":{status},{DATA}}}"#);
            assert!(
                matches!(sort(200, &body), Err(TicketError::Misconfigured(ref m)) if m.contains("TAPTALK_SERVER_KEY_SECRET")),
                "{status}"
            );
        }
    }

    #[test]
    fn http_200_with_an_error_code_or_message_in_the_envelope_is_not_a_ticket() {
        for error in [
            r#"{"code":"InternalServerError","message":"boom","field":""}"#,
            r#"{"code":50001,"message":""}"#,
            r#"{"code":"","message":"something is wrong"}"#,
        ] {
            let body = format!(r#"{{"status":200,"error":{error},{DATA}}}"#);
            let detail = transient_detail(sort(200, &body));
            assert!(
                detail.contains("an error in a success envelope is not a ticket"),
                "{detail}"
            );
        }
        let body = format!(
            r#"{{"status":200,"error":{{"code":"InternalServerError","message":"boom"}},{DATA}}}"#
        );
        assert_eq!(
            transient_detail(sort(200, &body)),
            "TapTalk answered HTTP 200 OK (InternalServerError: boom): an error in a success envelope is not a ticket"
        );
    }

    #[test]
    fn known_error_codes_decide_even_inside_http_200() {
        let body = format!(
            r#"{{"status":200,"error":{{"code":"ParamValidationFailed","message":"bad","field":"email"}},{DATA}}}"#
        );
        assert_eq!(
            sort(200, &body),
            Err(TicketError::Rejected {
                code: "ParamValidationFailed".into(),
                field: Some("email".into()),
                message: "bad".into()
            })
        );
        for code in ["HeaderValidationFailed", "40001", "40104"] {
            let body = format!(r#"{{"status":200,"error":{{"code":"{code}"}},{DATA}}}"#);
            assert!(
                matches!(sort(200, &body), Err(TicketError::Misconfigured(_))),
                "{code}"
            );
        }
    }

    #[test]
    fn a_clean_envelope_in_an_http_error_is_not_a_ticket() {
        let body = format!(r#"{{"status":200,"error":{{"code":""}},{DATA}}}"#);
        for status in [500, 503, 400] {
            assert!(
                matches!(sort(status, &body), Err(TicketError::Transient { .. })),
                "{status}"
            );
        }
    }

    #[test]
    fn any_2xx_with_a_clean_2xx_envelope_is_a_ticket() {
        let body = r#"{"status":201,"error":{"code":"","message":"","field":""},"data":{"userID":"u1","ticket":"t1"}}"#;
        for status in [200, 201] {
            assert!(sort(status, body).is_ok(), "{status}");
        }
        let without_error = r#"{"status":200,"data":{"userID":"u1","ticket":"t1"}}"#;
        assert!(sort(200, without_error).is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_taptalk_names_the_setting() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let key = ServerKey::new("id", secrecy::SecretString::from("client-test-secret"));
        for base in [
            format!("http://127.0.0.1:{port}"),
            "http://ticket-worker-test.invalid".to_owned(),
        ] {
            let base = Url::parse(&base).expect("url");
            let client =
                TaptalkClient::new(&base, key.clone(), Duration::from_secs(3)).expect("client");
            let detail = transient_detail(client.probe().await.map(|()| TicketData {
                user_id: String::new(),
                ticket: String::new(),
            }));
            assert!(
                detail.contains("could not connect")
                    && detail.contains("check TAPTALK_BASE_URL")
                    && detail.contains(base.host_str().unwrap_or_default()),
                "{detail}"
            );
        }
    }

    #[test]
    fn endpoint_keeps_a_base_path() {
        let base = Url::parse("https://gw.example.com/taptalk/").expect("url");
        assert_eq!(
            endpoint(&base).map(|u| u.to_string()).ok(),
            Some("https://gw.example.com/taptalk/v1/server/auth_ticket/request".into())
        );
    }

    #[test]
    fn a_client_that_cannot_be_built_names_the_setting() {
        assert_eq!(
            ClientError::Endpoint(url::ParseError::EmptyHost).to_string(),
            "TAPTALK_BASE_URL does not form a valid endpoint URL: empty host"
        );
        assert_eq!(
            ClientError::KeyHeader.to_string(),
            "the server key cannot be sent as an HTTP header"
        );
    }

    #[test]
    fn retry_after_reads_seconds_of_any_size_and_http_dates() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("header"));
            retry_after(&headers)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            with("18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        assert!(with(&soon).is_some_and(|d| d > Duration::from_secs(100)));
        assert_eq!(with("-1"), None);
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
