//! Self-tests of the harness: each test proves one property of the relay,
//! processes, ready files, the harness itself, or loopback addressing.
//!
//! Negative checks ("nothing arrives") observe for a bounded window
//! ([`QUIET`]) and then heal the fault and prove the held bytes do arrive;
//! they never sleep to let things settle.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
use rand::Rng;
use serde::Deserialize;
use tern_tests::{
    wait_until, wait_until_async, Check, CutMode, Direction, Fault, Harness, LoopbackAllocator,
    Process, ProcessSpec, ReadyFile, Relay,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Generous bound for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(10);
/// Window in which something must *not* happen.
const QUIET: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(10);

/// An echo server that counts what it received and may greet first.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server(ip: IpAddr, greeting: Option<&'static [u8]>) -> Echo {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (rx_count, acc_count) = (received.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            acc_count.fetch_add(1, Ordering::SeqCst);
            let rx_count = rx_count.clone();
            tokio::spawn(async move {
                if let Some(greeting) = greeting {
                    if stream.write_all(greeting).await.is_err() {
                        return;
                    }
                }
                let mut buf = vec![0u8; 8192];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            rx_count.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    Echo {
        addr,
        received,
        accepted,
        task,
    }
}

/// Reads exactly `n` bytes within [`DEADLINE`].
async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {n} bytes within {DEADLINE:?}"))
        .unwrap();
    buf
}

/// Asserts nothing can be read for [`QUIET`].
async fn assert_quiet(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    if let Ok(read) = tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
        panic!("{what}: expected silence, read {read:?}");
    }
}

/// Reads until the connection ends; returns the error kind (None for EOF).
async fn read_until_closed(stream: &mut TcpStream) -> Option<std::io::ErrorKind> {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {DEADLINE:?}"),
            Ok(Ok(0)) => return None,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Some(e.kind()),
        }
    }
}

/// Connects and expects the relay to reset the connection: the reset may
/// beat the connect's completion (the connect fails) or come after it.
async fn expect_reset_on_connect(addr: SocketAddr) {
    match TcpStream::connect(addr).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(mut stream) => assert_eq!(
            read_until_closed(&mut stream).await,
            Some(std::io::ErrorKind::ConnectionReset)
        ),
    }
}

async fn wait_received(echo: &Echo, bytes: u64, what: &str) {
    let received = echo.received.clone();
    wait_until_async(what, DEADLINE, POLL, || {
        let received = received.clone();
        async move {
            let now = received.load(Ordering::SeqCst);
            Check::ready_or(
                (now >= bytes).then_some(()),
                format!("server got {now} bytes"),
            )
        }
    })
    .await
    .unwrap();
}

// Property: the harness types can be shared across threads and tasks.
#[test]
fn harness_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Harness>();
    send_sync::<Process>();
    send_sync::<Relay>();
    send_sync::<ReadyFile>();
}

// Property: binding any 127.0.0.0/8 address with port 0 works without
// configuration, and allocated addresses are usable for listening.
#[test]
fn any_loopback_address_binds() {
    let fixed = std::net::TcpListener::bind((Ipv4Addr::new(127, 5, 6, 7), 0)).unwrap();
    assert_ne!(fixed.local_addr().unwrap().port(), 0);
    let alloc = LoopbackAllocator::new(3, "any_loopback_address_binds");
    for _ in 0..3 {
        let ip = alloc.next_ip();
        let port = tern_tests::free_port(ip);
        assert_ne!(port, 0);
        std::net::TcpListener::bind((ip, 0)).unwrap();
    }
}

