//! The stand-in's answers as HTTP responses: the TapTalk envelope as JSON,
//! in a body that ends the request's [`Visit`] (freeing its slot and timing
//! it) once hyper has taken the last byte to send.

use super::line::Visit;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use taptalk_api::wire::ApiEnvelope;

/// What to answer, before it becomes a response.
pub(super) struct Answer {
    pub envelope: ApiEnvelope,
    /// Adds `Retry-After: 1` (the injected 429s).
    pub retry_after: bool,
}

impl From<ApiEnvelope> for Answer {
    fn from(envelope: ApiEnvelope) -> Answer {
        Answer {
            envelope,
            retry_after: false,
        }
    }
}

impl Answer {
    /// The response, whose body carries `visit` until it is sent.
    pub(super) fn into_response(self, visit: Option<Visit>) -> Response {
        let status =
            StatusCode::from_u16(self.envelope.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The envelope is plain data; encoding it cannot fail.
        let json = serde_json::to_vec(&self.envelope).unwrap_or_default();
        let mut response = Response::new(Body::new(Timed {
            data: Some(Bytes::from(json)),
            visit,
        }));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// One chunk of bytes, then the end; the visit ends with the last chunk
/// taken (or when hyper drops the body unsent, the client gone).
struct Timed {
    data: Option<Bytes>,
    visit: Option<Visit>,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = self.data.take().map(|data| Ok(Frame::data(data)));
        self.visit = None;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
