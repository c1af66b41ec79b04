//! Value and args encodings.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

mod probe;

/// How values and args are turned into bytes for stores and queues that hold bytes.
///
/// The in-memory store never encodes values (it keeps them as `Arc`s); the codec is used for
/// args on the queue, for remote stores and for measuring a value's size against the limit.
/// Each codec has a one-byte id written into every envelope, so an entry written with another
/// codec reads as a miss instead of as garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// [postcard](https://docs.rs/postcard): compact, stable, `no_std`-grade wire format.
    #[default]
    Postcard,
    /// JSON, for stores that humans inspect (feature `json`).
    #[cfg(feature = "json")]
    Json,
}

impl Codec {
    /// The id written into envelopes and messages.
    pub fn id(self) -> u8 {
        match self {
            Codec::Postcard => 1,
            #[cfg(feature = "json")]
            Codec::Json => 2,
        }
    }

    /// The codec with this id, if this build knows it.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Postcard),
            #[cfg(feature = "json")]
            2 => Some(Codec::Json),
            _ => None,
        }
    }

    /// The codec's name (`"postcard"`, `"json"`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Postcard => "postcard",
            #[cfg(feature = "json")]
            Codec::Json => "json",
        }
    }

    /// The name of the codec with this id, or `"unknown"`.
    pub(crate) fn name_of(id: u8) -> String {
        Codec::from_id(id).map_or_else(
            || format!("unknown codec (id {id})"),
            |c| c.name().to_owned(),
        )
    }

    /// Encodes `value`.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>> {
        match self {
            Codec::Postcard => {
                postcard::to_stdvec(value).map_err(|e| serialize_error(self, value, e))
            }
            #[cfg(feature = "json")]
            Codec::Json => serde_json::to_vec(value).map_err(|e| serialize_error(self, value, e)),
        }
    }

    /// Decodes a `T` from `bytes`. Never panics on bad input; a failure is an [`Error::Codec`].
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T> {
        match self {
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| {
                Error::codec(format_args!("{} cannot decode the value: {e}", self.name()))
            }),
            #[cfg(feature = "json")]
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| {
                Error::codec(format_args!("{} cannot decode the value: {e}", self.name()))
            }),
        }
    }

    /// The encoded size of `value`, without keeping the encoding.
    pub fn encoded_len<T: Serialize + ?Sized>(self, value: &T) -> Result<usize> {
        match self {
            Codec::Postcard => postcard::experimental::serialized_size(value)
                .map_err(|e| serialize_error(self, value, e)),
            #[cfg(feature = "json")]
            Codec::Json => {
                let mut counter = CountingWriter(0);
                serde_json::to_writer(&mut counter, value)
                    .map_err(|e| serialize_error(self, value, e))?;
                Ok(counter.0)
            }
        }
    }
}

/// An encoding failure, with the message of the value's own `Serialize` when the codec dropped
/// it (postcard keeps no text for custom errors).
fn serialize_error<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
    error: impl std::fmt::Display,
) -> Error {
    let codec_text = error.to_string();
    match probe::serialize_message(value) {
        Some(message) if !codec_text.contains(&message) => Error::codec(format_args!(
            "{} cannot encode the value: {message}",
            codec.name()
        )),
        _ => Error::codec(format_args!(
            "{} cannot encode the value: {codec_text}",
            codec.name()
        )),
    }
}

#[cfg(feature = "json")]
struct CountingWriter(usize);

#[cfg(feature = "json")]
impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcard_round_trips_and_rejects_garbage() {
        let c = Codec::Postcard;
        let bytes = c.encode(&("bob", 42u32)).unwrap();
        assert_eq!(c.encoded_len(&("bob", 42u32)).unwrap(), bytes.len());
        let back: (String, u32) = c.decode(&bytes).unwrap();
        assert_eq!(back, ("bob".to_owned(), 42));
        let err = c.decode::<(String, u32)>(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.kind(), "codec");
        assert_eq!(Codec::from_id(c.id()), Some(c));
        assert_eq!(Codec::from_id(0), None);
    }

    /// A value whose `Serialize` refuses with its own message.
    struct Refuses;

    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("balance must not be negative"))
        }
    }

    #[test]
    fn a_serialize_error_keeps_the_types_own_message() {
        let nested = (1u8, vec![Some(Refuses)]);
        for err in [
            Codec::Postcard.encode(&nested).unwrap_err(),
            Codec::Postcard.encoded_len(&nested).unwrap_err(),
        ] {
            assert_eq!(
                err.to_string(),
                "codec error: postcard cannot encode the value: balance must not be negative"
            );
        }
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // A varint claiming a ~4 GiB Vec followed by nothing: must fail, not allocate or panic.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Codec::Postcard.decode::<Vec<u64>>(&bytes).is_err());
    }
}