// Property: with no fault, the relay carries bytes both ways unchanged on
// many concurrent connections, and counts connections and bytes.
#[tokio::test]
async fn relay_passes_bytes_both_ways_on_many_connections() {
    let h = Harness::new("relay_passes_bytes_both_ways_on_many_connections");
    let echo = echo_server(h.next_ip(), None).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    const CONNS: usize = 20;
    const SIZE: usize = 64 * 1024;
    let mut rng = h.rng();
    let mut clients = Vec::new();
    for _ in 0..CONNS {
        let mut data = vec![0u8; SIZE];
        rng.fill(&mut data[..]);
        let addr = relay.addr();
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = stream.split();
            let mut back = vec![0u8; SIZE];
            let (w, r) = tokio::join!(wr.write_all(&data), rd.read_exact(&mut back));
            w.unwrap();
            r.unwrap();
            assert!(back == data, "echo differs from what was sent");
        }));
    }
    for client in clients {
        tokio::time::timeout(DEADLINE, client)
            .await
            .unwrap()
            .unwrap();
    }
    let total = (CONNS * SIZE) as u64;
    wait_until("relay counters to reach the totals", DEADLINE, POLL, || {
        let s = relay.stats();
        let done = s.bytes_client_to_server == total && s.bytes_server_to_client == total;
        Check::ready_or(done.then_some(s), format!("{s:?}"))
    })
    .unwrap();
    assert_eq!(relay.stats().accepted, CONNS as u64);
}

// Property: Cut(Blackhole) delivers nothing in either direction on live
// connections and lets no new connection reach the target, without closing
// anything; healing delivers the held bytes in order and connects the held
// connection.
#[tokio::test]
async fn cut_blackhole_holds_everything_until_healed() {
    let h = Harness::new("cut_blackhole_holds_everything_until_healed");
    let echo = echo_server(h.next_ip(), None).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    let mut live = TcpStream::connect(relay.addr()).await.unwrap();
    live.write_all(b"before").await.unwrap();
    assert_eq!(read_n(&mut live, 6).await, b"before");

    relay.set_fault(Fault::Cut(CutMode::Blackhole));
    live.write_all(b"held").await.unwrap();
    let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
    fresh.write_all(b"new").await.unwrap();
    assert_quiet(&mut live, "live connection under blackhole").await;
    assert_eq!(echo.received.load(Ordering::SeqCst), 6, "server got bytes");
    assert_eq!(
        echo.accepted.load(Ordering::SeqCst),
        1,
        "new conn reached server"
    );

    relay.set_fault(Fault::Pass);
    assert_eq!(read_n(&mut live, 4).await, b"held");
    assert_eq!(read_n(&mut fresh, 3).await, b"new");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

// Property: Cut(Reset) resets live connections at once and resets every new
// connection; the target sees no new connection.
#[tokio::test]
async fn cut_reset_closes_live_and_new_connections() {
    let h = Harness::new("cut_reset_closes_live_and_new_connections");
    let echo = echo_server(h.next_ip(), None).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    let mut live = TcpStream::connect(relay.addr()).await.unwrap();
    live.write_all(b"x").await.unwrap();
    assert_eq!(read_n(&mut live, 1).await, b"x");

    relay.set_fault(Fault::Cut(CutMode::Reset));
    assert_eq!(
        read_until_closed(&mut live).await,
        Some(std::io::ErrorKind::ConnectionReset)
    );
    expect_reset_on_connect(relay.addr()).await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert!(relay.stats().resets >= 2, "{:?}", relay.stats());
}

// Property: OneWay(ClientToServer) blackholes only client→server bytes:
// the server's greeting still reaches the client, the client's bytes do not
// reach the server until healed.
#[tokio::test]
async fn one_way_client_to_server_blocks_only_that_direction() {
    let h = Harness::new("one_way_client_to_server_blocks_only_that_direction");
    let echo = echo_server(h.next_ip(), Some(b"hello")).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    relay.set_fault(Fault::OneWay(Direction::ClientToServer));
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    assert_eq!(read_n(&mut client, 5).await, b"hello");
    client.write_all(b"ping").await.unwrap();
    assert_quiet(&mut client, "echo of a blackholed request").await;
    assert_eq!(echo.received.load(Ordering::SeqCst), 0);

    relay.set_fault(Fault::Pass);
    assert_eq!(read_n(&mut client, 4).await, b"ping");
}

// Property: OneWay(ServerToClient) blackholes only server→client bytes: the
// client's bytes reach the server, nothing comes back until healed.
#[tokio::test]
async fn one_way_server_to_client_blocks_only_that_direction() {
    let h = Harness::new("one_way_server_to_client_blocks_only_that_direction");
    let echo = echo_server(h.next_ip(), Some(b"hello")).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    relay.set_fault(Fault::OneWay(Direction::ServerToClient));
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    client.write_all(b"ping").await.unwrap();
    wait_received(&echo, 4, "server to receive the client's bytes").await;
    assert_quiet(&mut client, "server→client under OneWay(ServerToClient)").await;

    relay.set_fault(Fault::Pass);
    assert_eq!(read_n(&mut client, 9).await, b"helloping");
}

// Property: Delay(d) delays each direction by at least d (an echo round trip
// takes at least 2d) and preserves byte order. Only the lower bound is
// asserted.
#[tokio::test]
async fn delay_delays_each_direction_and_keeps_order() {
    let h = Harness::new("delay_delays_each_direction_and_keeps_order");
    let echo = echo_server(h.next_ip(), None).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    client.write_all(b"warm").await.unwrap();
    assert_eq!(read_n(&mut client, 4).await, b"warm");

    let delay = Duration::from_millis(150);
    relay.set_fault(Fault::Delay(delay));
    let start = Instant::now();
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let chunk = [b'a' + i; 3];
        client.write_all(&chunk).await.unwrap();
        sent.extend_from_slice(&chunk);
    }
    let back = read_n(&mut client, sent.len()).await;
    let elapsed = start.elapsed();
    assert_eq!(back, sent, "order preserved");
    assert!(
        elapsed >= 2 * delay,
        "round trip took {elapsed:?} < 2 × {delay:?}"
    );
}

