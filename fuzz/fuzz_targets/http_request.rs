//! Feeds arbitrary HTTP requests (method, request target, headers, body) to the API's
//! request-parsing layer, `tunekv_api::request::parse`, the pure function every request goes
//! through before the node sees it, then `tunekv_api::authz::authorize` for an open, an empty
//! and a prefix-restricted caller. It must never panic; what it accepts must respect the key
//! and batch limits; what it refuses must be a client error rendered as the JSON error shape
//! with a bounded message.
//!
//! Input layout: byte 0 picks the method; then the request target up to `\n`; then header
//! lines `name: value` up to an empty line; the rest is the body.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tunekv_api::request::{parse, ApiRequest};
use tunekv_core::limits::check_key;
use tunekv_core::SessionKey;

const METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW",
];
/// tunekv-node's BATCH_KEYS_MAX.
const BATCH_KEYS_MAX: usize = 1000;

fn session_key() -> &'static SessionKey {
    static KEY: OnceLock<SessionKey> = OnceLock::new();
    KEY.get_or_init(|| SessionKey::new(b"the fuzz target's cluster secret").expect("a valid secret"))
}

/// The bytes up to the first `\n` (without it), and the rest.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// What an open, an empty and a prefix-restricted caller may do with `req`: never a panic,
/// and with auth off, everything.
fn authorize(req: &ApiRequest) {
    use tunekv_core::auth::{Access, Grants, Permission};
    assert!(tunekv_api::authz::authorize(&Grants::open(), req).is_ok());
    let prefix = Permission {
        keyspace: "ks".into(),
        prefix: "a/".into(),
        access: Access::Read,
    };
    for grants in [Grants::nobody(), Grants::of("fuzz", vec![prefix])] {
        let _ = tunekv_api::authz::authorize(&grants, req);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(m) % METHODS.len()].as_bytes())
        .expect("a valid method");
    let (target, mut rest) = line(rest);
    // hyper refuses a request target that is not a URI before any handler runs.
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    loop {
        let (header, after) = line(rest);
        rest = after;
        if header.is_empty() {
            break;
        }
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&header[..colon]),
            HeaderValue::from_bytes(header[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let body = Bytes::copy_from_slice(rest);
    match parse(session_key(), &method, &uri, &headers, body) {
        Ok(req) => {
            match &req {
                ApiRequest::Get { key, .. }
                | ApiRequest::Put { key, .. }
                | ApiRequest::Delete { key, .. } => assert!(check_key(key).is_ok()),
                ApiRequest::BatchGet { keys, .. } => {
                    assert!((1..=BATCH_KEYS_MAX).contains(&keys.len()));
                    assert!(keys.iter().all(|k| check_key(k).is_ok()));
                }
                _ => {}
            }
            authorize(&req);
        }
        Err(refusal) => {
            let code = refusal.error.code;
            let status = tunekv_api::status_of(code);
            assert!(status.is_client_error(), "{code} for a malformed request");
            let response = tunekv_api::refusal_response(refusal);
            assert_eq!(response.status(), status);
            let body = futures::executor::block_on(axum::body::to_bytes(
                response.into_body(),
                1 << 20,
            ))
            .expect("a complete body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error");
            assert_eq!(v["error"]["code"], code.as_str());
            let message = v["error"]["message"].as_str().expect("a message");
            assert!(!message.is_empty());
            assert!(message.chars().count() <= tunekv_api::MESSAGE_CHARS_MAX + 1);
        }
    }
});
