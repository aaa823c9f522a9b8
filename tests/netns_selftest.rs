//! The network-namespace harness itself: upstreams on non-loopback addresses,
//! reachable from the root namespace, gone after drop.

#[path = "support/netns.rs"]
mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Sends one request and reads one Content-Length-framed response: its JSON body.
fn get(reader: &mut BufReader<TcpStream>, host: &str, path: &str, extra: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Probe: yes\r\n{extra}\r\n");
    reader.get_mut().write_all(req.as_bytes()).expect("write request");
    let mut status = String::new();
    reader.read_line(&mut status).expect("read status");
    assert!(status.starts_with("HTTP/1.1 200 "), "status: {status:?}");
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header");
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<usize>().expect("content-length"));
        }
    }
    let mut body = vec![0; length.expect("content-length present")];
    reader.read_exact(&mut body).expect("read body");
    serde_json::from_slice(&body).expect("json body")
}

fn netns_list() -> String {
    let out = Command::new("/usr/sbin/ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn upstreams_in_namespace_are_reachable_and_cleaned_up() {
    let ns = netns::Netns::create("self");
    let name = ns.name().to_string();
    assert!(netns_list().lines().any(|l| l.split_whitespace().next() == Some(&name)));
    let (a1, a2, host_addr) = (ns.addr(), ns.add_addr(), ns.host_addr());
    assert!(!a1.is_loopback() && !a2.is_loopback() && a1 != a2);

    let one = ns.serve(a1, 8080, "one");
    let two = ns.serve(a2, 8080, "two");
    assert_eq!(one.url(), format!("http://{a1}:8080"));

    // Two requests on one kept-alive connection.
    let mut conn = BufReader::new(connect(one.socket_addr()).expect("connect one"));
    let echo = get(&mut conn, "example.test", "/a/b?c=d", "");
    assert_eq!(echo["upstream"], "one");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/a/b?c=d");
    assert_eq!(echo["host"], "example.test");
    assert_eq!(echo["headers"]["x-probe"], "yes");
    let echo = get(&mut conn, "example.test", "/again", "Connection: close\r\n");
    assert_eq!(echo["path"], "/again");
    assert_eq!(one.hits(), 2);

    let mut conn = BufReader::new(connect(two.socket_addr()).expect("connect two"));
    assert_eq!(get(&mut conn, "other.test", "/", "")["upstream"], "two");
    assert_eq!(two.hits(), 1);

    // A stopped upstream refuses connections; its neighbour keeps serving.
    let one_addr = one.socket_addr();
    drop(one);
    let err = connect(one_addr).expect_err("connection after drop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(get(&mut conn, "other.test", "/still", "")["path"], "/still");

    drop(conn);
    drop(two);
    drop(ns);
    assert!(!netns_list().lines().any(|l| l.split_whitespace().next() == Some(&name)), "{name} still listed");
    // Its subnet is gone from the root namespace (connecting is no test: the
    // default route may lead to a gateway that accepts anything).
    let addrs = Command::new("/usr/sbin/ip").args(["-o", "-4", "addr"]).output().expect("ip addr").stdout;
    let host = format!(" {host_addr}/24 ");
    assert!(!String::from_utf8_lossy(&addrs).contains(&host), "{host_addr} still assigned");
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    // A pid with no process (pid_max is at most 2^22).
    let dead = (4_000_000..4_194_304).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    // Our pid in the tag keeps parallel runs of this test apart.
    let stale = format!("pst-stale{}-{dead}-0", std::process::id());
    let status = Command::new("/usr/sbin/ip").args(["netns", "add", &stale]).status().expect("ip netns add");
    assert!(status.success());
    let ns = netns::Netns::create("fresh");
    let list = netns_list();
    assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(&stale)), "{stale} not removed: {list}");
    drop(ns);
}
