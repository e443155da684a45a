//! Server-sent event frames in OpenAI's streaming format.

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::model::format_usd;
use crate::error::Error;

/// `data: <json>\n\n`.
pub fn data(json: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    put_data(&mut b, json);
    b.freeze()
}

/// Appends `data: <json>\n\n` to `buf` (a stream's frames that leave together share one
/// buffer).
pub fn put_data(buf: &mut BytesMut, json: &[u8]) {
    buf.reserve(json.len() + 8);
    buf.put_slice(b"data: ");
    buf.put_slice(json);
    buf.put_slice(b"\n\n");
}

/// The end of a complete stream: the cost as an SSE comment (clients ignore comments; the
/// headers were sent before the cost was known), then `data: [DONE]`.
pub fn done(cost: Option<f64>) -> Bytes {
    match cost {
        Some(c) => Bytes::from(format!(
            ": x-llm-gateway-cost-usd={}\n\ndata: [DONE]\n\n",
            format_usd(c)
        )),
        None => Bytes::from_static(b"data: [DONE]\n\n"),
    }
}

/// An error event; the stream ends after it, without `[DONE]`, so clients see a failure and
/// never a silently truncated answer.
pub fn error(e: &Error) -> Bytes {
    data(super::error::body(e).to_string().as_bytes())
}
