#![allow(dead_code)]
//! HTTP upstreams on real, non-loopback addresses, for tests that need them
//! (Kubernetes EndpointSlices refuse loopback addresses).
//!
//! [`Netns::create`] makes a Linux network namespace joined to the root
//! namespace by a veth pair on a /24 of its own from 10.244.0.0/16: the host
//! side is `10.244.K.1`, the namespace side `10.244.K.10` ([`Netns::addr`]),
//! and [`Netns::add_addr`] adds `10.244.K.11`, `.12`, ... inside the
//! namespace. [`Netns::serve`] runs a small HTTP/1.1 echo server bound inside
//! the namespace, reachable from the test process as usual.
//!
//! Needs root and iproute2's `ip`. Namespaces are named
//! `pst-<tag>-<pid>-<n>`; dropping a [`Netns`] deletes it, and every
//! [`Netns::create`] first deletes namespaces left behind by test processes
//! that no longer exist (killed before they could clean up).
//!
//! Include with `#[path = "support/netns.rs"] mod netns;`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PREFIX: &str = "pst-";
/// Largest request head (request line and headers) the echo server accepts.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the echo server reads (and echoes).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A network namespace joined to the root namespace by a veth pair, with its
/// own /24 from 10.244.0.0/16. Deleted (with the veth pair) on drop.
pub struct Netns {
    name: String,
    subnet: u8,
    host_if: String,
    ns_if: String,
    next_host: Mutex<u8>,
}

impl Netns {
    /// Creates a namespace named `pst-<tag>-<pid>-<n>` with a veth pair and a fresh
    /// /24 `10.244.K.0/24` (host side `.1`, namespace side `.10`), links and the
    /// namespace's `lo` up. Deletes stale namespaces of dead test processes first.
    /// Panics if anything fails.
    pub fn create(tag: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale();

        let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(20).collect();
        let tag = if tag.is_empty() { "t".to_string() } else { tag };
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{pid}-{n}");
        ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("creating network namespace {name}: {e}"));
        // From here on, dropping `guard` removes the namespace if creating the
        // rest fails (the `panic!` below unwinds through it).
        let mut guard =
            Netns { name, subnet: 0, host_if: String::new(), ns_if: String::new(), next_host: Mutex::new(11) };

