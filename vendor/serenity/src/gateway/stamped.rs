//! twi-probe patch: the TCP stream under the gateway websocket (and under TLS, for `wss`),
//! which knows when the bytes it hands out arrived.
//!
//! Upstream reads the socket only when tungstenite needs more bytes, 4 KiB at a time, and
//! tungstenite asks only once the frames it holds have been handled. So when several events
//! arrive together, the later ones sit in the kernel while serenity parses and dispatches the
//! earlier ones, and a clock read at the time a frame is yielded runs late by that work (a few
//! ms for 20 replies arriving at once). Here a thread of its own reads the socket as soon as
//! bytes arrive and stamps each read with when its bytes arrived; the websocket is then served
//! from those reads, never more than one read's bytes at a time, and [`LastRead`] holds the stamp
//! of the read whose bytes it was handed last.
//!
//! The reader is an OS thread with its own single-threaded tokio runtime, not a task on the
//! caller's runtime: a task waits for a free worker before it can read and stamp, and a prober
//! busy with other work (20 replies being parsed, dispatched and matched on 2 workers) delayed
//! its stamps by up to a few ms. The thread wakes on its own epoll as soon as bytes arrive.
//!
//! **When bytes arrived.** On Linux, the kernel's own receive time (`SO_TIMESTAMPNS`: the moment
//! the packet reached this machine's network stack; for a read that took several packets, the
//! last one's), see [`kernel`] and [`ReceiveTimes`]. Even a thread that wakes at once wakes late on an idle virtual
//! machine (an idle vCPU halts, and waking it is up to the hypervisor: up to a few ms), and that
//! wake-up is the prober's delay, not the bot's. Where the kernel's time is missing or cannot be
//! trusted (another OS, an old kernel, a packet that came out of order: see [`kernel`]), the
//! moment the read returned, which is never early.
//!
//! A frame's stamp is taken as that [`LastRead`] when tungstenite yields the frame. It is never
//! earlier than the frame's last byte reaching this machine (TCP delivers in order, so every
//! byte handed out so far had arrived by then), and it is exactly the read that completed the
//! frame whenever tungstenite asked for bytes only because that frame was incomplete, which is
//! how it reads. Two frames that came in one read get the same stamp.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

