//! The demo app at `/demo/`: a page written on the JavaScript SDK (`sdk/js`), embedded in the
//! binary together with the SDK's built files, so it needs no build step, no npm and no
//! network. It only calls the public HTTP API, and reads which WebSocket address to use from
//! the comet registry.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use imgate_store::RegistryStore;
use serde_json::json;

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the demo: its path under `/demo/`, its content type and its bytes. The SDK
/// is served from the committed `sdk/js/dist/` (a test checks none of its files is missing).
const FILES: &[(&str, &str, &str)] = &[
    ("", HTML, include_str!("../demo/index.html")),
    ("demo.css", CSS, include_str!("../demo/demo.css")),
    ("demo.js", JS, include_str!("../demo/demo.js")),
    (
        "sdk/index.js",
        JS,
        include_str!("../../sdk/js/dist/index.js"),
    ),
    (
        "sdk/client.js",
        JS,
        include_str!("../../sdk/js/dist/client.js"),
    ),
    (
        "sdk/codec.js",
        JS,
        include_str!("../../sdk/js/dist/codec.js"),
    ),
    (
        "sdk/delivery.js",
        JS,
        include_str!("../../sdk/js/dist/delivery.js"),
    ),
    (
        "sdk/errors.js",
        JS,
        include_str!("../../sdk/js/dist/errors.js"),
    ),
    (
        "sdk/frame.js",
        JS,
        include_str!("../../sdk/js/dist/frame.js"),
    ),
    ("sdk/kick.js", JS, include_str!("../../sdk/js/dist/kick.js")),
    (
        "sdk/message.js",
        JS,
        include_str!("../../sdk/js/dist/message.js"),
    ),
    (
        "sdk/options.js",
        JS,
        include_str!("../../sdk/js/dist/options.js"),
    ),
    (
        "sdk/rooms.js",
        JS,
        include_str!("../../sdk/js/dist/rooms.js"),
    ),
    (
        "sdk/sequence.js",
        JS,
        include_str!("../../sdk/js/dist/sequence.js"),
    ),
    (
        "sdk/transport.js",
        JS,
        include_str!("../../sdk/js/dist/transport.js"),
    ),
];

/// The demo's routes, to merge into the HTTP API's router.
pub(crate) fn router(store: Arc<dyn RegistryStore>) -> Router {
    Router::new()
        .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
        .route("/demo/", get(|| async { file("") }))
        .route("/demo/config.json", get(config))
        .route(
            "/demo/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
        .with_state(store)
}

/// Where to open the demo, for the start-up log (loopback when bound to every address).
pub(crate) fn url(http_addr: std::net::SocketAddr, https: bool) -> String {
    let mut addr = http_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{addr}/demo/")
}

fn file(path: &str) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such demo file").into_response(),
    }
}

/// The comets' WebSocket addresses, as they registered them; the page connects to the first
/// one's port on the host it was loaded from.
async fn config(State(store): State<Arc<dyn RegistryStore>>) -> Response {
    let ws: Vec<String> = match store.comets().await {
        Ok(comets) => comets.into_iter().flat_map(|c| c.info.ws_addrs).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "demo: no comet registry");
            Vec::new()
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        json!({ "ws": ws }).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_sdk_file_is_served() {
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/js/dist");
        let entries = std::fs::read_dir(&dist).expect("sdk/js/dist is committed");
        for entry in entries {
            let name = entry.expect("a readable dist entry").file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".js") {
                let served = format!("sdk/{name}");
                assert!(
                    FILES.iter().any(|(path, _, _)| *path == served),
                    "{name} is in sdk/js/dist but not embedded in logic/src/demo.rs"
                );
            }
        }
    }

    #[test]
    fn the_demo_url_points_at_loopback_when_bound_everywhere() {
        assert_eq!(
            url("0.0.0.0:3111".parse().unwrap(), false),
            "http://127.0.0.1:3111/demo/"
        );
        assert_eq!(
            url("10.0.0.5:443".parse().unwrap(), true),
            "https://10.0.0.5:443/demo/"
        );
    }
}
