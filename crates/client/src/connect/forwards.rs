//! `-L` forwards and the SOCKS5 proxy (userspace mode): parsing, the check
//! against the session's released targets (through 1:1 NAT, as the client
//! dials them) and the listeners on the userspace dialer.

use super::Result;
use crate::Error;
use drawbridge_netstack::{Dialer, forward_local_on, socks5_on};
use drawbridge_proto::{NatMapping, PortRange, Protocol, Target};
use std::net::{IpAddr, SocketAddr};

/// A `-L` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

/// `[ADDR:]PORT:TARGET:PORT`; the listen address defaults to 127.0.0.1.
pub fn parse_forward(s: &str) -> Result<Forward> {
    let bad = || Error::user(format!("-L {s:?}: expected [ADDR:]PORT:TARGET:PORT"));
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let [tport, thost, listen] = parts.as_slice() else {
        return Err(bad());
    };
    let target: SocketAddr = format!("{thost}:{tport}").parse().map_err(|_| bad())?;
    let listen = parse_listen(listen).ok_or_else(bad)?;
    Ok(Forward { listen, target })
}

/// `[ADDR:]PORT`, default address 127.0.0.1.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(p) = s.parse::<u16>() {
        return Some(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    s.parse().ok()
}

/// The targets as the client dials them: with 1:1 NAT, a target inside a real
/// subnet is reached at the same offset in the virtual subnet (the server's
/// join answer uses the same rule).
pub(super) fn client_view(targets: &[Target], nat: &[NatMapping]) -> Vec<Target> {
    targets
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(v) = nat
                .iter()
                .filter(|m| m.real.contains(&t.address))
                .find_map(|m| translate(&t.address, m))
            {
                t.address = v;
            }
            t
        })
        .collect()
}

fn translate(net: &ipnet::IpNet, m: &NatMapping) -> Option<ipnet::IpNet> {
    let (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(v)) =
        (net.network(), m.real.network(), m.virtual_subnet.network())
    else {
        return None;
    };
    let addr = u32::from(v).checked_add(u32::from(a).checked_sub(u32::from(b))?)?;
    ipnet::IpNet::new(IpAddr::V4(addr.into()), net.prefix_len()).ok()
}

/// Refuses a `-L` whose target the session does not release (TCP, that address and port).
pub(super) fn check_forwards(forwards: &[Forward], released: &[Target]) -> Result<()> {
    for f in forwards {
        let want = Target {
            address: ipnet::IpNet::from(f.target.ip()),
            protocol: Protocol::Tcp,
            ports: Some(PortRange::single(f.target.port())),
        };
        if !released.iter().any(|t| t.covers(&want)) {
            return Err(Error::user(format!(
                "-L: {} is not a released target of this session",
                f.target
            )));
        }
    }
    Ok(())
}

/// Opens the `-L` forwards and the SOCKS5 proxy on the userspace dialer.
pub(super) async fn start_userspace(
    dialer: &Dialer,
    forwards: &[Forward],
    socks: Option<SocketAddr>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<()> {
    // The targets were checked against the session's released targets before
    // the start (`check_forwards`); the dialer may not route all of them yet
    // (devices still waiting for approval): their connections fail until then.
    for f in forwards {
        let listener = tokio::net::TcpListener::bind(f.listen)
            .await
            .map_err(|e| Error::user(format!("-L: cannot listen on {}: {e}", f.listen)))?;
        eprintln!(
            "forwarding {} → {}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            f.target
        );
        tasks.push(tokio::spawn({
            let (d, target) = (dialer.clone(), f.target);
            async move {
                let _ = forward_local_on(listener, target, d).await;
            }
        }));
    }
    if let Some(addr) = socks {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::user(format!("--socks5: cannot listen on {addr}: {e}")))?;
        eprintln!(
            "SOCKS5 proxy on {} (released targets only)",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        let d = dialer.clone();
        tasks.push(tokio::spawn(async move {
            let _ = socks5_on(listener, d).await;
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_checked_against_the_released_targets_through_nat() {
        let t = |s: &str| s.parse::<Target>().unwrap();
        let f = |s: &str| parse_forward(s).unwrap();
        let released = vec![t("tcp:192.168.1.10:502")];
        assert!(check_forwards(&[f("1502:192.168.1.10:502")], &released).is_ok());
        assert!(check_forwards(&[f("1502:192.168.1.11:502")], &released).is_err());
        assert!(check_forwards(&[f("1502:192.168.1.10:503")], &released).is_err());
        let nat = vec![NatMapping {
            real: "192.168.1.0/24".parse().unwrap(),
            virtual_subnet: "10.9.1.0/24".parse().unwrap(),
        }];
        let seen = client_view(&released, &nat);
        assert!(check_forwards(&[f("1502:10.9.1.10:502")], &seen).is_ok());
        assert!(check_forwards(&[f("1502:192.168.1.10:502")], &seen).is_err());
    }

    #[test]
    fn forwards_parse_with_and_without_a_listen_address() {
        assert_eq!(
            parse_forward("1502:192.168.1.10:502").unwrap(),
            Forward {
                listen: "127.0.0.1:1502".parse().unwrap(),
                target: "192.168.1.10:502".parse().unwrap()
            }
        );
        assert_eq!(
            parse_forward("0.0.0.0:8080:10.0.0.5:80").unwrap().listen,
            "0.0.0.0:8080".parse().unwrap()
        );
        for bad in [
            "",
            "1502",
            "x:192.168.1.10:502",
            "1502:host:502",
            "1502:192.168.1.10:99999",
        ] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_listen("1080").unwrap(),
            "127.0.0.1:1080".parse().unwrap()
        );
    }
}
