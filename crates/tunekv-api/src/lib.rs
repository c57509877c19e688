//! tunekv-api: the HTTP front end (DESIGN §9). Parses requests into tunekv-node calls and maps
//! results and typed errors back to HTTP. No consistency logic lives here: a level is parsed
//! and handed on, never interpreted.

mod http;

pub use http::{router, status_of};