async fn read_socket(read: TcpStream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0; READ_SIZE];
    let mut times = ReceiveTimes::new(&read);
    loop {
        let chunk = tokio::select! {
            () = tx.closed() => return,
            read = read_once(&read, &mut buf, &mut times) => match read {
                Ok((0, _)) => return,
                Ok((n, at)) => Ok((buf[..n].to_vec(), at)),
                Err(e) => Err(e),
            },
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// One read of the socket, as soon as it has bytes: how many, and when they arrived.
async fn read_once(
    read: &TcpStream,
    buf: &mut [u8],
    times: &mut ReceiveTimes,
) -> io::Result<(usize, Instant)> {
    loop {
        read.readable().await?;
        match read.try_io(tokio::io::Interest::READABLE, || times.read(read, buf)) {
            Ok(got) => return Ok((got.len, got.at)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a socket and tells when the bytes of each read arrived: the kernel's receive time
/// where it is known and trusted (see [`kernel`]), otherwise the moment the read returned.
/// Public (hidden) for twi-probe's tests.
///
/// The kernel's time is a wall-clock time, moved onto the monotonic clock by its age when the
/// read returns. Two guards keep it honest: a read's stamp is never earlier than the stamp of
/// the read before it (its bytes came later in the stream), and a wall clock that stepped since
/// the last read (the two clocks' offset moved by more than 1 ms plus what NTP may slew, 500
/// ppm) makes that read fall back to its return, since its age cannot be known.
#[doc(hidden)]
pub struct ReceiveTimes {
    #[cfg(target_os = "linux")]
    kernel: kernel::Receiver,
    /// The last read's stamp and both clocks when it returned.
    before: Option<(Instant, Clocks)>,
}

/// Both clocks at one moment (the wall clock read first).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Clocks {
    fn now() -> Self {
        // The wall clock first: a pause between the two clock reads then makes a stamp late,
        // never early.
        let wall = SystemTime::now();
        Self { wall, mono: Instant::now() }
    }
}

/// The most a wall clock moves against the monotonic one without a step: 1 ms, plus NTP's
/// greatest slew (500 ppm) of the time between two reads.
fn may_drift(between: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(1) + between / 2000
}

/// When a read's bytes arrived, on the monotonic clock, from the kernel's receive time
/// (`kernel`, a wall-clock time) and both clocks when the read returned (`now`), given the read
/// before's stamp and clocks; `None` when the kernel's time cannot be used (none given, later
/// than `now`, or the wall clock stepped since the read before). Never earlier than the read
/// before's stamp, never later than `now`. Public (hidden) for twi-probe's tests.
#[doc(hidden)]
pub fn arrival(
    kernel: Option<SystemTime>,
    now: Clocks,
    before: Option<(Instant, Clocks)>,
) -> Option<Instant> {
    if let Some((_, last)) = before {
        let between = now.mono.saturating_duration_since(last.mono);
        let expected = last.wall + between;
        let moved = match now.wall.duration_since(expected) {
            Ok(ahead) => ahead,
            Err(behind) => behind.duration(),
        };
        if moved > may_drift(between) {
            return None;
        }
    }
    let age = now.wall.duration_since(kernel?).ok()?;
    let at = now.mono.checked_sub(age)?;
    let floor = before.map_or(at, |(stamp, _)| stamp.min(now.mono));
    Some(at.clamp(floor, now.mono))
}

impl ReceiveTimes {
    /// Asks the kernel to time what arrives on `socket` from now on.
    pub fn new(socket: &TcpStream) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
        Self {
            #[cfg(target_os = "linux")]
            kernel: kernel::Receiver::new(socket),
            before: None,
        }
    }

    /// One read (it does not wait: `WouldBlock` when there is nothing to read), and when its
    /// bytes arrived.
    pub fn read(&mut self, socket: &TcpStream, buf: &mut [u8]) -> io::Result<Received> {
        #[cfg(target_os = "linux")]
        let (n, kernel) = self.kernel.recv(socket, buf)?;
        #[cfg(not(target_os = "linux"))]
        let (n, kernel) = (socket.try_read(buf)?, None);
        let now = Clocks::now();
        let from_kernel = arrival(kernel, now, self.before);
        let at = from_kernel.unwrap_or(now.mono);
        self.before = Some((at, now));
        Ok(Received { len: n, at, kernel_time: from_kernel.is_some() })
    }
}

/// What one [`ReceiveTimes::read`] got.
#[doc(hidden)]
pub struct Received {
    /// Bytes read.
    pub len: usize,
    /// When they arrived.
    pub at: Instant,
    /// Whether `at` comes from the kernel's receive time (else it is when the read returned).
    /// Right after the first socket of the machine asks for receive times, the kernel turns them
    /// on in the background: packets that arrive before that carry none.
    pub kernel_time: bool,
}

/// Whether a read's kernel receive time can be trusted, from the connection's count of packets
/// received out of order (`TCP_INFO`'s `tcpi_rcv_ooopack`, read after each read): only when the
/// count has not moved since the read before, and the time is later than when a move was last
/// seen (an out-of-order packet keeps its early time while it waits for the one before it). A
/// connection whose count cannot be read (a kernel before 5.4) is never trusted. Public (hidden)
/// for twi-probe's tests.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct OutOfOrderGuard {
    /// The count at the last read; `None` when the kernel cannot tell it.
    out_of_order: Option<u32>,
    /// When the count was last seen to move.
    moved_at: Option<SystemTime>,
}

impl OutOfOrderGuard {
    /// From the count when the connection was opened.
    pub fn new(out_of_order: Option<u32>) -> Self {
        Self { out_of_order, moved_at: None }
    }

    /// Whether the count is known, i.e. worth reading after each read.
    pub fn knows_count(&self) -> bool {
        self.out_of_order.is_some()
    }

    /// The read's kernel time `at` if it can be trusted, given the count just after the read
    /// and the wall clock then.
    pub fn trusted(
        &mut self,
        at: Option<SystemTime>,
        count: Option<u32>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let count = self.out_of_order.and(count);
        let steady = count.is_some() && count == self.out_of_order;
        if !steady && count.is_some() {
            self.moved_at = Some(now);
        }
        self.out_of_order = count;
        at.filter(|at| steady && self.moved_at.is_none_or(|moved| *at > moved))
    }
}

/// The kernel's receive time of socket reads (Linux), with what it takes to trust it.
///
/// `SO_TIMESTAMPNS` makes every read (`recvmsg`) carry the time the last packet it took reached
/// the network stack. That is the time the bytes became readable, except when a packet came out
/// of order: it waits (with its early time) for the one before it, and a read that ends with it
/// would look early by the retransmission's delay. So a read is trusted only when the
/// connection's count of out-of-order packets (`TCP_INFO`'s `tcpi_rcv_ooopack`) has not moved
/// since the read before it, and its time is later than when a move was last seen; otherwise
/// (and on a kernel without the count, before 5.4) the read's own return time is used.
#[cfg(target_os = "linux")]
mod kernel {
    use std::io;
    use std::mem::{offset_of, size_of, zeroed};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use tokio::net::TcpStream;

    pub(super) struct Receiver {
        guard: super::OutOfOrderGuard,
    }

    impl Receiver {
        pub(super) fn new(read: &TcpStream) -> Self {
            let on: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option of the stated size.
            let enabled = unsafe {
                libc::setsockopt(
                    read.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_TIMESTAMPNS,
                    (&on as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            } == 0;
            Self {
                guard: super::OutOfOrderGuard::new(if enabled {
                    out_of_order_packets(read)
                } else {
                    None
                }),
            }
        }

        pub(super) fn recv(
            &mut self,
            read: &TcpStream,
            buf: &mut [u8],
        ) -> io::Result<(usize, Option<SystemTime>)> {
            let (n, at) = recv_with_time(read, buf)?;
            let count = if self.guard.knows_count() { out_of_order_packets(read) } else { None };
            Ok((n, self.guard.trusted(at, count, SystemTime::now())))
        }
    }

    /// One `recvmsg`, and the receive time of the last packet it took, if the kernel gave one.
    fn recv_with_time(read: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
        // Room for a few control messages; u64s for cmsghdr's alignment.
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: msghdr is plain data; all-zero is its empty value.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>() as _;
        // SAFETY: msg points at live buffers of the stated sizes for the call's duration.
        let n = unsafe { libc::recvmsg(read.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = None;
        // SAFETY: walking the control messages the kernel wrote, with libc's own macros.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    if ts.tv_sec > 0 {
                        at = Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok((n as usize, at))
    }

    /// `tcpi_rcv_ooopack`: packets this connection received out of order (Linux 5.4 and later).
    fn out_of_order_packets(read: &TcpStream) -> Option<u32> {
        // SAFETY: tcp_info is plain data; all-zero is a valid value.
        let mut info: libc::tcp_info = unsafe { zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: info is a live buffer of `len` bytes.
        let ok = unsafe {
            libc::getsockopt(
                read.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        } == 0;
        let known = offset_of!(libc::tcp_info, tcpi_rcv_ooopack) + size_of::<u32>();
        (ok && len as usize >= known).then_some(info.tcpi_rcv_ooopack)
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
