//! Where DataVolume bytes come from: HTTP(S) with CDI's options and S3 (signed with `rusty-s3`),
//! both as a stream plus its length. Every URL is checked by `safety::check_url` and the client
//! connects to the addresses that were checked.

use std::time::Duration;

use futures::TryStreamExt;
use tokio::io::AsyncRead;

use super::safety;
use super::StorageError;

/// An HTTP source as CDI describes it, with its Secret and ConfigMap already read.
#[derive(Debug, Clone, Default)]
pub struct HttpSource {
    pub url: String,
    /// `Name: value` lines (`extraHeaders`, `secretExtraHeaders`).
    pub extra_headers: Vec<String>,
    /// From `secretRef` (`accessKeyId`, `secretKey`): HTTP basic auth.
    pub basic_auth: Option<(String, String)>,
    /// PEM from `certConfigMap`.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_verify: bool,
}

pub type Body = Box<dyn AsyncRead + Unpin + Send>;

/// The HTTP boundary: what the importer fetches from (S3 goes through it with a signed URL).
pub trait Fetcher: Send + Sync {
    /// The body of `src` and its length when the server says.
    fn open<'a>(
        &'a self,
        src: &'a HttpSource,
        allow_private: bool,
    ) -> futures::future::BoxFuture<'a, Result<(Body, Option<u64>), StorageError>>;
}

/// The real one: reqwest, after `safety::check_url`.
pub struct HttpFetcher;

impl Fetcher for HttpFetcher {
    fn open<'a>(
        &'a self,
        src: &'a HttpSource,
        allow_private: bool,
    ) -> futures::future::BoxFuture<'a, Result<(Body, Option<u64>), StorageError>> {
        Box::pin(open_http(src, allow_private))
    }
}

/// Resolves every host the client connects to — a redirect's included — and refuses private
/// addresses there, at connect time: a redirect to a *name* that resolves to a metadata or
/// loopback address is refused as a URL naming it would be.
pub(crate) struct CheckedResolver;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|a| safety::private_address(a.ip())) {
                let message = format!("{host} resolves to {}, a loopback, link-local or metadata address", bad.ip());
                return Err(message.into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Headers an import may not set: hop-by-hop ones (they belong to the connection, and
/// `Host` steers virtual hosts past the URL check) and the ones cloud metadata services take
/// as proof a request is not forwarded (`Metadata-Flavor`, `X-aws-ec2-metadata-token`…).
const REFUSED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "metadata",
    "metadata-flavor",
    "x-google-metadata-request",
    "x-aws-ec2-metadata-token",
    "x-aws-ec2-metadata-token-ttl-seconds",
    "x-identity-header",
];

/// One `Name: value` line of `extraHeaders`, checked.
pub fn extra_header(line: &str) -> Result<(reqwest::header::HeaderName, reqwest::header::HeaderValue), StorageError> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| StorageError::refused(format!("extra header {line:?} is not \"Name: value\"")))?;
    let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| StorageError::refused(format!("extra header {line:?}: not a header name")))?;
    if REFUSED_HEADERS.contains(&name.as_str()) {
        return Err(StorageError::refused(format!("extra header {:?} may not be set by an import", name.as_str())));
    }
    let value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| {
        StorageError::refused(format!("extra header {:?}: the value is not a header value", name.as_str()))
    })?;
    Ok((name, value))
}

/// At most ten redirects, none to a literal loopback, link-local or metadata address unless
/// `allow_private` (names are the resolver's to check, at connect time).
pub(crate) fn checked_redirects(allow_private: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects");
        }
        if safety::private_host(attempt.url().host()) && !allow_private {
            attempt.error("redirect to a loopback, link-local or metadata address refused")
        } else {
            attempt.follow()
        }
    })
}

