//! The few pages the relay itself answers with.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::{full, Body};

fn page(status: StatusCode, html: String) -> Response<Body> {
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// No such app, not yours, or its workspace is stopped: one page for all three.
pub(crate) fn not_found() -> Response<Body> {
    page(
        StatusCode::NOT_FOUND,
        ferry_proto::app_host::NOT_FOUND_PAGE.to_string(),
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn bad_request(why: &str) -> Response<Body> {
    page(
        StatusCode::BAD_REQUEST,
        format!(
            "<!doctype html><title>Bad request</title><h1>400: bad request</h1><p>{}</p>\n",
            escape(why)
        ),
    )
}

/// The app or the way to it failed (not the browser's fault).
pub(crate) fn bad_gateway(why: &str) -> Response<Body> {
    page(
        StatusCode::BAD_GATEWAY,
        format!(
            "<!doctype html><title>Bad gateway</title><h1>502: the app did not answer</h1><p>{}</p>\n",
            escape(why)
        ),
    )
}
