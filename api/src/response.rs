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
        resp.append_header(("Warning", format!("299 - {}", quote_warning(w))));
    }
    resp.body(body.to_string())
}

/// The warning text as an HTTP quoted-string that is always a valid header value: quotes and
/// backslashes escaped, every control character (DEL and C1 included) as `\uXXXX`. Field names
/// in warnings come from the request, and a DEL in one made the answer a 500 (a fuzz finding).
pub fn quote_warning(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn status_response(e: &ApiError) -> HttpResponse {
    if e.code >= 500 {
        tracing::error!(code = e.code, message = %e.message, "request failed");
    }
    json_response(e.code, &e.to_status(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_warning_text_makes_a_valid_header() {
        let nasty = "unknown field \"spec.\u{7f}a\u{1c}b\u{9d}c\\d\" é ✓";
        let quoted = quote_warning(nasty);
        assert!(actix_web::http::header::HeaderValue::from_str(&format!("299 - {quoted}")).is_ok(), "{quoted}");
        assert_eq!(quoted, "\"unknown field \\\"spec.\\u007fa\\u001cb\\u009dc\\\\d\\\" é ✓\"");
        let resp = json_response(200, &serde_json::json!({}), &[nasty.to_string()]);
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("warning").is_some());
    }
}
