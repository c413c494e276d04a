//! A TCP relay for one link, with faults switchable at run time.
//!
//! Node A is told to reach node B at the relay's address; the relay forwards
//! bytes to B's real address. It never looks inside the bytes, so TLS passes
//! through untouched. Relays run on one small tokio runtime of their own, so
//! they keep forwarding while a test blocks its thread (a synchronous wait,
//! a current-thread test runtime busy elsewhere) and can be driven from
//! synchronous and async tests alike.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// Bytes read from a socket at a time.
const CHUNK: usize = 16 * 1024;

/// Chunks queued per direction before the reader waits (bounds memory).
const QUEUE_CHUNKS: usize = 64;

/// The way bytes travel on a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// From the side that connected to the relay to the target.
    ClientToServer,
    /// From the target back to the side that connected.
    ServerToClient,
}

/// What [`Fault::Cut`] does to connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CutMode {
    /// A partition: nothing is closed, nothing is delivered. Live
    /// connections stop forwarding both ways (bytes stay queued in socket
    /// buffers, so senders eventually block, as over a dead path); new
    /// connections are accepted by the kernel but never reach the target.
    /// When the cut heals, held bytes flow again in order and held new
    /// connections are then connected to the target, as TCP retransmission
    /// would do.
    Blackhole,
    /// A refused link: every live connection is reset (RST) now, and every
    /// new connection is reset right after it is accepted.
    Reset,
}

/// The fault a relay applies; switch with [`Relay::set_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Nothing gets through the link; see [`CutMode`].
    Cut(CutMode),
    /// Bytes travelling in this direction are blackholed (held back, not
    /// delivered); the other direction flows. Healing delivers the held
    /// bytes in order (the stream is never corrupted).
    OneWay(Direction),
    /// Every chunk, in each direction, is delivered this long after it was
    /// read; order is preserved.
    Delay(Duration),
}

impl Fault {
    /// Whether bytes in `dir` may be delivered under this fault.
    pub fn allows(self, dir: Direction) -> bool {
        match self {
            Fault::Pass | Fault::Delay(_) => true,
            Fault::Cut(_) => false,
            Fault::OneWay(blocked) => blocked != dir,
        }
    }

    fn delay(self) -> Duration {
        match self {
            Fault::Delay(d) => d,
            _ => Duration::ZERO,
        }
    }
}

/// Counters of a relay since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Connections accepted (including ones then held or reset).
    pub accepted: u64,
    /// Connections currently open through the relay.
    pub live: usize,
    /// Bytes delivered to the target.
    pub bytes_client_to_server: u64,
    /// Bytes delivered back to the connecting side.
    pub bytes_server_to_client: u64,
    /// Connections the relay reset (faults, `reset_all`, socket errors).
    pub resets: u64,
    /// Connections reset because the target could not be reached (or no
    /// target was set).
    pub upstream_connect_failures: u64,
}

/// A running relay for one link; shut down (every connection reset) on drop.
pub struct Relay {
    shared: Arc<Shared>,
    accept_task: AbortHandle,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.shared.addr)
            .field("target", &self.target())
            .field("fault", &self.fault())
            .finish()
    }
}

impl Relay {
    /// Listens on `listen_ip` port 0 and forwards to `target`.
    pub async fn start(listen_ip: IpAddr, target: SocketAddr) -> io::Result<Relay> {
        Relay::start_blocking(listen_ip, target)
    }

    /// [`Relay::start`] for synchronous code (it does not block).
    pub fn start_blocking(listen_ip: IpAddr, target: SocketAddr) -> io::Result<Relay> {
        let relay = Relay::bind(listen_ip)?;
        relay.set_target(target);
        Ok(relay)
    }

    /// Listens on `listen_ip` port 0 with no target yet: connections are
    /// reset (like a refused connection) until [`Relay::set_target`]. For
    /// links whose far end starts after the near end must know the address.
    pub fn bind(listen_ip: IpAddr) -> io::Result<Relay> {
        let std_listener = std::net::TcpListener::bind((listen_ip, 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rt = runtime();
        let listener = {
            let _context = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared {
            addr,
            target: Mutex::new(None),
            fault: watch::Sender::new(Fault::Pass),
            conns: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            bytes_c2s: AtomicU64::new(0),
            bytes_s2c: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
        });
        let accept_task = rt
            .spawn(accept_loop(shared.clone(), listener))
            .abort_handle();
        Ok(Relay {
            shared,
            accept_task,
        })
    }

    /// The address to give the connecting side.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Where connections are forwarded, if set.
    pub fn target(&self) -> Option<SocketAddr> {
        *lock(&self.shared.target)
    }

    /// Forwards new connections to `target` (live ones keep their target).
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = Some(target);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Switches the fault; takes effect at once for live and new
    /// connections (a chunk already being written may still complete).
    /// `Cut(Reset)` also resets every live connection.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
        if fault == Fault::Cut(CutMode::Reset) {
            self.reset_all();
        }
    }

    /// Resets (RST) every live connection now, whatever the fault; returns
    /// how many. The relay keeps accepting new connections.
    pub fn reset_all(&self) -> usize {
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        let count = conns.len();
        for conn in conns.into_values() {
            conn.reset();
        }
        self.shared
            .resets
            .fetch_add(count as u64, Ordering::Relaxed);
        count
    }

    /// The counters so far.
    pub fn stats(&self) -> RelayStats {
        let s = &self.shared;
        RelayStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            live: lock(&s.conns).len(),
            bytes_client_to_server: s.bytes_c2s.load(Ordering::Relaxed),
            bytes_server_to_client: s.bytes_s2c.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            upstream_connect_failures: s.connect_failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reset_all();
    }
}

/// The runtime all relays of this test process run on.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tern-relay")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the relay runtime: {e}"))
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Shared {
    addr: SocketAddr,
    target: Mutex<Option<SocketAddr>>,
    fault: watch::Sender<Fault>,
    conns: Mutex<BTreeMap<u64, Conn>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    bytes_c2s: AtomicU64,
    bytes_s2c: AtomicU64,
    resets: AtomicU64,
    connect_failures: AtomicU64,
}

impl Shared {
    /// Resets connection `id` if it is still registered.
    fn reset_conn(&self, id: u64) {
        let conn = lock(&self.conns).remove(&id);
        if let Some(conn) = conn {
            self.resets.fetch_add(1, Ordering::Relaxed);
            conn.reset();
        }
    }

