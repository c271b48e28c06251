//! twi-probe patch: the TCP stream under the gateway websocket (and under TLS, for `wss`),
//! which knows when the bytes it hands out arrived.
//!
//! Upstream reads the socket only when tungstenite needs more bytes, 4 KiB at a time, and
//! tungstenite asks only once the frames it holds have been handled. So when several events
//! arrive together, the later ones sit in the kernel while serenity parses and dispatches the
//! earlier ones, and a clock read at the time a frame is yielded runs late by that work (a few
//! ms for 20 replies arriving at once). Here a thread of its own reads the socket as soon as
//! bytes arrive and stamps each read with the moment it returned; the websocket is then served
//! from those reads, never more than one read's bytes at a time, and [`LastRead`] holds the stamp
//! of the read whose bytes it was handed last.
//!
//! The reader is an OS thread with its own single-threaded tokio runtime, not a task on the
//! caller's runtime: a task waits for a free worker before it can read and stamp, and a prober
//! busy with other work (20 replies being parsed, dispatched and matched on 2 workers) delayed
//! its stamps by up to a few ms. The thread wakes on its own epoll as soon as bytes arrive.
//!
//! A frame's stamp is taken as that [`LastRead`] when tungstenite yields the frame. It is never
//! earlier than the frame's last byte reaching this process (TCP delivers in order, so every
//! byte handed out so far arrived by then), and it is exactly the read that completed the frame
//! whenever tungstenite asked for bytes only because that frame was incomplete, which is how it
//! reads. Two frames that came in one read get the same stamp.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The most one socket read takes: more than a burst of gateway events.
const READ_SIZE: usize = 64 * 1024;
/// Reads queued for the websocket before the reading thread waits (TCP then pushes back on the
/// sender, as when upstream stops reading).
const QUEUED_READS: usize = 16;

type Chunk = io::Result<(Vec<u8>, Instant)>;

/// When the bytes most recently handed to the websocket arrived: the moment the socket read
/// that brought them returned.
#[derive(Clone, Debug, Default)]
pub(crate) struct LastRead(Arc<Mutex<Option<Instant>>>);

impl LastRead {
    pub(crate) fn get(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
    }
}

/// A TCP stream whose reads come from a thread that reads the socket as bytes arrive.
pub(crate) struct StampedTcp {
    reads: mpsc::Receiver<Chunk>,
    /// The read being handed out, from `pos` on, and when it returned.
    chunk: Vec<u8>,
    pos: usize,
    at: Option<Instant>,
    last: LastRead,
    write: TcpStream,
}

impl StampedTcp {
    /// Starts the reading thread. It ends when the stream is dropped, the peer closes, or a read
    /// fails. Must be called on a tokio runtime (the writing half stays on it).
    pub(crate) fn new(stream: TcpStream) -> io::Result<(Self, LastRead)> {
        // Two handles on one socket: the reader's, registered with the reading thread's
        // runtime, and the writer's, on the caller's.
        let std_stream = stream.into_std()?;
        let reader = std_stream.try_clone()?;
        let write = TcpStream::from_std(std_stream)?;
        let (tx, reads) = mpsc::channel(QUEUED_READS);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        std::thread::Builder::new().name("gateway-reader".into()).spawn(move || {
            runtime.block_on(async move {
                match TcpStream::from_std(reader) {
                    Ok(reader) => read_socket(reader, tx).await,
                    Err(e) => drop(tx.send(Err(e)).await),
                }
            });
        })?;
        let last = LastRead::default();
        let stream = Self {
            reads,
            chunk: Vec::new(),
            pos: 0,
            at: None,
            last: last.clone(),
            write,
        };
        Ok((stream, last))
    }
}

async fn read_socket(mut read: TcpStream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0; READ_SIZE];
    loop {
        let chunk = tokio::select! {
            () = tx.closed() => return,
            read = read.read(&mut buf) => match read {
                Ok(0) => return,
                Ok(n) => {
                    let at = Instant::now();
                    Ok((buf[..n].to_vec(), at))
                },
                Err(e) => Err(e),
            },
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.chunk.len() {
            match ready!(this.reads.poll_recv(cx)) {
                Some(Ok((chunk, at))) => {
                    this.chunk = chunk;
                    this.pos = 0;
                    this.at = Some(at);
                },
                Some(Err(e)) => return Poll::Ready(Err(e)),
                // The reading thread ended: end of stream.
                None => return Poll::Ready(Ok(())),
            }
        }
        // Never more than this one read's bytes, so that the stamp is theirs.
        let n = buf.remaining().min(this.chunk.len() - this.pos);
        buf.put_slice(&this.chunk[this.pos..this.pos + n]);
        this.pos += n;
        if let Some(at) = this.at {
            this.last.set(at);
        }
        if this.pos == this.chunk.len() {
            this.chunk = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().write).poll_shutdown(cx)
    }
}