/// Opens `src`; returns the body and its length when the server says.
pub async fn open_http(src: &HttpSource, allow_private: bool) -> Result<(Body, Option<u64>), StorageError> {
    let url =
        url::Url::parse(&src.url).map_err(|e| StorageError::refused(format!("invalid URL {:?}: {e}", src.url)))?;
    let addrs = safety::check_url(&url, allow_private).await?;
    let host = url.host_str().unwrap_or_default().to_string();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .resolve_to_addrs(&host, &addrs)
        .no_proxy()
        .redirect(checked_redirects(allow_private));
    if let Some(pem) = &src.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| StorageError::refused(format!("certConfigMap holds no usable PEM certificate: {e}")))?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if src.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    if !allow_private {
        builder = builder.dns_resolver(std::sync::Arc::new(CheckedResolver));
    }
    let client = builder.build().map_err(|e| StorageError::Transient(format!("HTTP client: {e}")))?;
    let mut req = client.get(url.clone());
    for line in &src.extra_headers {
        let (name, value) = extra_header(line)?;
        req = req.header(name, value);
    }
    if let Some((user, pass)) = &src.basic_auth {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await.map_err(|e| StorageError::Transient(format!("GET {url}: {}", chain(&e))))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(StorageError::Transient(format!("GET {url}: the server answered {status}")));
    }
    let len = resp.content_length();
    let stream = resp.bytes_stream().map_err(|e| std::io::Error::other(chain(&e)));
    Ok((Box::new(tokio_util::io::StreamReader::new(stream)), len))
}

/// An error with its causes: reqwest's own message ("error sending request") hides the reason.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cur = cause.source();
    }
    text
}

/// An S3 object by URL: `http(s)://ENDPOINT/BUCKET/KEY` (path style), or
/// `s3://BUCKET/KEY` against AWS. Credentials from CDI's Secret keys.
pub fn s3_signed_url(url: &str, creds: Option<(&str, &str)>) -> Result<String, StorageError> {
    let bad = |why: &str| StorageError::refused(format!("S3 URL {url:?}: {why}"));
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    let (endpoint, bucket, key) = match parsed.scheme() {
        "s3" => {
            let bucket = parsed.host_str().ok_or_else(|| bad("no bucket"))?.to_string();
            let endpoint = url::Url::parse("https://s3.amazonaws.com").map_err(|e| bad(&e.to_string()))?;
            (endpoint, bucket, parsed.path().trim_start_matches('/').to_string())
        }
        "http" | "https" => {
            let path = parsed.path().trim_start_matches('/');
            let (bucket, key) = path.split_once('/').ok_or_else(|| bad("expected /BUCKET/KEY"))?;
            let mut endpoint = parsed.clone();
            endpoint.set_path("/");
            endpoint.set_query(None);
            (endpoint, bucket.to_string(), key.to_string())
        }
        other => return Err(bad(&format!("scheme {other:?} is not s3, http or https"))),
    };
    if key.is_empty() {
        return Err(bad("no object key"));
    }
    let bucket = rusty_s3::Bucket::new(endpoint, rusty_s3::UrlStyle::Path, bucket, "us-east-1")
        .map_err(|e| bad(&e.to_string()))?;
    let credentials = creds.map(|(k, s)| rusty_s3::Credentials::new(k, s));
    use rusty_s3::S3Action;
    Ok(bucket.get_object(credentials.as_ref(), &key).sign(Duration::from_secs(3600)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_headers_cannot_steer_or_impersonate() {
        assert!(extra_header("X-Token: abc").is_ok());
        for bad in
            ["Host: 169.254.169.254", "Metadata-Flavor: Google", "transfer-encoding: chunked", "no colon", "A B: c"]
        {
            assert!(extra_header(bad).is_err(), "{bad}");
        }
        assert!(extra_header("X-A: line\r\nInjected: 1").is_err());
    }

    #[test]
    fn s3_urls_name_endpoint_bucket_and_key() {
        let signed = s3_signed_url("http://127.0.0.1:8333/images/disk.qcow2", Some(("AK", "SK"))).unwrap();
        assert!(signed.starts_with("http://127.0.0.1:8333/images/disk.qcow2?"), "{signed}");
        assert!(signed.contains("X-Amz-Credential=AK"), "{signed}");
        assert!(s3_signed_url("http://h/only-bucket", None).is_err());
        assert!(s3_signed_url("ftp://h/b/k", None).is_err());
    }
}
