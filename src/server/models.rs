//! OpenAI's model listing: `/v1/models` and `/v1/models/{id}`, the one
//! loaded model.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::Shared;

pub async fn models(State(state): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

pub async fn model(State(state): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    state.check_model(Some(&id))?;
    Ok(Json(model_object(&state)))
}

fn model_object(state: &Shared) -> Value {
    let m = state.model();
    json!({"id": m.id, "object": "model", "created": m.created, "owned_by": "organization_owner"})
}
