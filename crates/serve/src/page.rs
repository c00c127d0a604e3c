//! The page, embedded in the binary: it needs nothing but this server.

use axum::http::header::{self, HeaderName};
use axum::response::IntoResponse;

/// What the page may load and do: its own script, style and requests, nothing inline, no
/// framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers every file of the page carries: the policy above, no guessing of types, no
/// referrer, and a cache that revalidates (the files change with the server's version).
fn headers(content_type: &'static str) -> [(HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

pub(crate) async fn index() -> impl IntoResponse {
    (headers("text/html; charset=utf-8"), include_str!("../assets/index.html"))
}

pub(crate) async fn script() -> impl IntoResponse {
    (headers("text/javascript; charset=utf-8"), include_str!("../assets/app.js"))
}

pub(crate) async fn style() -> impl IntoResponse {
    (headers("text/css; charset=utf-8"), include_str!("../assets/style.css"))
}
