//! What goes into the core: the [`Event`]s a host reports to [`crate::Worker::handle`] (a
//! request, a request that ended, a call that ended and how, a wake-up).
//!
//! What it does not do: say what the core does with them (`worker` does).

use crate::commands::{CallId, OwnedRequest};
use crate::read::Unreadable;

/// How a call ended, as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// An HTTP call's answer: its `:status` (`None` when the call failed: reset, timeout, no
    /// status) and body.
    Http {
        status: Option<u16>,
        body: Option<Vec<u8>>,
    },
    /// A gRPC call's answer: its status (0 is OK) and message.
    Grpc { status: u32, body: Option<Vec<u8>> },
    /// The host could not make the call (e.g. no such cluster).
    NotStarted,
    /// The call's answer cannot arrive any more (the request it was made from went away, and
    /// the proxy delivers answers only there). Not a failure of the far side.
    Abandoned,
}

/// What the host reports to [`crate::Worker::handle`], with the time it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request's headers were read (see [`crate::read_request`]).
    Request {
        context_id: u32,
        request: OwnedRequest,
    },
    /// A request the filter cannot read: refused (400).
    Unreadable {
        context_id: u32,
        unreadable: Unreadable,
    },
    /// A request arrived while the host could read no clock: refused (500). The `now` given
    /// with it is not read.
    NoClock {
        context_id: u32,
        request: OwnedRequest,
    },
    /// A request ended (answered, reset or done): nothing more is applied to it.
    RequestEnded { context_id: u32 },
    /// A call the core asked for ended.
    CallEnded { call: CallId, outcome: CallOutcome },
    /// The time [`crate::Worker::poll_timeout`] named has come (or any later time).
    Wake,
    /// A change-feed answer another worker of the proxy shared (see
    /// [`crate::Worker::join_feed`]), as its bytes arrived.
    SharedFeedAnswer { message: Vec<u8> },
}

impl Event {
    /// The event for request `context_id` as [`crate::read_request`] read it, with whether the
    /// host could read its clock.
    pub fn for_request(
        context_id: u32,
        read: Result<OwnedRequest, Unreadable>,
        clock_read: bool,
    ) -> Event {
        match (read, clock_read) {
            (Err(unreadable), _) => Event::Unreadable {
                context_id,
                unreadable,
            },
            (Ok(request), true) => Event::Request {
                context_id,
                request,
            },
            (Ok(request), false) => Event::NoClock {
                context_id,
                request,
            },
        }
    }
}