// Property: reset_all resets every live connection now, and the relay keeps
// accepting and forwarding new ones.
#[tokio::test]
async fn reset_all_closes_live_connections_and_keeps_serving() {
    let h = Harness::new("reset_all_closes_live_connections_and_keeps_serving");
    let echo = echo_server(h.next_ip(), None).await;
    let relay = Relay::start(h.next_ip(), echo.addr).await.unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"up").await.unwrap();
        assert_eq!(read_n(&mut c, 2).await, b"up");
        conns.push(c);
    }
    assert_eq!(relay.reset_all(), 3);
    for c in &mut conns {
        assert_eq!(
            read_until_closed(c).await,
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }
    let mut after = TcpStream::connect(relay.addr()).await.unwrap();
    after.write_all(b"again").await.unwrap();
    assert_eq!(read_n(&mut after, 5).await, b"again");
}

// Property: a relay bound without a target resets connections (like a
// refused connection) until a target is set, then forwards.
#[tokio::test]
async fn relay_without_target_refuses_until_set() {
    let h = Harness::new("relay_without_target_refuses_until_set");
    let relay = Relay::bind(h.next_ip()).unwrap();
    expect_reset_on_connect(relay.addr()).await;
    assert_eq!(relay.stats().upstream_connect_failures, 1);
    let echo = echo_server(h.next_ip(), None).await;
    relay.set_target(echo.addr);
    let mut late = TcpStream::connect(relay.addr()).await.unwrap();
    late.write_all(b"ok").await.unwrap();
    assert_eq!(read_n(&mut late, 2).await, b"ok");
}

/// Whether `p` exists and is not a zombie (a container's init may be slow
/// to reap reparented grandchildren).
fn alive(p: tern_tests::Pid) -> bool {
    kill(p, None).is_ok() && proc_state(p) != Some('Z')
}

// Property: dropping a Process SIGKILLs and reaps it: its pid no longer
// exists afterwards.
#[test]
fn process_is_killed_on_drop() {
    let h = Harness::new("process_is_killed_on_drop");
    let p = h
        .spawn(ProcessSpec::new("sleeper", "sleep").arg("30"))
        .unwrap();
    let pid = p.pid();
    assert!(alive(pid));
    drop(p);
    assert!(!alive(pid), "pid {pid} still exists after drop");
}

