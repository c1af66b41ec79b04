//! The body types of the layer: the empty body of the requests it sends the origin, the
//! origin's body with its type erased, and the body of the responses it answers with (cached
//! bytes, the inner service's own body, or a fetched body handed on as it streams).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use crate::error::BoxError;

/// The body of an origin's response, its type erased.
pub(crate) type OriginStream = UnsyncBoxBody<Bytes, BoxError>;

/// The body of the requests the layer sends to the origin service: always empty (the layer
/// caches `GET` and `HEAD` only).
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct OriginBody;

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

/// The body of a response from [`CachebackService`](crate::http::CachebackService): cached
/// bytes; the body of the inner service's response when the request went past the cache; or,
/// for the request whose fetch found a response that is not stored, the origin's body as it
/// streams (the bytes the fetch had read, then the rest).
///
/// Its errors are boxed: the inner service's body errors, converted, or the origin's.
pub struct CacheBody<B> {
    repr: Repr<B>,
}

enum Repr<B> {
    Bytes(Option<Bytes>),
    Inner(Pin<Box<B>>),
    Origin {
        read: VecDeque<Bytes>,
        rest: OriginStream,
    },
}

impl<B> CacheBody<B> {
    pub(crate) fn bytes(bytes: Bytes) -> Self {
        CacheBody {
            repr: Repr::Bytes((!bytes.is_empty()).then_some(bytes)),
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        CacheBody {
            repr: Repr::Inner(Box::pin(body)),
        }
    }

    /// The origin's body: the chunks a fetch already read from it, then the rest of it.
    pub(crate) fn origin(read: Vec<Bytes>, rest: OriginStream) -> Self {
        CacheBody {
            repr: Repr::Origin {
                read: read.into_iter().filter(|b| !b.is_empty()).collect(),
                rest,
            },
        }
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Bytes(bytes) => f
                .debug_struct("CacheBody")
                .field("cached_bytes", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Repr::Inner(_) => f.debug_struct("CacheBody").finish_non_exhaustive(),
            Repr::Origin { read, .. } => f
                .debug_struct("CacheBody")
                .field(
                    "origin_bytes_read",
                    &read.iter().map(Bytes::len).sum::<usize>(),
                )
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().repr {
            Repr::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Repr::Inner(body) => body
                .as_mut()
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            Repr::Origin { read, rest } => match read.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.repr {
            Repr::Bytes(bytes) => bytes.is_none(),
            Repr::Inner(body) => body.is_end_stream(),
            Repr::Origin { read, rest } => read.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.repr {
            Repr::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Repr::Inner(body) => body.size_hint(),
            Repr::Origin { read, rest } => {
                let read = read.iter().map(|b| b.len() as u64).sum::<u64>();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn an_origin_body_is_what_was_read_then_the_rest() {
        let rest = Full::new(Bytes::from_static(b"cd"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let read = vec![
            Bytes::from_static(b"a"),
            Bytes::new(),
            Bytes::from_static(b"b"),
        ];
        let body = CacheBody::<Full<Bytes>>::origin(read, rest);
        assert_eq!(body.size_hint().exact(), Some(4));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");

        // The rest's errors come through.
        let failing = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"c"))),
            Err(BoxError::from("cut")),
        ]);
        let rest = StreamBody::new(failing).boxed_unsync();
        let body = CacheBody::<Full<Bytes>>::origin(vec![Bytes::from_static(b"ab")], rest);
        assert_eq!(body.size_hint().lower(), 2);
        let error = body.collect().await.unwrap_err();
        assert_eq!(error.to_string(), "cut");
    }
}
