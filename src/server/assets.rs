//! The page, inside the binary: no CDN, no network, no build step.

/// `(content type, body)` of an asset by its name under `/assets/`.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", include_str!("assets/app.js"))),
        "style.css" => Some(("text/css; charset=utf-8", include_str!("assets/style.css"))),
        _ => None,
    }
}

pub const INDEX_HTML: &str = include_str!("assets/index.html");

/// The page loads only what the server itself sends.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";
