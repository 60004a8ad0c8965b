//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
//! which every OpenAI client already knows how to show, and the JSON body
//! extractor that turns bad requests into them.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::Shared;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    /// A header the status calls for (`Retry-After`, `WWW-Authenticate`);
    /// boxed, as the rare case should not double every `Result`'s size.
    header: Option<Box<(HeaderName, HeaderValue)>>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            header: None,
        }
    }

    /// 400: the request is wrong; the message says what and how to fix it.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 about one field of the request.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::invalid(message)
        }
    }

    /// 400: the prompt and the output asked for do not fit the context.
    pub fn context_length(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("context_length_exceeded"),
            param: Some("messages".into()),
            ..ApiError::invalid(message)
        }
    }

    /// 404: a model this server does not serve. It never downloads one.
    pub fn model_not_found(model: &str, served: &str) -> ApiError {
        ApiError {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{model}` is not loaded; this server runs `{served}` \
                     (start `safeguard serve -m {model}` to serve another)"
                ),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    /// 404 for a response id this server does not hold, named in `param`
    /// (None: the id is the URL's).
    pub fn response_not_found(id: &str, param: Option<&str>) -> ApiError {
        ApiError {
            param: param.map(str::to_string),
            code: Some("response_not_found"),
            ..ApiError::not_found(format!(
                "no response with id '{id}' is stored here: it was sent with `store: false`, \
                 deleted, or evicted (the server keeps the last --responses-store responses, at \
                 most --responses-store-mib MiB, until it restarts); send the whole conversation \
                 as input instead"
            ))
        }
    }

    /// 401, with the `WWW-Authenticate` challenge RFC 7235 asks of it.
    pub fn unauthorized() -> ApiError {
        ApiError {
            code: Some("invalid_api_key"),
            header: Some(Box::new((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))),
            ..ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or incorrect API key: send `Authorization: Bearer <key>` with the key given to --api-key",
            )
        }
    }

    /// 503: the queue is full; try again after `retry_after` seconds.
    pub fn overloaded(retry_after: u64) -> ApiError {
        ApiError {
            code: Some("server_overloaded"),
            header: Some(Box::new((header::RETRY_AFTER, HeaderValue::from(retry_after)))),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is busy: every generation slot and queue place is taken; retry shortly",
            )
        }
    }

    /// 503: the engine stopped for good (a rank of a split model was lost);
    /// the message says why.
    pub fn engine_lost(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("engine_lost"),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 403: the request comes from somewhere this server does not serve
    /// (a `Host` or an `Origin` it does not accept).
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some(code),
            ..ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
        }
    }

    /// 415: a POST body that does not say it is JSON.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            message,
        )
    }

    /// 413: a body over `--max-body-mib`.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", message)
    }

    /// 422: the model gave no verdict (cut off, or an answer with no
    /// label). Not a 5xx: OpenAI's SDKs retry those, and a greedy run would
    /// only answer the same again.
    pub fn no_verdict(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("no_verdict"),
            ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "server_error", message)
        }
    }

    /// 409: what is asked for is not ready yet (an eval still running).
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message)
    }

    /// 503: the request was still running when the shutdown grace ran out.
    pub fn cut() -> ApiError {
        ApiError {
            code: Some("server_shutting_down"),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down: this request was still running when its \
                 --shutdown-timeout ran out, and was cut",
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The `{"error": …}` body, also sent as a stream's last event.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(header) = self.header {
            let (name, value) = *header;
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A JSON request body (its `Content-Type` is checked by the guard), and
/// every rejection is an [`ApiError`]: 413 over the size limit, 408 when it
/// does not arrive within `--read-timeout`, 400 for bad JSON or a field of
/// the wrong type, naming the field.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Shared) -> Result<Self, ApiError> {
        let limit = state.options().read_timeout;
        let read = tokio::time::timeout(limit, Bytes::from_request(request, state));
        let bytes = read.await.map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {} s (--read-timeout)",
                    limit.as_secs()
                ),
            )
        })?;
        let bytes = bytes.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large("the request body is over the size limit (--max-body-mib)")
            } else {
                ApiError::new(status, "invalid_request_error", rejection.body_text())
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::invalid("the request body is empty; send a JSON object"));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::invalid(format!(
                "invalid request body: {}",
                rejection.body_text()
            ))),
        }
    }
}
