//! The web console at `/ui/`: a page (`api/ui/src/index.html`) and its two assets, built from
//! `api/ui/src` by esbuild and committed under `api/ui/dist`, so a plain `cargo build` needs
//! neither npm nor the network.
//! They hold no data: the page asks for a token and reads everything else through the API, so
//! the routes are public, as `/docs` is.

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use std::sync::OnceLock;

/// Everything under it is served without a token.
pub const PREFIX: &str = "/ui";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { path: "/ui/", content_type: "text/html; charset=utf-8", body: include_bytes!("../ui/src/index.html") },
    Asset {
        path: "/ui/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/dist/assets/app.js"),
    },
    Asset {
        path: "/ui/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/dist/assets/app.css"),
    },
];

/// Scripts only from here; styles from here and those xterm.js sets at run time (it writes a
/// `<style>` element for its theme); connections to this origin only (its websockets
/// included); nothing may frame the console, so a click cannot be stolen.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Is `path` one of the console's public routes?
pub fn is_public(path: &str) -> bool {
    path == PREFIX || path.starts_with("/ui/")
}

/// Each asset as served: a strong validator (a reload costs a 304) and its gzip form (the
/// script is 610 KB, 172 KB gzipped), made once, on the first request.
struct Prepared {
    etag: String,
    gzip: Vec<u8>,
}

fn prepared() -> &'static Vec<Prepared> {
    static PREPARED: OnceLock<Vec<Prepared>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        use sha2::Digest;
        use std::io::Write;
        ASSETS
            .iter()
            .map(|a| {
                let digest = sha2::Sha256::digest(a.body);
                let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Into memory: it cannot fail; an empty result would be served plain instead.
                let gzip = gz.write_all(a.body).and_then(|_| gz.finish()).unwrap_or_default();
                Prepared { etag: hex, gzip }
            })
            .collect()
    })
}

/// Does the client take gzip (`Accept-Encoding: gzip`, not refused with `q=0`)?
fn takes_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|part| {
        let mut fields = part.split(';').map(str::trim);
        let coding = fields.next().unwrap_or("");
        let refused = fields.any(|f| f.replace(' ', "") == "q=0" || f.replace(' ', "") == "q=0.0");
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(PREFIX, web::get().to(redirect)).route("/ui/{tail:.*}", web::get().to(serve));
}

async fn redirect() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/ui/")).finish()
}

async fn serve(req: HttpRequest) -> HttpResponse {
    let Some(index) = ASSETS.iter().position(|a| a.path == req.path()) else {
        return crate::response::status_response(&converge_engine::ApiError::route_not_found());
    };
    let (asset, prepared) = (&ASSETS[index], &prepared()[index]);
    let header_text = |name| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let gzip = !prepared.gzip.is_empty() && takes_gzip(header_text(header::ACCEPT_ENCODING));
    // The two forms are different bytes: each has its own validator.
    let etag = if gzip { format!("\"{}-gz\"", prepared.etag) } else { format!("\"{}\"", prepared.etag) };
    let fresh = header_text(header::IF_NONE_MATCH).split(',').any(|t| t.trim() == etag);
    let mut answer = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    answer
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if fresh {
        return answer.finish();
    }
    answer.content_type(asset.content_type);
    if gzip {
        answer.insert_header((header::CONTENT_ENCODING, "gzip")).body(prepared.gzip.as_slice())
    } else {
        answer.body(asset.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as web_test;

    #[actix_web::test]
    async fn serves_the_page_and_assets_with_a_strict_policy() {
        let app = web_test::init_service(actix_web::App::new().configure(routes)).await;
        for asset in ASSETS {
            let resp = web_test::call_service(&app, web_test::TestRequest::get().uri(asset.path).to_request()).await;
            assert_eq!(resp.status(), 200, "{}", asset.path);
            let csp = resp.headers().get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok());
            assert!(csp.is_some_and(|p| p.contains("script-src 'self';")), "{}", asset.path);
            let etag = resp.headers().get(header::ETAG).cloned().expect("an etag");
            let again =
                web_test::TestRequest::get().uri(asset.path).insert_header((header::IF_NONE_MATCH, etag)).to_request();
            assert_eq!(web_test::call_service(&app, again).await.status(), 304);
        }
        let resp = web_test::call_service(&app, web_test::TestRequest::get().uri("/ui").to_request()).await;
        assert_eq!(resp.status(), 308);
        let resp =
            web_test::call_service(&app, web_test::TestRequest::get().uri("/ui/../etc/passwd").to_request()).await;
        assert_eq!(resp.status(), 404);
        let resp =
            web_test::call_service(&app, web_test::TestRequest::get().uri("/ui/assets/nope.js").to_request()).await;
        assert_eq!(resp.status(), 404);
    }

    #[actix_web::test]
    async fn gzip_goes_to_clients_that_take_it() {
        let app = web_test::init_service(actix_web::App::new().configure(routes)).await;
        let get = |accept: &'static str| {
            web_test::TestRequest::get()
                .uri("/ui/assets/app.js")
                .insert_header((header::ACCEPT_ENCODING, accept))
                .to_request()
        };
        let resp = web_test::call_service(&app, get("gzip, deflate, br")).await;
        assert_eq!(resp.headers().get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()), Some("gzip"));
        let body = web_test::read_body(resp).await;
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain).expect("gunzip");
        assert_eq!(plain, ASSETS[1].body);
        assert!(body.len() < ASSETS[1].body.len() / 2, "{} of {}", body.len(), ASSETS[1].body.len());
        for refused in ["identity", "gzip;q=0", "br"] {
            let resp = web_test::call_service(&app, get(refused)).await;
            assert!(resp.headers().get(header::CONTENT_ENCODING).is_none(), "{refused}");
        }
    }

    #[test]
    fn public_paths_are_the_console_only() {
        assert!(is_public("/ui") && is_public("/ui/") && is_public("/ui/assets/app.js"));
        assert!(!is_public("/uix") && !is_public("/api/v1/namespaces") && !is_public("/u"));
    }

    #[test]
    fn the_page_loads_only_its_own_assets() {
        let page = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        assert!(page.contains("/ui/assets/app.js") && page.contains("/ui/assets/app.css"));
        assert!(!page.contains("http://") && !page.contains("https://"), "no external origin");
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.body);
            assert!(
                !text.contains("fonts.googleapis") && !text.contains("cdn.jsdelivr") && !text.contains("unpkg.com")
            );
        }
    }
}
