//! Reading a delivery for the pipeline: its body and envelope, the retry
//! count when the delivery is the worker's own copy (see
//! [`Publisher::retries`]), whether its headers fill the frame (see
//! [`copies::is_landmine`]), and whether they can be read in full (see
//! [`header_limits`](super::header_limits)).

use super::{Publisher, copies};
use crate::delivery::{HeaderFrame, Message, StageMark};
use crate::events::Envelope;
use lapin::message::Delivery;

/// The pipeline's view of `delivery`, as received on `publisher`'s connection.
pub fn message<'a>(
    delivery: &'a Delivery,
    publisher: &Publisher,
    stage: &'a StageMark,
) -> Message<'a> {
    let properties = &delivery.properties;
    let frame_max = publisher.frame_max();
    let unreadable_headers = super::header_limits::check(properties.headers().as_ref());
    let oversized_headers = copies::is_landmine(properties, frame_max).then(|| HeaderFrame {
        bytes: copies::header_frame_len(properties),
        frame_max,
    });
    Message {
        body: &delivery.data,
        envelope: Envelope {
            content_type: properties.content_type().as_ref().map(|s| s.as_str()),
            content_encoding: properties.content_encoding().as_ref().map(|s| s.as_str()),
            message_id: properties.message_id().as_ref().map(|s| s.as_str()),
        },
        retries: publisher.retries(delivery),
        oversized_headers,
        unreadable_headers,
        stage,
    }
}