    /// Forgets connection `id` after a clean close.
    fn remove_conn(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Records the upstream socket; `false` if the connection was reset
    /// meanwhile.
    fn attach_upstream(&self, id: u64, upstream: &Arc<TcpStream>) -> bool {
        match lock(&self.conns).get_mut(&id) {
            Some(conn) => {
                conn.upstream = Some(upstream.clone());
                true
            }
            None => false,
        }
    }

    fn counter(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::ClientToServer => &self.bytes_c2s,
            Direction::ServerToClient => &self.bytes_s2c,
        }
    }
}

/// A live connection as seen from outside its task, so it can be reset.
struct Conn {
    client: Arc<TcpStream>,
    upstream: Option<Arc<TcpStream>>,
    task: Option<AbortHandle>,
}

impl Conn {
    /// Zero linger makes the final close send RST; aborting the task drops
    /// its references, which closes the sockets.
    fn reset(self) {
        let _ = self.client.set_zero_linger();
        if let Some(upstream) = &self.upstream {
            let _ = upstream.set_zero_linger();
        }
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(_) => {
                // Out of descriptors or an aborted handshake: try again soon.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(stream);
        lock(&shared.conns).insert(
            id,
            Conn {
                client: client.clone(),
                upstream: None,
                task: None,
            },
        );
        let task = tokio::spawn(run_conn(shared.clone(), id, client));
        match lock(&shared.conns).get_mut(&id) {
            Some(conn) => conn.task = Some(task.abort_handle()),
            None => task.abort(),
        }
    }
}

async fn run_conn(shared: Arc<Shared>, id: u64, client: Arc<TcpStream>) {
    // A new connection waits out a blackhole cut before reaching the target.
    let mut faults = shared.fault.subscribe();
    let fault = match faults
        .wait_for(|f| *f != Fault::Cut(CutMode::Blackhole))
        .await
    {
        Ok(fault) => *fault,
        Err(_) => Fault::Cut(CutMode::Reset),
    };
    if fault == Fault::Cut(CutMode::Reset) {
        shared.reset_conn(id);
        return;
    }
    let target = *lock(&shared.target);
    let upstream = match target {
        Some(target) => TcpStream::connect(target).await,
        None => Err(io::Error::new(io::ErrorKind::NotFound, "no target set")),
    };
    let upstream = match upstream {
        Ok(upstream) => Arc::new(upstream),
        Err(_) => {
            shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            shared.reset_conn(id);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if !shared.attach_upstream(id, &upstream) {
        let _ = upstream.set_zero_linger();
        return;
    }
    let forwarded = tokio::try_join!(
        pump(&shared, Direction::ClientToServer, &client, &upstream),
        pump(&shared, Direction::ServerToClient, &upstream, &client),
    );
    match forwarded {
        Ok(_) => shared.remove_conn(id),
        Err(_) => shared.reset_conn(id),
    }
}

struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
}

/// Forwards `src` → `dst` until EOF (then half-closes `dst`) or an error.
/// A reader and a writer run concurrently so delayed chunks pipeline.
async fn pump(shared: &Shared, dir: Direction, src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE_CHUNKS);
    let mut read_faults = shared.fault.subscribe();
    let mut write_faults = shared.fault.subscribe();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            gate(&mut read_faults, dir).await?;
            src.readable().await?;
            let n = match src.try_read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let due = Instant::now() + read_faults.borrow().delay();
            let chunk = Chunk {
                due,
                bytes: buf[..n].to_vec(),
            };
            if tx.send(chunk).await.is_err() {
                return Err(io::Error::other("relay writer stopped"));
            }
        }
    };
    let writer = async move {
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.due).await;
            gate(&mut write_faults, dir).await?;
            write_all(dst, &chunk.bytes).await?;
            shared
                .counter(dir)
                .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        }
        match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
            _ => Ok(()),
        }
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Waits until the fault lets bytes travel in `dir`.
async fn gate(faults: &mut watch::Receiver<Fault>, dir: Direction) -> io::Result<()> {
    faults
        .wait_for(|f| f.allows(dir))
        .await
        .map(|_| ())
        .map_err(|_| io::Error::other("relay shut down"))
}

async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        dst.writable().await?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
