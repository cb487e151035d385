//! Krill's own nftables table (`inet krill`): the egress
//! policy of every task on the worker bridge, rendered as `nft -f` scripts.
//! Never touches another table (Docker's, the host's firewall).
//!
//! ```text
//! inet krill    input        task → the host itself (any address)   reject
//!               forward      (bridged task → task too: br_netfilter hands it here)
//!                            established → accept
//!                            always refused (loopback, 169.254/16, the bridge's subnet,
//!                              the broker's addresses, --network-refuse) → reject
//!                            ip saddr vmap @tasks → jump t_<addr>: the task's grant → accept
//!                            non-public ranges → reject;  public → accept
//! ```
//! A refusal is a TCP reset or an ICMP admin-prohibited: it fails at once.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};

use super::policy::{Allowance, ALWAYS_REFUSED, NON_PUBLIC};

/// Table name in both families.
pub const TABLE: &str = "krill";

/// The base ruleset, as one `nft -f` transaction every worker runs at start
/// (so atomic, and the same whether the table exists or not): the sets and the
/// map are added to (a union over every worker of the host: refused addresses,
/// worker bridges), the chains' rules written afresh. Task grants (their
/// chains and map entries) are untouched. Several bridges (worker
/// configurations) on one host are each filtered: a rule names the set of
/// bridges, never one (a table that named only the first worker's bridge let
/// the tasks of a worker on another bridge through unfiltered).
pub fn ensure(bridge: &str, subnet: Ipv4Net, refused: &[IpNet]) -> String {
    let refused4 = refused_set(subnet, refused);
    let non_public = NON_PUBLIC.join(", ");
    let t = format!("inet {TABLE}");
    format!(
        r#"add table {t}
add set {t} refused4 {{ type ipv4_addr; flags interval; auto-merge; }}
add element {t} refused4 {{ {refused4} }}
add set {t} nonpublic4 {{ type ipv4_addr; flags interval; }}
add element {t} nonpublic4 {{ {non_public} }}
add map {t} tasks4 {{ type ipv4_addr : verdict; }}
add set {t} bridges {{ type ifname; }}
add element {t} bridges {{ "{bridge}" }}
add chain {t} refuse
flush chain {t} refuse
add rule {t} refuse meta l4proto tcp reject with tcp reset
add rule {t} refuse reject with icmpx type admin-prohibited
add chain {t} input {{ type filter hook input priority -10; policy accept; }}
flush chain {t} input
add rule {t} input iifname @bridges ct state established,related accept
add rule {t} input iifname @bridges goto refuse
add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}
flush chain {t} forward
add rule {t} forward iifname != @bridges accept
add rule {t} forward ct state established,related accept
add rule {t} forward meta nfproto ipv6 goto refuse
add rule {t} forward ip daddr @refused4 goto refuse
add rule {t} forward ip saddr vmap @tasks4
add rule {t} forward ip daddr @nonpublic4 goto refuse
add rule {t} forward accept
"#
    )
}

fn refused_set(subnet: Ipv4Net, refused: &[IpNet]) -> String {
    let mut v: Vec<String> = ALWAYS_REFUSED.iter().map(|s| s.to_string()).collect();
    v.push(subnet.to_string());
    v.extend(refused.iter().filter_map(|n| match n {
        IpNet::V4(n) => Some(n.to_string()),
        IpNet::V6(_) => None,
    }));
    v.join(", ")
}

/// The bridge's own address: the subnet's first host.
pub fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// Name of a task address's chain.
pub fn chain(addr: Ipv4Addr) -> String {
    format!("t_{:08x}", u32::from(addr))
}

/// The address a task chain belongs to.
pub fn chain_addr(name: &str) -> Option<Ipv4Addr> {
    let hex = name.strip_prefix("t_")?;
    u32::from_str_radix(hex, 16).ok().map(Ipv4Addr::from)
}

/// Gives `addr` exactly `grant` (what was there before is flushed first).
pub fn grant(addr: Ipv4Addr, grant: &[Allowance]) -> String {
    let c = chain(addr);
    let mut s = format!(
        "add chain inet {TABLE} {c}\nflush chain inet {TABLE} {c}\n\
         add element inet {TABLE} tasks4 {{ {addr} : jump {c} }}\n"
    );
    for a in grant {
        let IpNet::V4(net) = a.net else { continue };
        let ports = a.port_list(", ");
        if ports.is_empty() {
            let _ = writeln!(s, "add rule inet {TABLE} {c} ip daddr {net} accept");
        } else {
            let _ = writeln!(
                s,
                "add rule inet {TABLE} {c} ip daddr {net} meta l4proto {{ tcp, udp }} th dport {{ {ports} }} accept"
            );
        }
    }
    s
}

/// Takes `addr`'s grant away (its chain and map entry).
pub fn revoke(addr: Ipv4Addr) -> String {
    let c = chain(addr);
    format!("delete element inet {TABLE} tasks4 {{ {addr} }}\ndelete chain inet {TABLE} {c}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_a_chain_of_its_own_flushed_first() {
        let addr = Ipv4Addr::new(10, 213, 1, 5);
        let g = [
            "10.20.0.0/16:5432+8000-8100".parse().expect("a"),
            "198.51.100.7".parse().expect("b"),
        ];
        let s = grant(addr, &g);
        assert!(s.contains("flush chain inet krill t_0ad50105"), "{s}");
        assert!(s.contains("tasks4 { 10.213.1.5 : jump t_0ad50105 }"), "{s}");
        assert!(s.contains("ip daddr 10.20.0.0/16 meta l4proto { tcp, udp } th dport { 5432, 8000-8100 } accept"), "{s}");
        assert!(s.contains("ip daddr 198.51.100.7/32 accept"), "{s}");
        assert_eq!(chain_addr("t_0ad50105"), Some(addr));
    }

    #[test]
    fn the_base_refuses_the_bridge_and_loopback() {
        let subnet: Ipv4Net = "10.213.0.0/16".parse().expect("net");
        let s = ensure("krill0", subnet, &["192.0.2.9/32".parse().expect("net")]);
        assert!(s.contains("127.0.0.0/8, 169.254.0.0/16"), "{s}");
        assert!(s.contains("10.213.0.0/16, 192.0.2.9/32"), "{s}");
        assert!(
            s.contains(r#"add element inet krill bridges { "krill0" }"#),
            "{s}"
        );
        assert!(s.contains("forward iifname != @bridges accept"), "{s}");
        assert!(
            !s.contains(r#"iifname "krill0""#),
            "no rule names one bridge: {s}"
        );
    }
}
