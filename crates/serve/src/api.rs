//! The JSON API: predictions from an image or from pixels, the model's facts, health.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use data::digit::SIDE;
use http_body_util::BodyExt;
use nn::Tape;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::workers::{Busy, Classify};
use crate::{App, Limits};

/// Every error's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong, in one line.
    pub error: String,
}

/// An error response: `status` with `{"error": message}`.
pub(crate) fn error(status: StatusCode, message: String) -> (StatusCode, Json<ErrorBody>) {
    (status, Json(ErrorBody { error: message }))
}

pub(crate) type Failure = (StatusCode, Json<ErrorBody>);

fn bad_request(message: impl Into<String>) -> Failure {
    error(StatusCode::BAD_REQUEST, message.into())
}

/// What `GET /api/model` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// The architecture, as `mnist train` describes it.
    pub architecture: String,
    /// Trainable scalars.
    pub parameters: usize,
    /// Values per image (784 for 28x28).
    pub inputs: usize,
    /// The number of classes.
    pub classes: usize,
    /// Each class's name, in label order (the labels as numbers unless the model records
    /// names).
    pub class_names: Vec<String>,
    /// The test accuracy the model's file records, if any.
    pub test_accuracy: Option<f64>,
}

/// One image's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The most likely class.
    pub class: usize,
    /// Every class's probability.
    pub probabilities: Vec<f32>,
    /// The 28x28 image the model received, row-major, in `[0, 1]`.
    pub input: Vec<f32>,
}

/// The answer to a request of several images, in their order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// One prediction per image.
    pub predictions: Vec<Prediction>,
}

/// A JSON request: one image or many, each 784 numbers in `[0, 1]` (or, when any exceeds 1, in
/// `[0, 255]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PixelsRequest {
    pixels: Option<Vec<f64>>,
    images: Option<Vec<Vec<f64>>>,
}

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(crate) async fn model(State(app): State<App>) -> Json<ModelFacts> {
    Json((*app.facts).clone())
}

pub(crate) async fn not_found() -> Failure {
    error(StatusCode::NOT_FOUND, "no such path; try GET /, POST /api/predict, GET /api/model".into())
}

pub(crate) async fn method_not_allowed() -> Failure {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path".into())
}

/// `POST /api/predict`: a PNG or JPEG body, or JSON pixels.
///
/// In order: the content type; the body, within its size and deadline and before any place is
/// taken, so that a slow client holds nothing; a place in the workers' queue, or a quick 503;
/// then the answer, decoded and computed by a worker in turn (a request whose client leaves or
/// whose deadline passes while it waits is skipped, never run).
pub(crate) async fn predict(State(app): State<App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let kind = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let image = match kind.as_str() {
        "image/png" | "image/jpeg" | "image/jpg" => true,
        "application/json" => false,
        "" => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a Content-Type is needed: image/png, image/jpeg or application/json".into(),
            )
            .into_response();
        }
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Type {other}: send image/png, image/jpeg or application/json"),
            )
            .into_response();
        }
    };
    let (body, held) = match read_body(&parts.headers, body, &app.limits, &app.bodies).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    let input = if image { Input::Image(body) } else { Input::Json(body) };
    // The waiter counts this request in the load until it is answered or its client goes.
    let (answer, _waiter) = match app.workers.submit(input, held) {
        Ok(submitted) => submitted,
        Err(busy) => {
            let why = match busy {
                Busy::Full => format!("{} predictions are waiting already, the most accepted", app.limits.queue),
                Busy::Slow(seconds) => format!("the predictions waiting would take the workers {seconds:.1} s"),
            };
            let message = format!("the server is busy: {why}; retry in a second");
            return ([(header::RETRY_AFTER, "1")], error(StatusCode::SERVICE_UNAVAILABLE, message)).into_response();
        }
    };
    match answer.await {
        Ok(Ok(response)) => response,
        Ok(Err(failure)) => failure.into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the prediction failed".into()).into_response(),
    }
}

