//! Session tokens, bearer tokens, causal contexts and watch cursors
//! (`tunekv_node::fuzzing::contexts_and_cursors`, which runs `tunekv_core::fuzzing::sealed`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tunekv_node::fuzzing::contexts_and_cursors(data));