// Property: a panicking test still kills its processes (Drop runs while
// unwinding), including grandchildren in the same process group.
#[test]
fn processes_die_when_the_test_panics() {
    let h = Harness::new("processes_die_when_the_test_panics");
    let log = h.path("logs/panicker.log");
    let pid_file = h.path("grandchild.pid");
    let (tx, rx) = std::sync::mpsc::channel();
    let pid_file2 = pid_file.clone();
    let outcome = std::thread::spawn(move || {
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file2.display());
        let p = Process::spawn(
            ProcessSpec::new("panicker", "sh").arg("-c").arg(script),
            log,
        )
        .unwrap();
        tx.send(p.pid()).unwrap();
        let grandchild: i32 = wait_until("the grandchild pid", DEADLINE, POLL, || {
            std::fs::read_to_string(&pid_file2)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap();
        tx.send(tern_tests::Pid::from_raw(grandchild)).unwrap();
        panic!("deliberate panic with a live process");
    })
    .join();
    assert!(outcome.is_err(), "the thread panicked");
    let pid = rx.recv().unwrap();
    let grandchild = rx.recv().unwrap();
    assert!(!alive(pid), "child {pid} survived the panic");
    // The grandchild is reparented and reaped by init: wait for that.
    wait_until("the grandchild to be gone", DEADLINE, POLL, || {
        !alive(grandchild)
    })
    .unwrap();
}

/// Tells `orphan_helper` where to report its child's pid.
const ORPHAN_PID_FILE_ENV: &str = "TERN_SELFTEST_ORPHAN_PID_FILE";

// Not a property on its own: the child half of
// `children_die_when_the_test_process_is_killed`. Without its env var it
// does nothing.
#[test]
#[ignore = "helper run by children_die_when_the_test_process_is_killed"]
fn orphan_helper() {
    let Some(pid_file) = std::env::var_os(ORPHAN_PID_FILE_ENV).map(std::path::PathBuf::from) else {
        return;
    };
    let child = Process::spawn(
        ProcessSpec::new("orphan", "sleep").arg("30"),
        pid_file.with_extension("log"),
    )
    .unwrap();
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, child.pid().to_string()).unwrap();
    std::fs::rename(&tmp, &pid_file).unwrap();
    // Block until the parent test SIGKILLs this process.
    let _ = wait_until(
        "the parent test to kill us",
        Duration::from_secs(60),
        POLL,
        || false,
    );
}

// Property: when the test process itself dies without running destructors
// (SIGKILL), its children are still killed (by the orphan guard).
#[test]
fn children_die_when_the_test_process_is_killed() {
    let h = Harness::new("children_die_when_the_test_process_is_killed");
    let pid_file = h.path("orphan.pid");
    let helper = h
        .spawn(
            ProcessSpec::new("helper", std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "orphan_helper", "--nocapture"])
                .env(ORPHAN_PID_FILE_ENV, &pid_file),
        )
        .unwrap();
    let orphan: i32 = wait_until(
        "the helper to report its child's pid",
        DEADLINE,
        POLL,
        || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        },
    )
    .unwrap();
    let orphan = tern_tests::Pid::from_raw(orphan);
    assert!(alive(orphan));
    helper.kill();
    wait_until("the orphaned child to be killed", DEADLINE, POLL, || {
        !alive(orphan)
    })
    .unwrap();
}

