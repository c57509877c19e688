//! tunekv-api: the HTTP front end (DESIGN §9). Parses requests into tunekv-node calls and maps
//! results and typed errors back to HTTP. No consistency logic lives here: a level is parsed
//! and handed on, never interpreted.
//!
//! `request` decodes a request (pure: the fuzz target drives it), `http` executes it on the
//! node, `batch` builds batch-get answers, `listener` serves connections with their limits.

pub mod authz;
mod batch;
mod http;
mod listener;
pub mod request;

pub use http::{
    bearer_of, error_response, outcome_of, read_body, refusal_response, router, status_of,
    value_json, BodyBudget, BodyHold, BODY_BYTES_MAX, H_EXPIRES, H_POSITION, H_SERVED_BY,
    H_STALENESS, H_VERSION, MESSAGE_CHARS_MAX, SIGN_IN_FORM, SIGN_IN_JS,
};
pub use listener::{serve, HttpLimits, SHUTDOWN_WAIT_MS};
