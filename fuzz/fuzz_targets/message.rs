//! Refresh requests received from a queue: any bytes must decode to an error or to a request
//! that round-trips, never panic.
#![no_main]

use cacheback::queue::{MAX_MESSAGE_BYTES, RefreshRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = RefreshRequest::decode(data, MAX_MESSAGE_BYTES) else {
        return;
    };
    let bytes = request.encode().expect("a decoded request encodes");
    let again = RefreshRequest::decode(&bytes, MAX_MESSAGE_BYTES).expect("re-encoded request decodes");
    assert_eq!(again, request);
});
