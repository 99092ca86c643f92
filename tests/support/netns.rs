//! A Linux network namespace joined to the host by a veth pair, for partition tests
//! (root only). The host side and the namespace side each have an address of a /30 of
//! 10.200.0.0–10.255.255.255 of their own; [`NetNs::cut`] takes the host side's link
//! down, which the namespace sees as a lost carrier (what a pulled cable looks like
//! from a node: its packets go nowhere, silently). The host keeps its side's address
//! (a host-side server stays reachable on it from the host), and a fallback route makes
//! the host's own packets to the namespace fail as unreachable instead of leaving by
//! the default route. Dropping the guard (even on a panic) kills whatever still runs in
//! the namespace and deletes the namespace, the veth pair and the route.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Guards created by this test process, for unique names and subnets.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// /30 subnets of 10.200.0.0/10.255.255.255.
const SUBNETS: u32 = 56 * 65536 / 4;

pub struct NetNs {
    /// The namespace's name (`ip netns exec <name>`).
    pub name: String,
    /// The host side's interface and address.
    pub host_link: String,
    pub host_address: String,
    /// The namespace side's interface and address.
    pub ns_link: String,
    pub ns_address: String,
    /// `10.x.y.z/30`.
    subnet: String,
}

/// `ip ARGS`, failing the test with what it printed.
fn ip(args: &[&str]) {
    super::succeed(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    );
}

/// `ip ARGS`, for cleaning up: failures (already gone) are ignored.
fn ip_quietly(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// Whether anything on the host already uses an address of `subnet` (a route to it
/// or inside it, in any table: another guard's, or the host's own).
fn subnet_in_use(subnet: &str) -> bool {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all", "root", subnet])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    !routes.trim().is_empty()
}

impl NetNs {
    /// Whether this process may make namespaces (root, with `ip` installed).
    pub fn available() -> bool {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        root && Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|out| out.status.success())
    }

    pub fn new() -> Self {
        let pid = std::process::id();
        let counter = NEXT.fetch_add(1, Ordering::SeqCst);
        // Interface names have at most 15 characters: "pgh" + pid (7 digits at most)
        // + "x" + counter.
        let name = format!("pgop-part-{pid}-{counter}");
        let host_link = format!("pgh{pid}x{counter}");
        let ns_link = format!("pgn{pid}x{counter}");
        // A subnet from the pid and the counter, skipping any the host already uses.
        let mut slot = (pid
            .wrapping_mul(61)
            .wrapping_add(counter.wrapping_mul(7919)))
            % SUBNETS;
        let mut tries = 0;
        let (subnet, host_address, ns_address) = loop {
            tries += 1;
            assert!(tries < 10_000, "no free /30 in 10.200.0.0/10.255.255.255");
            let base = (10u32 << 24) | (200u32 << 16) | (slot * 4);
            let dotted = |a: u32| std::net::Ipv4Addr::from(a).to_string();
            let subnet = format!("{}/30", dotted(base));
            if !subnet_in_use(&subnet) {
                break (subnet, dotted(base + 1), dotted(base + 2));
            }
            slot = (slot + 1) % SUBNETS;
        };
        // From here on, Drop cleans up whatever was made.
        let guard = Self {
            name,
            host_link,
            host_address,
            ns_link,
            ns_address,
            subnet,
        };
        let (ns, host_link, ns_link) = (&guard.name, &guard.host_link, &guard.ns_link);
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", host_link, "type", "veth", "peer", "name", ns_link,
        ]);
        ip(&["link", "set", ns_link, "netns", ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", guard.host_address),
            "dev",
            host_link,
        ]);
        ip(&["link", "set", host_link, "up"]);
        // While the host side is down: unreachable, not out by the default route.
        ip(&[
            "route",
            "add",
            "unreachable",
            &guard.subnet,
            "metric",
            "1000",
        ]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&[
            "addr",
            "add",
            &format!("{}/30", guard.ns_address),
            "dev",
            ns_link,
        ]);
        inside(&["link", "set", ns_link, "up"]);
        eprintln!(
            "network namespace {ns}: host side {} {}, namespace side {} {}",
            guard.host_link, guard.host_address, guard.ns_link, guard.ns_address
        );
        guard
    }

    /// The partition: the host side's link goes down (the namespace loses its carrier).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    /// The link is back.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// The pids of every process inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Only processes this test started run in its namespace.
        let pids: Vec<String> = self.pids().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            eprintln!(
                "killing what still runs in {}: {}",
                self.name,
                pids.join(" ")
            );
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        // Deleting one end deletes the pair, at once (a namespace's own devices go
        // only once its last process is gone).
        ip_quietly(&["link", "del", &self.host_link]);
        ip_quietly(&[
            "route",
            "del",
            "unreachable",
            &self.subnet,
            "metric",
            "1000",
        ]);
        ip_quietly(&["netns", "del", &self.name]);
    }
}
