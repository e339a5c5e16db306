//! Extractors whose rejections are the server's JSON errors: axum's own
//! `Path` and `Query` answer a malformed parameter (`DELETE
//! /admin/assignments/junk`, an unknown query key) with `text/plain`.

use crate::error::Error;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// [`axum::extract::Path`] with a JSON 400 on rejection.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| Error::BadRequest(format!("path: {}", e.body_text())))
    }
}

/// [`axum::extract::Query`] with a JSON 400 on rejection.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| Error::BadRequest(format!("query: {}", e.body_text())))
    }
}

/// Fallback for a known path with a method it does not have: JSON 405.
pub async fn method_not_allowed() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(serde_json::json!({
            "error": "method_not_allowed",
            "message": "this path does not take that method"
        })),
    )
        .into_response()
}
