//! Entry envelopes read back from a store: any bytes must decode to an error or to an entry
//! that re-encodes to the same bytes, never panic, never allocate beyond the input.
#![no_main]

use bytes::Bytes;
use cacheback::__fuzz::{decode_envelope, encode_envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = decode_envelope(Bytes::copy_from_slice(data), 1 << 20) else {
        return;
    };
    let again = encode_envelope(&entry).expect("a decoded envelope holds bytes");
    assert_eq!(again, data, "decode then encode must give the same bytes");
});
