//! The two body types of the layer: the empty body of the requests it sends the origin, and
//! the body of the responses it answers with (cached bytes, or the inner service's own body).

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

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
/// bytes, or the body of the inner service's response when the request went past the cache.
pub struct CacheBody<B> {
    repr: Repr<B>,
}

enum Repr<B> {
    Bytes(Option<Bytes>),
    Inner(Pin<Box<B>>),
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
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Bytes(bytes) => f
                .debug_struct("CacheBody")
                .field("cached_bytes", &bytes.as_ref().map_or(0, Bytes::len))
                .finish(),
            Repr::Inner(_) => f.debug_struct("CacheBody").finish_non_exhaustive(),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().repr {
            Repr::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Repr::Inner(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.repr {
            Repr::Bytes(bytes) => bytes.is_none(),
            Repr::Inner(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.repr {
            Repr::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Repr::Inner(body) => body.size_hint(),
        }
    }
}
