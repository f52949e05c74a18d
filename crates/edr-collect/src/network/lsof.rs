//! Parser for `lsof` field output, the macOS socket source. Pure text
//! handling, so it is compiled and tested on every platform.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::{Owner, Socket, SocketKey, Transport};

/// One file of lsof's field output, filled line by line.
#[derive(Default)]
struct Record<'a> {
    fd: Option<u32>,
    ipv6: bool,
    protocol: &'a str,
    name: &'a str,
    state: &'a str,
}

/// Parses `lsof -F pcfnPTt` output: `p`/`c` lines start a process, `f`
/// lines start one of its files, the other lines describe that file.
pub(super) fn parse_lsof<'a>(
    text: &'a str,
    out: &mut Vec<Socket>,
    mut owner: impl FnMut(u32, &str) -> Option<Arc<Owner>>,
) {
    let (mut pid, mut command) = (0u32, "");
    let mut rec = Record::default();
    let mut flush = |pid: u32, command: &str, rec: &Record<'a>| {
        if let Some(s) = to_socket(pid, rec) {
            out.push(Socket {
                owner: owner(pid, command),
                ..s
            });
        }
    };
    for line in text.lines() {
        let Some(tag) = line.chars().next() else {
            continue;
        };
        let value = &line[tag.len_utf8()..];
        match tag {
            'p' | 'f' => {
                flush(pid, command, &rec);
                rec = Record::default();
                if tag == 'p' {
                    pid = value.parse().unwrap_or(0);
                    command = "";
                } else {
                    rec.fd = value.parse().ok();
                }
            }
            'c' => command = value,
            't' => rec.ipv6 = value == "IPv6",
            'P' => rec.protocol = value,
            'n' => rec.name = value,
            'T' => {
                if let Some(st) = value.strip_prefix("ST=") {
                    rec.state = st;
                }
            }
            _ => {}
        }
    }
    flush(pid, command, &rec);
}

fn to_socket(pid: u32, rec: &Record<'_>) -> Option<Socket> {
    let fd = rec.fd?;
    let (transport, state) = match rec.protocol {
        "TCP" => (
            Transport::Tcp,
            Some(match rec.state {
                "LISTEN" => "LISTEN",
                "ESTABLISHED" => "ESTABLISHED",
                "SYN_SENT" => "SYN_SENT",
                "SYN_RECEIVED" => "SYN_RECV",
                // Closing, but the connection still exists (see linux.rs).
                "FIN_WAIT_1" => "FIN_WAIT1",
                "FIN_WAIT_2" => "FIN_WAIT2",
                "TIME_WAIT" => "TIME_WAIT",
                "CLOSE_WAIT" => "CLOSE_WAIT",
                "LAST_ACK" => "LAST_ACK",
                "CLOSING" => "CLOSING",
                _ => return None,
            }),
        ),
        "UDP" => (Transport::Udp, None),
        _ => return None,
    };
    let (local, remote) = match rec.name.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (rec.name, None),
    };
    let local = endpoint(local, rec.ipv6)?;
    let remote = match remote {
        Some(r) => endpoint(r, rec.ipv6)?,
        None => SocketAddr::new(unspecified(rec.ipv6), 0),
    };
    Some(Socket {
        key: SocketKey {
            transport,
            local,
            remote,
            inode: u64::from(pid) << 32 | u64::from(fd),
        },
        ipv6_family: rec.ipv6,
        state,
        owner: None,
    })
}

fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// `127.0.0.1:80`, `[::1]:80`, `[fe80::1%en0]:5353`, `*:80`, `*:*`.
fn endpoint(s: &str, ipv6: bool) -> Option<SocketAddr> {
    let (host, port) = s.rsplit_once(':')?;
    let port = if port == "*" { 0 } else { port.parse().ok()? };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split_once('%').map_or(host, |(h, _)| h);
    let ip = if host == "*" {
        unspecified(ipv6)
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from `lsof` (Linux build, same field format as macOS) for a
    /// process holding a listener, both ends of a connection to it and an
    /// IPv6 UDP socket; then a hand-written macOS-style process with
    /// wildcard, scoped and closing sockets.
    const OUTPUT: &str = "p15175\ncpython3\nf3\ntIPv4\nPTCP\nn127.0.0.1:44127\nTST=LISTEN\nTQR=0\nTQS=0\nf4\ntIPv4\nPTCP\nn127.0.0.1:51494->127.0.0.1:44127\nTST=ESTABLISHED\nTQR=0\nTQS=0\nf5\ntIPv4\nPTCP\nn127.0.0.1:44127->127.0.0.1:51494\nTST=ESTABLISHED\nTQR=0\nTQS=0\nf6\ntIPv6\nPUDP\nn[::1]:53851\nTQR=0\nTQS=0\np88\ncGoogle Chrome He\nf20\ntIPv4\nPUDP\nn*:5353\nf21\ntIPv6\nPUDP\nn[fe80::1%lo0]:5353\nf22\ntIPv6\nPTCP\nn[::1]:60000->[::1]:443\nTST=CLOSE_WAIT\nf23\ntIPv4\nPTCP\nn*:*\nTST=CLOSED\nf24\ntIPv6\nPTCP\nn[::1]:8443->[::1]:60001\nTST=SYN_RECEIVED\n";

    fn owner(pid: u32, name: &str) -> Option<Arc<Owner>> {
        Some(Arc::new(Owner {
            pid,
            name: name.to_string(),
            entity_id: String::new(),
            start: None,
            executable: None,
            args: Vec::new(),
            user: None,
        }))
    }

    #[test]
    fn parses_field_output_into_sockets() {
        let mut out = Vec::new();
        parse_lsof(OUTPUT, &mut out, owner);
        let got: Vec<_> = out
            .iter()
            .map(|s| {
                (
                    s.key.transport,
                    s.key.local.to_string(),
                    s.key.remote.to_string(),
                    s.state,
                    s.owner.as_ref().map(|o| (o.pid, o.name.clone())),
                )
            })
            .collect();
        let py = Some((15175, "python3".to_string()));
        let chrome = Some((88, "Google Chrome He".to_string()));
        assert_eq!(
            got,
            [
                (
                    Transport::Tcp,
                    "127.0.0.1:44127".into(),
                    "0.0.0.0:0".into(),
                    Some("LISTEN"),
                    py.clone()
                ),
                (
                    Transport::Tcp,
                    "127.0.0.1:51494".into(),
                    "127.0.0.1:44127".into(),
                    Some("ESTABLISHED"),
                    py.clone()
                ),
                (
                    Transport::Tcp,
                    "127.0.0.1:44127".into(),
                    "127.0.0.1:51494".into(),
                    Some("ESTABLISHED"),
                    py.clone()
                ),
                (
                    Transport::Udp,
                    "[::1]:53851".into(),
                    "[::]:0".into(),
                    None,
                    py
                ),
                (
                    Transport::Udp,
                    "0.0.0.0:5353".into(),
                    "0.0.0.0:0".into(),
                    None,
                    chrome.clone()
                ),
                (
                    Transport::Udp,
                    "[fe80::1]:5353".into(),
                    "[::]:0".into(),
                    None,
                    chrome.clone()
                ),
                (
                    Transport::Tcp,
                    "[::1]:60000".into(),
                    "[::1]:443".into(),
                    Some("CLOSE_WAIT"),
                    chrome.clone()
                ),
                (
                    Transport::Tcp,
                    "[::1]:8443".into(),
                    "[::1]:60001".into(),
                    Some("SYN_RECV"),
                    chrome
                ),
            ]
        );
        // pid and fd stand in for the inode: distinct per socket.
        assert_eq!(out[0].key.inode, 15175 << 32 | 3);
        assert!(out[3].ipv6_family && !out[0].ipv6_family);
    }

    #[test]
    fn empty_or_garbled_output_yields_nothing() {
        let mut out = Vec::new();
        parse_lsof("", &mut out, owner);
        parse_lsof("p\nf\nnnot an address\nPTCP\n\n", &mut out, owner);
        assert!(out.is_empty());
    }
}
