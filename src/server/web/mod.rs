//! The policy playground: a page at `/` for writing a policy, trying it on
//! content and measuring it on a labelled set, and the API behind it
//! (`/v1/policies`, `/v1/try`, `/v1/evals`), usable without the page.
//!
//! The page is three embedded files, no framework and nothing fetched from
//! elsewhere. Every text it shows (policy, content, model output) is set as
//! text, never parsed as HTML, and a strict Content-Security-Policy keeps
//! any script but its own from running.

mod evals;
pub(super) mod judge;
mod policies;
mod trial;

use std::path::PathBuf;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use self::policies::default_dir;
use super::Shared;

/// What the playground keeps while the server runs.
pub struct Web {
    policies: policies::Store,
    evals: evals::Evals,
}

impl Web {
    pub fn new(policies_dir: PathBuf) -> Web {
        Web {
            policies: policies::Store::new(policies_dir),
            evals: evals::Evals::default(),
        }
    }
}

/// The page's files: path, type, content.
const ASSETS: [(&str, &str, &str); 3] = [
    ("/", "text/html; charset=utf-8", include_str!("assets/index.html")),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
];

/// Only the page's own files run and load; it talks to this server alone.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The page's files are open without the API key: the page asks for it.
pub fn is_public(method: &Method, path: &str) -> bool {
    method == Method::GET && ASSETS.iter().any(|(p, _, _)| *p == path)
}

pub fn routes() -> Router<Shared> {
    let mut router = Router::new();
    for (path, kind, body) in ASSETS {
        router = router.route(
            path,
            get(move || async move { ([(header::CONTENT_TYPE, kind)], body).into_response() }),
        );
    }
    router
        .route("/v1/policies", get(policies::list))
        .route("/v1/policies/lint", post(policies::lint))
        .route(
            "/v1/policies/{name}",
            get(policies::get).put(policies::put).delete(policies::delete),
        )
        .route("/v1/policies/{name}/versions", get(policies::versions))
        .route("/v1/policies/{name}/versions/{version}", get(policies::version))
        .route("/v1/try", post(trial::create))
        .route("/v1/evals", post(evals::create))
        .route("/v1/evals/{id}", get(evals::get).delete(evals::delete))
        .route("/v1/evals/{id}/status", get(evals::status))
        .route("/v1/evals/{id}/events", get(evals::events))
        .route("/v1/evals/{id}/items", get(evals::items))
        .route("/v1/evals/{id}/report", get(evals::report_html))
}

/// Security headers on every response: nothing is sniffed into another
/// type, and the CSP holds for the page and anything opened from the API.
pub async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}
