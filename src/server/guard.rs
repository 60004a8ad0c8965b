//! What a request must be before a handler sees it. A server on 127.0.0.1
//! without a key is still reachable from every web page its user opens: the
//! browser sends "simple" cross-origin POSTs (`text/plain` bodies) without
//! asking, and DNS rebinding lets a page read the answers under its own
//! host name. So, as Ollama and llama.cpp do: the `Host` must name this
//! server, an `Origin` must be this server or one `--cors` allows, a POST
//! body must say it is JSON, and a body over the limit is refused from its
//! `Content-Length` before a byte of it is read (which also answers
//! `Expect: 100-continue` with 413 instead of 100).

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::error::ApiError;
use super::Shared;

/// Which web pages (origins) may use the server from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// Only pages served by this server itself.
    Off,
    Any,
    /// `scheme://host[:port]`, as browsers send them in `Origin`.
    Origins(Vec<String>),
}

impl Cors {
    /// `*` for any origin, or a comma-separated list of origins.
    pub fn parse(spec: &str) -> Result<Cors, String> {
        if spec.trim() == "*" {
            return Ok(Cors::Any);
        }
        let origins = spec
            .split(',')
            .map(|origin| {
                let origin = origin.trim().trim_end_matches('/');
                let (scheme, authority) = origin.split_once("://").unwrap_or(("", ""));
                if scheme.is_empty() || authority.is_empty() || authority.contains('/') {
                    return Err(format!(
                        "--cors takes origins such as http://localhost:3000 (scheme://host[:port], \
                         comma-separated) or nothing for any origin; got {origin:?}"
                    ));
                }
                Ok(origin.to_ascii_lowercase())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cors::Origins(origins))
    }

    fn allows(&self, origin: &str) -> bool {
        match self {
            Cors::Off => false,
            Cors::Any => true,
            Cors::Origins(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// The layer answering preflights and adding `Access-Control-*`
    /// headers; None when browsers get no CORS headers at all.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            Cors::Off => return None,
            Cors::Any => AllowOrigin::any(),
            Cors::Origins(list) => {
                AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
            }
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::OPTIONS,
                ])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(std::time::Duration::from_secs(600)),
        )
    }
}

/// Refuses requests for another host, from another origin, with a body
/// that is not JSON or is too large; see the module's documentation.
pub async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    match check(&state, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check(state: &Shared, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let options = state.options();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    // With a key, a rebound page cannot use the server anyway, and proxies
    // or LAN names may reach it under any name.
    if let (None, Some(host)) = (&options.api_key, host) {
        if !host_allowed(host_name(host), options.host) {
            return Err(ApiError::forbidden(
                "host_not_allowed",
                format!(
                    "this server answers to {}, localhost or 127.0.0.1, not to the host {host:?} \
                     (a web page reaching it under another name is refused); use one of those \
                     addresses, or start it with --api-key to accept any host name",
                    options.host
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let same = host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
        if !same && !options.cors.allows(origin) {
            return Err(ApiError::forbidden(
                "origin_not_allowed",
                format!(
                    "cross-origin requests from {origin:?} are refused; start the server with \
                     `--cors {origin}` (or `--cors` for any origin) to let that web page use it"
                ),
            ));
        }
    }
    if method == Method::POST {
        let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !kind.is_some_and(is_json) {
            return Err(ApiError::unsupported_media_type(format!(
                "send the body as JSON with `Content-Type: application/json` (curl: --json BODY, \
                 or -H 'Content-Type: application/json'); this request has {}",
                kind.map_or("no Content-Type".to_string(), |k| format!("Content-Type: {k}"))
            )));
        }
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length.filter(|&n| n > options.max_body_bytes as u64) {
        return Err(ApiError::too_large(format!(
            "the request body is {length} bytes, over the limit of {} MiB (--max-body-mib)",
            options.max_body_bytes >> 20
        )));
    }
    Ok(())
}

/// The host of a `Host` header: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `localhost`, a loopback address, or the address listened on (any
/// address literal when listening on all of them: only a name can be
/// rebound to this machine).
fn host_allowed(name: &str, listen: IpAddr) -> bool {
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip == listen || listen.is_unspecified(),
        Err(_) => false,
    }
}

/// `application/json` or a `+json` type, parameters (charset) aside.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// With --api-key, every request but the health check, CORS preflights and
/// the playground page's own files must carry `Authorization: Bearer <key>` (the scheme in any case, as
/// RFC 7235 says).
pub async fn authorize(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options().api_key {
        let path = request.uri().path();
        let open = request.method() == Method::OPTIONS
            || path == "/health"
            || super::web::is_public(request.method(), path);
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        // Constant time: how long a wrong key takes must not tell how much of it was right.
        let valid = given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(key.as_bytes())));
        if !open && !valid {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_read_without_their_port() {
        assert_eq!(host_name("localhost:1234"), "localhost");
        assert_eq!(host_name("[::1]:1234"), "::1");
        assert_eq!(host_name("[::1]"), "::1");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn only_local_names_and_the_listening_address_are_hosts() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.5".parse().unwrap();
        let all: IpAddr = "0.0.0.0".parse().unwrap();
        assert!(host_allowed("LocalHost", local));
        assert!(host_allowed("::1", local));
        assert!(!host_allowed("attacker.example", local));
        assert!(!host_allowed("192.168.1.5", local));
        assert!(host_allowed("192.168.1.5", lan));
        assert!(host_allowed("10.0.0.7", all));
        assert!(!host_allowed("localhost.attacker.example", all));
    }

    #[test]
    fn json_types_with_parameters_count_as_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn cors_takes_any_or_a_list_of_origins() {
        assert_eq!(Cors::parse("*"), Ok(Cors::Any));
        assert_eq!(
            Cors::parse("http://a.example, https://B.example:8443/"),
            Ok(Cors::Origins(vec![
                "http://a.example".into(),
                "https://b.example:8443".into()
            ]))
        );
        assert!(Cors::parse("a.example").is_err());
        assert!(Cors::parse("http://a.example/page").is_err());
    }
}