/// The whole body: 413 beyond `limits.body_bytes` (at once when its `Content-Length` says so),
/// 408 when it takes longer than `limits.body_timeout` to arrive, 503 when the bodies held at
/// once would exceed `limits.bodies_bytes` (the returned permit holds this one's share).
///
/// Copied frame by frame into one buffer, each frame dropped once copied: keeping the frames
/// would keep the read buffers they point into, which a body sent a byte at a time turns into
/// a buffer of several KiB per byte.
async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limits: &Limits,
    bodies: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Response> {
    let too_large = || {
        let message = format!("the body is larger than the {} bytes accepted", limits.body_bytes);
        error(StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
    };
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.body_bytes as u64) {
        return Err(too_large());
    }
    // The budget counts the buffer's capacity, which is what the body costs: `take` holds
    // `more` bytes of it, or says there are not that many left.
    let mut held = None::<OwnedSemaphorePermit>;
    let mut take = |more: usize| {
        let share = u32::try_from(more).expect("within the body limit");
        let Ok(more) = Arc::clone(bodies).try_acquire_many_owned(share) else { return false };
        match held.as_mut() {
            Some(held) => held.merge(more),
            None => held = Some(more),
        }
        true
    };
    let busy = || {
        let message = format!(
            "the server is busy: the bodies it holds would exceed {} bytes; retry in a second",
            limits.bodies_bytes
        );
        ([(header::RETRY_AFTER, "1")], error(StatusCode::SERVICE_UNAVAILABLE, message)).into_response()
    };
    // What the client announces is only believed up to a small first allocation: a client
    // that announces much and sends little costs what it sends.
    let first = announced.map_or(0, |n| n as usize).min(FIRST_ALLOCATION);
    let read = async {
        if !take(first) {
            return Err(busy());
        }
        let mut bytes = Vec::with_capacity(first);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad_request(format!("the body could not be read: {e}")).into_response())?;
            if let Ok(data) = frame.into_data() {
                let needed = bytes.len() + data.len();
                if needed > limits.body_bytes {
                    return Err(too_large());
                }
                if needed > bytes.capacity() {
                    // Doubling, as a Vec grows, but within the body limit and the budget.
                    let grown = needed.max(2 * bytes.capacity()).min(limits.body_bytes);
                    if !take(grown - bytes.capacity()) {
                        return Err(busy());
                    }
                    bytes.reserve_exact(grown - bytes.len());
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(bytes))
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => Ok((bytes, held)),
        Ok(Err(refused)) => Err(refused),
        Err(_) => {
            let message = format!("the body did not arrive within {:?}", limits.body_timeout);
            Err(error(StatusCode::REQUEST_TIMEOUT, message).into_response())
        }
    }
}

/// The most a body's buffer starts with, whatever its `Content-Length` says; it grows with
/// what arrives.
const FIRST_ALLOCATION: usize = 64 << 10;

pub(crate) enum Input {
    Image(Bytes),
    Json(Bytes),
}

/// Decodes `input` and classifies it with `model`: the response, or why not.
pub(crate) fn answer(
    model: &dyn Classify,
    tape: &mut Tape,
    limits: &Limits,
    input: Input,
) -> Result<Response, Failure> {
    let side = SIDE * SIDE;
    let (images, batch) = match input {
        Input::Image(bytes) => {
            let pixels = data::digit::from_image_bytes(&bytes, limits.image).map_err(|e| bad_request(e.to_string()))?;
            (vec![pixels], false)
        }
        Input::Json(bytes) => {
            let request: PixelsRequest =
                serde_json::from_slice(&bytes).map_err(|e| bad_request(format!("malformed JSON: {e}")))?;
            match (request.pixels, request.images) {
                (Some(p), None) => (vec![pixels(p, 0)?], false),
                (None, Some(images)) => {
                    if images.is_empty() || images.len() > limits.images {
                        return Err(bad_request(format!(
                            "\"images\" holds {} images; send 1 to {}",
                            images.len(),
                            limits.images
                        )));
                    }
                    (images.into_iter().enumerate().map(|(i, p)| pixels(p, i)).collect::<Result<_, _>>()?, true)
                }
                _ => return Err(bad_request("send either \"pixels\" (one image) or \"images\" (several)")),
            }
        }
    };
    let x = ndarray::Array2::from_shape_vec((images.len(), side), images.concat()).expect("784 values each");
    let (classes, probabilities) = model.classify_with(x.view(), tape);
    let predictions: Vec<Prediction> = probabilities
        .rows()
        .into_iter()
        .zip(classes)
        .zip(images)
        .map(|((row, class), input)| Prediction { class, probabilities: row.to_vec(), input })
        .collect();
    Ok(if batch {
        // A struct, not `json!`: a JSON value would widen every f32 to f64's digits.
        Json(Predictions { predictions }).into_response()
    } else {
        Json(predictions.into_iter().next().expect("one image")).into_response()
    })
}

/// One image's 784 values, checked and scaled to `[0, 1]`.
fn pixels(values: Vec<f64>, index: usize) -> Result<Vec<f32>, Failure> {
    let side = SIDE * SIDE;
    if values.len() != side {
        return Err(bad_request(format!(
            "image {index} has {} values; a {SIDE}x{SIDE} image has {side}",
            values.len()
        )));
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite() || **v < 0.0 || **v > 255.0) {
        return Err(bad_request(format!("image {index} holds {v}; values are in 0..1 or 0..255")));
    }
    let scale = if values.iter().any(|&v| v > 1.0) { 255.0 } else { 1.0 };
    Ok(values.into_iter().map(|v| (v / scale) as f32).collect())
}