/// The state letter in /proc/<pid>/stat (`R`, `S`, `T`, ...).
fn proc_state(pid: tern_tests::Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

// Property: stop() freezes the process (state T) and cont() resumes it.
#[test]
fn stop_and_cont() {
    let h = Harness::new("stop_and_cont");
    let p = h
        .spawn(ProcessSpec::new("sleeper", "sleep").arg("30"))
        .unwrap();
    p.stop().unwrap();
    wait_until("state T after SIGSTOP", DEADLINE, POLL, || {
        let s = proc_state(p.pid());
        Check::ready_or((s == Some('T')).then_some(()), format!("state {s:?}"))
    })
    .unwrap();
    assert!(p.is_running(), "a stopped process is still running");
    p.cont().unwrap();
    wait_until("state other than T after SIGCONT", DEADLINE, POLL, || {
        let s = proc_state(p.pid());
        let resumed = matches!(s, Some(c) if c != 'T');
        Check::ready_or(resumed.then_some(()), format!("state {s:?}"))
    })
    .unwrap();
}

// Property: terminate() ends a process with SIGTERM when it obeys (even if
// stopped), and escalates to SIGKILL after the grace period when it ignores
// SIGTERM.
#[test]
fn terminate_then_escalate() {
    use std::os::unix::process::ExitStatusExt;
    let h = Harness::new("terminate_then_escalate");
    let obeys = h
        .spawn(ProcessSpec::new("obeys", "sleep").arg("30"))
        .unwrap();
    obeys.stop().unwrap();
    let status = obeys.terminate(DEADLINE);
    assert_eq!(status.signal(), Some(15), "{status:?}");

    let ignores = h
        .spawn(
            ProcessSpec::new("ignores", "sh")
                .arg("-c")
                .arg("trap '' TERM; echo \"trap-$((1 + 1))\"; sleep 30"),
        )
        .unwrap();
    wait_until("the trap to be installed", DEADLINE, POLL, || {
        ignores.log_text().lines().any(|l| l == "trap-2")
    })
    .unwrap();
    let status = ignores.terminate(Duration::from_millis(200));
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(
        ignores.log_text().contains("SIGKILL"),
        "{}",
        ignores.log_text()
    );
}

// Property: stdout and stderr both land in the log, wait_exit returns the
// exit status, and restart() appends a new segment to the same log.
#[test]
fn log_capture_exit_status_and_restart() {
    let h = Harness::new("log_capture_exit_status_and_restart");
    let p = h
        .spawn(
            ProcessSpec::new("talker", "sh")
                .arg("-c")
                .arg("echo to-stdout; echo to-stderr >&2; echo \"env=$TERN_X\"; exit 3")
                .env("TERN_X", "42"),
        )
        .unwrap();
    let status = p.wait_exit(DEADLINE).unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(!p.is_running());
    let log = p.log_text();
    // Whole lines: the start marker repeats the command line itself.
    let count = |log: &str, line: &str| log.lines().filter(|l| *l == line).count();
    for line in ["to-stdout", "to-stderr", "env=42"] {
        assert_eq!(count(&log, line), 1, "{line} missing from log:\n{log}");
    }
    assert!(log.contains("start #1"), "{log}");
    p.restart().unwrap();
    p.wait_exit(DEADLINE).unwrap();
    let log = p.log_text();
    assert!(log.contains("start #2"), "{log}");
    assert_eq!(count(&log, "to-stdout"), 2, "{log}");
    assert_eq!(p.starts(), 2);
    assert!(p.log_tail(3).lines().count() <= 4);
}

// Property: wait_exit times out (naming the process) when it does not exit.
#[test]
fn wait_exit_times_out_with_name() {
    let h = Harness::new("wait_exit_times_out_with_name");
    let p = h
        .spawn(ProcessSpec::new("lingerer", "sleep").arg("30"))
        .unwrap();
    let err = p
        .wait_exit(Duration::from_millis(50))
        .unwrap_err()
        .to_string();
    assert!(err.contains("lingerer"), "{err}");
}

#[derive(Debug, Deserialize, PartialEq)]
struct Ready {
    port: u16,
    name: String,
}

// Property: a ready file written after a delay by the child is waited for
// and parsed; a restart deletes the old file before starting again.
#[test]
fn ready_file_waits_for_delayed_writer() {
    let h = Harness::new("ready_file_waits_for_delayed_writer");
    let ready = h.path("node/ready.json");
    let script = format!(
        "sleep 0.3; printf '{{\"port\": 4242, \"name\": \"n1\"}}' > {0}.tmp && mv {0}.tmp {0}; sleep 30",
        ready.display()
    );
    let p = h
        .spawn(
            ProcessSpec::new("writer", "sh")
                .arg("-c")
                .arg(&script)
                .ready_file(&ready),
        )
        .unwrap();
    let got: Ready = p.wait_ready(DEADLINE).unwrap();
    assert_eq!(
        got,
        Ready {
            port: 4242,
            name: "n1".into()
        }
    );
    p.restart().unwrap();
    assert!(
        ReadyFile::new(&ready)
            .try_read::<Ready>()
            .unwrap()
            .is_none(),
        "stale ready file survived restart"
    );
    let again: Ready = p.wait_ready(DEADLINE).unwrap();
    assert_eq!(again.port, 4242);
}

// Property: a ready file that never appears times out with a message naming
// the file and showing the process's log tail.
#[test]
fn ready_file_timeout_names_file_and_log() {
    let h = Harness::new("ready_file_timeout_names_file_and_log");
    let ready = h.path("never.json");
    let p = h
        .spawn(
            ProcessSpec::new("silent", "sh")
                .arg("-c")
                .arg("echo marker-in-log; sleep 30"),
        )
        .unwrap();
    wait_until("the marker in the log", DEADLINE, POLL, || {
        p.log_text().contains("marker-in-log")
    })
    .unwrap();
    let err = ReadyFile::new(&ready)
        .wait::<Ready>(Some(&p), Duration::from_millis(200))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out after"), "{err}");
    assert!(err.contains(&ready.display().to_string()), "{err}");
    assert!(err.contains("marker-in-log"), "{err}");
}

// Property: waiting for a ready file fails at once (not at the deadline)
// when the process exits first, and says how it exited.
#[tokio::test]
async fn ready_file_fails_fast_when_process_exits() {
    let h = Harness::new("ready_file_fails_fast_when_process_exits");
    let ready = h.path("ready.json");
    let p = h
        .spawn(
            ProcessSpec::new("crasher", "sh")
                .arg("-c")
                .arg("echo bad config; exit 2")
                .ready_file(&ready),
        )
        .unwrap();
    let long = Duration::from_secs(60);
    let start = Instant::now();
    let err = format!("{:#}", p.wait_ready_async::<Ready>(long).await.unwrap_err());
    assert!(start.elapsed() < long);
    assert!(err.contains("exit code 2"), "{err}");
    assert!(err.contains("bad config"), "{err}");
}

// Property: the failure report carries the seed, the reproduce command, the
// dir and every process's log tail; a failing test keeps its dir, a passing
// one deletes it.
#[test]
fn harness_reports_and_keeps_dir_on_failure() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let h = Harness::new("inner_failing_test");
        let p = h
            .spawn(
                ProcessSpec::new("node-1", "sh")
                    .arg("-c")
                    .arg("echo node-says-hi"),
            )
            .unwrap();
        p.wait_exit(DEADLINE).unwrap();
        let report = h.failure_report();
        tx.send((h.dir().to_path_buf(), report)).unwrap();
        panic!("deliberate failure");
    })
    .join();
    assert!(outcome.is_err());
    let (dir, report) = rx.recv().unwrap();
    assert!(dir.join("logs/node-1.log").is_file(), "dir kept on failure");
    std::fs::remove_dir_all(&dir).unwrap();
    for needle in [
        "TERN_TEST_SEED=",
        "-- inner_failing_test",
        "node-says-hi",
        "node-1",
    ] {
        assert!(report.contains(needle), "{needle} missing from:\n{report}");
    }

    let passing = Harness::new("inner_passing_test");
    let dir = passing.dir().to_path_buf();
    assert!(dir.is_dir());
    let keep = std::env::var(tern_tests::KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
    drop(passing);
    assert_eq!(
        dir.exists(),
        keep,
        "passing test dir kept only with TERN_KEEP_TEST_DIRS=1"
    );
}
