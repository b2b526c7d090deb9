//! Response helpers: JSON bodies, `Status` errors and `Warning` headers.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use converge_engine::ApiError;
use serde_json::Value;

pub type Warnings = Vec<String>;

pub fn json_response(code: u16, body: &Value, warnings: &[String]) -> HttpResponse {
    let mut resp = HttpResponse::build(StatusCode::from_u16(code).unwrap_or(StatusCode::OK));
    resp.content_type("application/json");
    for w in warnings {
        resp.append_header(("Warning", format!("299 - {}", Value::String(w.clone()))));
    }
    resp.body(body.to_string())
}

pub fn status_response(e: &ApiError) -> HttpResponse {
    if e.code >= 500 {
        tracing::error!(code = e.code, message = %e.message, "request failed");
    }
    json_response(e.code, &e.to_status(), &[])
}
