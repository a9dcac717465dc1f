//! The last check before a request's bytes leave: a connection writes nothing once the tenure
//! of the request it carries may have lapsed.
//!
//! A request is checked against its sender's tenure before it is handed to the connection
//! (`Patience::may_send`), but the connection writes it later, when the runtime next polls it.
//! A process stopped in between (SIGSTOP, a paused VM) wrote the request when it woke, past
//! its lease, after the new holder's (§9.6). Checked in the write itself, what is left between
//! check and send is the write call.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tenure::Tenure;

/// The tenure of the request a connection carries now, set as each request is handed to it.
#[derive(Clone)]
pub struct Gate(Arc<Mutex<Tenure>>);

impl Gate {
    pub fn carrying(tenure: &Tenure) -> Gate {
        Gate(Arc::new(Mutex::new(tenure.clone())))
    }

    /// The connection now carries a request sent under `tenure`.
    pub fn set(&self, tenure: &Tenure) {
        *self.0.lock().expect("a gate") = tenure.clone();
    }

    /// An error when the tenure of the request being written may have lapsed.
    fn check(&self) -> io::Result<()> {
        match self.0.lock().expect("a gate").lapsed() {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(()),
        }
    }
}

/// A connection's stream, its writes held by a `Gate`.
pub struct Gated<T> {
    pub io: T,
    pub gate: Gate,
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.gate.check()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.gate.check()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
