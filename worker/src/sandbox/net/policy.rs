//! The egress policy as data: what a pool allows (`--network-allow`), what a
//! task asks for, what it is granted, and the ranges that are never reached.
//! Pure: no I/O, so the containment rules are tested here.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A destination a task may reach beyond the public internet: a network and
/// its ports (empty: every port, every protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub net: IpNet,
    /// Inclusive port ranges (TCP and UDP); empty: every port.
    pub ports: Vec<(u16, u16)>,
}

impl Allowance {
    /// Its port ranges as `80`, `8000-8080`, joined by `sep` (empty: every port).
    pub fn port_list(&self, sep: &str) -> String {
        self.ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(sep)
    }
}

impl FromStr for Allowance {
    type Err = String;

    /// `CIDR`, `ADDR`, `CIDR:PORTS` or `[V6CIDR]:PORTS`; PORTS is `443`,
    /// `8000-8100` or several joined with `+`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{s}`: {why} (want CIDR or CIDR:PORTS, like 10.20.0.0/16:5432)");
        let (addr, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (a, p) = rest.split_once(']').ok_or_else(|| bad("no closing `]`"))?;
            (a, p.strip_prefix(':'))
        } else if s.matches(':').count() == 1 {
            let (a, p) = s.split_once(':').ok_or_else(|| bad("no port"))?;
            (a, Some(p))
        } else {
            (s, None)
        };
        let net = match IpNet::from_str(addr) {
            Ok(n) => n.trunc(),
            Err(_) => IpAddr::from_str(addr)
                .map(IpNet::from)
                .map_err(|_| bad("not an address or network"))?,
        };
        let mut out = Vec::new();
        for p in ports.into_iter().flat_map(|p| p.split('+')) {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo = lo.parse::<u16>().map_err(|_| bad("bad port"))?;
            let hi = hi.parse::<u16>().map_err(|_| bad("bad port"))?;
            if lo == 0 || lo > hi {
                return Err(bad("bad port range"));
            }
            out.push((lo, hi));
        }
        Ok(Allowance { net, ports: out })
    }
}

impl fmt::Display for Allowance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = || self.port_list("+");
        match (&self.net, self.ports.is_empty()) {
            (n, true) => write!(f, "{n}"),
            (IpNet::V6(n), false) => write!(f, "[{n}]:{}", ports()),
            (n, false) => write!(f, "{n}:{}", ports()),
        }
    }
}

impl Allowance {
    /// Whether everything this allows is also allowed by `wider`.
    pub fn within(&self, wider: &Allowance) -> bool {
        if !wider.net.contains(&self.net) {
            return false;
        }
        if wider.ports.is_empty() {
            return true;
        }
        !self.ports.is_empty()
            && self
                .ports
                .iter()
                .all(|&(lo, hi)| wider.ports.iter().any(|&(wl, wh)| wl <= lo && hi <= wh))
    }
}

/// What a task asked beyond the pool's allowance, said for its `rejected` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("limits.network: {0}")]
    Invalid(String),
    #[error("limits.network asks for `{asked}`, which this pool's --network-allow ({pool}) does not include")]
    Beyond { asked: String, pool: String },
}

/// What a task with network is granted: its own asks (each within the pool's
/// allowance), or the pool's whole allowance when it asked `true`.
pub fn grant(asked: Option<&[String]>, pool: &[Allowance]) -> Result<Vec<Allowance>, GrantError> {
    let Some(asked) = asked else {
        return Ok(pool.to_vec());
    };
    let mut out = Vec::with_capacity(asked.len());
    for a in asked {
        let a = Allowance::from_str(a).map_err(GrantError::Invalid)?;
        if !pool.iter().any(|p| a.within(p)) {
            return Err(GrantError::Beyond {
                asked: a.to_string(),
                pool: if pool.is_empty() {
                    "nothing".into()
                } else {
                    pool.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            });
        }
        out.push(a);
    }
    Ok(out)
}

/// Never reached by a task, whatever it is granted (the host's own and the
/// bridge's addresses are added where the rules are made).
pub const ALWAYS_REFUSED: &[&str] = &["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// Not the public internet: reached only when granted. RFC 1918, shared
/// address space (CGNAT), the IETF and documentation ranges, benchmarking.
pub const NON_PUBLIC: &[&str] = &[
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Allowance {
        s.parse().expect("parses")
    }

    #[test]
    fn parses_networks_addresses_and_ports() {
        assert_eq!(a("10.20.0.0/16:5432").to_string(), "10.20.0.0/16:5432");
        assert_eq!(a("203.0.113.7:443").to_string(), "203.0.113.7/32:443");
        assert_eq!(a("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(
            a("10.0.0.0/8:80+8000-8100").ports,
            vec![(80, 80), (8000, 8100)]
        );
        assert_eq!(a("[fd00::/8]:53").to_string(), "[fd00::/8]:53");
        assert_eq!(a("fd00::1").to_string(), "fd00::1/128");
        for bad in [
            "",
            "10.0.0.0/33",
            "host:80",
            "10.0.0.1:0",
            "10.0.0.1:9-8",
            "10.0.0.1:x",
        ] {
            assert!(bad.parse::<Allowance>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_task_gets_only_what_the_pool_allows() {
        let pool = vec![a("10.20.0.0/16:5432+6432"), a("198.51.100.0/24")];
        let ask = |v: &[&str]| {
            grant(
                Some(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                &pool,
            )
        };
        assert!(ask(&["10.20.3.0/24:5432", "198.51.100.7:80"]).is_ok());
        assert!(ask(&["198.51.100.7"]).is_ok());
        let e = ask(&["10.20.0.0/16"]).expect_err("all ports of a ports-bounded net");
        assert!(e.to_string().contains("10.20.0.0/16"), "{e}");
        assert!(ask(&["10.0.0.0/8:5432"]).is_err());
        assert!(ask(&["10.20.0.1:22"]).is_err());
        assert!(matches!(ask(&["nonsense"]), Err(GrantError::Invalid(_))));
        assert_eq!(grant(None, &pool).expect("whole"), pool);
        assert!(grant(Some(&["10.0.0.1".into()]), &[]).is_err());
    }
}