        // The host-side link name encodes the subnet, so creating the link
        // reserves the subnet atomically against other test processes: a
        // second `ip link add` of the same name fails and we move on.
        let start = (pid as usize).wrapping_mul(31).wrapping_add(n as usize);
        let mut last_err = String::new();
        for i in 0..254 {
            let k = ((start + i) % 254 + 1) as u8;
            if subnet_in_use(k) {
                continue;
            }
            let (host_if, ns_if) = (format!("pst{k}h"), format!("pst{k}n"));
            match ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &guard.name]) {
                Ok(_) => {
                    guard.subnet = k;
                    guard.host_if = host_if;
                    guard.ns_if = ns_if;
                    break;
                }
                Err(e) => last_err = e,
            }
        }
        if guard.subnet == 0 {
            panic!("no free subnet in 10.244.0.0/16 for {}: {last_err}", guard.name);
        }

        let k = guard.subnet;
        let (ns, host_if, ns_if) = (guard.name.clone(), guard.host_if.clone(), guard.ns_if.clone());
        let steps: [Vec<String>; 5] = [
            strings(&["addr", "add", &format!("10.244.{k}.1/24"), "dev", &host_if]),
            strings(&["link", "set", &host_if, "up"]),
            strings(&["-n", &ns, "addr", "add", &format!("10.244.{k}.10/24"), "dev", &ns_if]),
            strings(&["-n", &ns, "link", "set", &ns_if, "up"]),
            strings(&["-n", &ns, "link", "set", "lo", "up"]),
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                panic!("setting up network namespace {ns}: ip {}: {e}", args.join(" "));
            }
        }
        // Wait for the link to have carrier, so the first connection does not race it.
        let carrier = format!("/sys/class/net/{host_if}/carrier");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&carrier).map(|s| s.trim() != "1").unwrap_or(true) {
            if Instant::now() > deadline {
                panic!("veth {host_if} of network namespace {ns} has no carrier after 5s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        guard
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace-side address, `10.244.K.10`.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 244, self.subnet, 10))
    }

    /// The root-namespace side of the veth pair, `10.244.K.1`.
    pub fn host_addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 244, self.subnet, 1))
    }

    /// Adds the next address (`10.244.K.11`, `.12`, ...) inside the namespace and
    /// returns it. Panics if the subnet is exhausted or `ip` fails.
    pub fn add_addr(&self) -> IpAddr {
        let mut next = self.next_host.lock().unwrap_or_else(|e| e.into_inner());
        assert!(*next < 255, "network namespace {}: no addresses left in 10.244.{}.0/24", self.name, self.subnet);
        let addr = Ipv4Addr::new(10, 244, self.subnet, *next);
        ip(&["-n", &self.name, "addr", "add", &format!("{addr}/24"), "dev", &self.ns_if])
            .unwrap_or_else(|e| panic!("adding {addr} to network namespace {}: {e}", self.name));
        *next += 1;
        IpAddr::V4(addr)
    }

    /// Serves the JSON echo (see [`NsUpstream`]) on `addr:port` inside the
    /// namespace (`port` 0 picks a free port); ready when this returns.
    /// Panics if the bind fails.
    pub fn serve(&self, addr: IpAddr, port: u16, name: &str) -> NsUpstream {
        NsUpstream::start(&self.name, SocketAddr::new(addr, port), name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the host side deletes the pair, even while sockets still
        // keep the namespace itself alive; then the namespace's name goes.
        if !self.host_if.is_empty() {
            let _ = ip(&["link", "del", &self.host_if]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// An HTTP/1.1 server bound inside a [`Netns`]. Every request gets a `200`
/// with `Content-Type: application/json` and the body
/// `{"upstream": name, "method", "path" (the request target as received),
/// "host" (the Host header or null), "headers": {lowercased name: value},
/// "body" (the request body, lossily as UTF-8)}`; connections are kept alive
/// unless the client asks otherwise. Stops on drop: the listener is closed (new
/// connections are refused) and open connections are shut down.
///
/// Independent of the [`Netns`] it came from, but drop it first: once the
/// namespace is gone, so is its address.
pub struct NsUpstream {
    addr: SocketAddr,
    name: String,
    hits: Arc<AtomicU64>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the accept thread, connection threads and the handle share.
struct Shared {
    stop: AtomicBool,
    listener: TcpListener,
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl NsUpstream {
    fn start(netns: &str, addr: SocketAddr, name: &str) -> NsUpstream {
        let (tx, rx) = mpsc::channel::<Result<Arc<Shared>, String>>();
        let hits = Arc::new(AtomicU64::new(0));
        let netns_path = format!("/var/run/netns/{netns}");
        let (thread_hits, thread_name) = (hits.clone(), name.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // A thread's network namespace is its own: enter it here, bind
                // here; accepted sockets then work from any thread.
                let bound = enter_netns(&netns_path)
                    .and_then(|()| TcpListener::bind(addr).map_err(|e| format!("binding {addr}: {e}")));
                let listener = match bound {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let shared =
                    Arc::new(Shared { stop: AtomicBool::new(false), listener, conns: Mutex::new(HashMap::new()) });
                let _ = tx.send(Ok(shared.clone()));
                accept_loop(shared, thread_name, thread_hits);
            })
            .expect("spawning upstream thread");
        let shared = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(shared)) => shared,
            Ok(Err(e)) => panic!("upstream {name} in network namespace {netns}: {e}"),
            Err(e) => panic!("upstream {name} in network namespace {netns} did not start: {e}"),
        };
        let addr = shared.listener.local_addr().expect("listener address");
        NsUpstream { addr, name: name.to_string(), hits, shared, thread: Some(thread) }
    }

    /// `http://<addr>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address and port it listens on.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it reports as `"upstream"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many requests it has answered.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for NsUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept(2) on
        // Linux; the connection is a fallback that unblocks it regardless.
        // SAFETY: the fd belongs to `listener`, which `shared` keeps open.
        unsafe { libc::shutdown(self.shared.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // After the accept thread has ended, so no connection can slip in.
        for conn in self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // The listener closes when the last `Arc<Shared>` goes: this one, as
        // the accept thread has ended and connection threads hold only clones
        // of their own streams.
    }
}

fn accept_loop(shared: Arc<Shared>, name: String, hits: Arc<AtomicU64>) {
    let mut next_id = 0u64;
    loop {
        let accepted = shared.listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = next_id;
        next_id += 1;
        let Ok(registered) = stream.try_clone() else { continue };
        shared.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, registered);
        let (name, hits, weak) = (name.clone(), hits.clone(), Arc::downgrade(&shared));
        let spawned = std::thread::Builder::new().name(format!("netns-{name}-{id}")).spawn(move || {
            let _ = serve_conn(stream, &name, &hits);
            if let Some(shared) = weak.upgrade() {
                shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
        });
        if spawned.is_err() {
            shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }
}

/// Answers requests on one connection until the client closes it, asks to, or
/// sends something unparseable.
fn serve_conn(stream: TcpStream, name: &str, hits: &AtomicU64) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else { return Ok(()) };
        let Some(req) = parse_head(&head) else {
            writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return Ok(());
        };
        let header = |n: &str| req.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let chunked = header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length: Option<usize> = match header("content-length") {
            Some(v) => match v.trim().parse() {
                Ok(n) if n <= MAX_BODY => Some(n),
                _ => {
                    writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
                    return Ok(());
                }
            },
            None => None,
        };
        let has_body = chunked || length.is_some_and(|n| n > 0);
        if has_body && header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            reader.read_exact(&mut body)?;
            body
        };

        let connection = header("connection").map(str::to_ascii_lowercase).unwrap_or_default();
        let close = if req.version == "HTTP/1.0" {
            !connection.contains("keep-alive")
        } else {
            connection.split(',').any(|t| t.trim() == "close")
        };

        let mut headers = serde_json::Map::new();
        for (k, v) in &req.headers {
            match headers.get_mut(k) {
                Some(serde_json::Value::String(s)) => {
                    s.push_str(", ");
                    s.push_str(v);
                }
                _ => {
                    headers.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
            }
        }
        let json = serde_json::json!({
            "upstream": name,
            "method": req.method,
            "path": req.target,
            "host": header("host"),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        let json = serde_json::to_vec(&json).expect("serializing echo");
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n{}\r\n",
            json.len(),
            if close { "Connection: close\r\n" } else { "" },
        )
        .into_bytes();
        if req.method != "HEAD" {
            response.extend_from_slice(&json);
        }
        hits.fetch_add(1, Ordering::SeqCst);
        writer.write_all(&response)?;
        writer.flush()?;
        if close {
            let _ = writer.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

struct Head {
    method: String,
    target: String,
    version: String,
    /// Lowercased names, in order received.
    headers: Vec<(String, String)>,
}

/// Reads up to and including the blank line ending a request head. `None` on
/// a clean end of stream before any byte of a new request.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.by_ref().take((MAX_HEAD + 1 - before) as u64).read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "truncated request head"))
            };
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request head too large"));
        }
        let line = &head[before..];
        // Blank lines before a request line are tolerated (RFC 9112 §2.2).
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        if k.is_empty() || k.contains(|c: char| c.is_whitespace()) {
            return None;
        }
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    Some(Head { method: method.into(), target: target.into(), version: version.into(), headers })
}

/// Reads a chunked body, and its trailers (discarded).
fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        reader.by_ref().take(4096).read_until(b'\n', &mut line)?;
        let line = std::str::from_utf8(&line).map_err(|_| bad("chunk size"))?;
        let size = line.trim().split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("chunk size"))?;
        if size == 0 {
            break;
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk terminator"));
        }
    }
    // Trailers, up to the blank line.
    loop {
        let mut line = Vec::new();
        let n = reader.by_ref().take(MAX_HEAD as u64).read_until(b'\n', &mut line)?;
        if n == 0 || line == b"\r\n" || line == b"\n" {
            return Ok(body);
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    // SAFETY: plain syscall on a valid fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns({path}): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `ip` with `args`: its stdout, or a description of the failure.
fn ip(args: &[&str]) -> Result<String, String> {
    let bin = if Path::new("/usr/sbin/ip").exists() { "/usr/sbin/ip" } else { "ip" };
    let out = Command::new(bin).args(args).output().map_err(|e| format!("running {bin}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Whether anything in the root namespace already uses `10.244.k.0/24`: an
/// address or a route in it (a kind cluster's pod network, say).
fn subnet_in_use(k: u8) -> bool {
    let needle = format!("10.244.{k}.");
    let addrs = ip(&["-o", "-4", "addr"]).unwrap_or_default();
    let routes = ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let link = Path::new("/sys/class/net").join(format!("pst{k}h")).exists();
    link || addrs.contains(&needle) || routes.contains(&needle)
}

/// Deletes namespaces named `pst-<tag>-<pid>-<n>` whose process is gone.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let mut parts = rest.rsplitn(3, '-');
        let (Some(n), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Ok(_), Ok(pid)) = (n.parse::<u32>(), pid.parse::<u32>()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Its veth pair goes with it unless sockets still hold the namespace;
        // the host side's name is not in the namespace's, so find it there.
        if let Ok(links) = ip(&["-n", name, "-o", "link"]) {
            for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
                let link = link.split('@').next().unwrap_or(link);
                if let Some(k) = link.strip_prefix("pst").and_then(|s| s.strip_suffix('n')) {
                    let _ = ip(&["link", "del", &format!("pst{k}h")]);
                }
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}
