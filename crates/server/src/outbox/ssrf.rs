//! Where webhooks may go. An account admin names the URL, and the server calls it
//! from inside its own network: without care that is a way to reach the server's
//! neighbours (server-side request forgery). So by default a webhook must be
//! `https` to a public address — checked on the URL when it is set, and on every
//! address its name resolves to when it is called (so a name that later resolves
//! to a private address is refused too). `--webhook-allow-private` admits loopback
//! and private addresses (and `http` to them only), for tests and on-premises
//! receivers; link-local addresses (cloud metadata services) are refused always.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// Whether a webhook may be sent to `ip`.
pub fn allowed_ip(ip: IpAddr, allow_private: bool) -> bool {
    match class(ip) {
        Class::Public => true,
        Class::Private => allow_private,
        Class::Never => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Public,
    /// Loopback, private ranges, shared address space (CGNAT, our overlay),
    /// unique-local IPv6.
    Private,
    /// Unspecified, link-local, multicast, broadcast, documentation, reserved.
    Never,
}

fn class(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 is judged as IPv4.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return class_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return class_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            class_v6(v6)
        }
    }
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let o = ip.octets();
    if ip.is_loopback() || ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        return Class::Private;
    }
    if ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || o[0] == 0
        || o[0] >= 240
        // 192.0.0.0/24 (protocol assignments), 198.18.0.0/15 (benchmarking)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        return Class::Never;
    }
    Class::Public
}

fn class_v6(ip: Ipv6Addr) -> Class {
    let s = ip.segments();
    if ip.is_loopback() || (s[0] & 0xfe00) == 0xfc00 {
        return Class::Private;
    }
    if ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // IPv4-compatible (deprecated) and other ::/96 forms
        || s[..6] == [0, 0, 0, 0, 0, 0]
    {
        return Class::Never;
    }
    Class::Public
}

/// Checks a webhook URL as it is set: `https` (or `http` to a loopback or private
/// address, with `allow_private`), a host, no user name or password, at most
/// [`MAX_URL_LEN`] bytes; an address written in the URL must be allowed. Returns
/// the URL in its normal form.
pub fn check_url(s: &str, allow_private: bool) -> Result<url::Url, String> {
    if s.len() > MAX_URL_LEN {
        return Err(format!(
            "a webhook URL has at most {MAX_URL_LEN} characters"
        ));
    }
    let url = url::Url::parse(s.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a webhook URL must not contain a user name or password".into());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
        Some(url::Host::Domain(d)) if is_localhost(d) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Some(url::Host::Domain(_)) => None,
        None => return Err("a webhook URL needs a host".into()),
    };
    if let Some(ip) = ip
        && !allowed_ip(ip, allow_private)
    {
        return Err(if class(ip) == Class::Private {
            "webhooks to loopback or private addresses are refused (the server's \
             --webhook-allow-private admits them)"
                .into()
        } else {
            "webhooks to this address are refused (link-local, multicast or reserved)".into()
        });
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_private && ip.is_some_and(|ip| class(ip) == Class::Private) => {}
        "http" => {
            return Err(
                "a webhook URL must be https (http only to a loopback or private address, with --webhook-allow-private)"
                    .into(),
            );
        }
        other => return Err(format!("a webhook URL must be https, not {other}")),
    }
    Ok(url)
}

/// `localhost` and its subdomains, with or without the final dot.
fn is_localhost(name: &str) -> bool {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n == "localhost" || n.ends_with(".localhost")
}

/// Resolves webhook hosts, keeping only the addresses a webhook may go to; a name
/// with none left fails (so does the call).
#[derive(Debug, Clone, Copy)]
pub struct Resolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allowed_ip(a.ip(), allow_private))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no address a webhook may go to (private, loopback or reserved addresses are refused)"
                )
                .into());
            }
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_unless_private_ones_are_allowed() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
        ] {
            assert!(allowed_ip(ip(public), false), "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.0.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(!allowed_ip(ip(private), false), "{private}");
            assert!(allowed_ip(ip(private), true), "{private} with the flag");
        }
        for never in [
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "240.0.0.1",
            "::",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:169.254.169.254",
            "::7f00:1",
        ] {
            assert!(!allowed_ip(ip(never), true), "{never} even with the flag");
        }
    }

    #[test]
    fn webhook_urls_are_https_to_public_hosts_by_default() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        assert!(check_url("https://93.184.216.34/x", false).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://localhost./x",
            "https://a.LOCALHOST/x",
            "https://[::1]/x",
            "https://10.0.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://user:pw@hooks.example.com/",
            "ftp://hooks.example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "not a url",
            "",
            "https://",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(check_url(&long, false).is_err());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_get_no_connection() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        // From /etc/hosts: no query leaves the machine.
        let name = || reqwest::dns::Name::from_str("localhost").unwrap();
        let refused = Resolver {
            allow_private: false,
        }
        .resolve(name())
        .await;
        assert!(refused.is_err(), "a name is judged by what it resolves to");
        let allowed: Vec<SocketAddr> = Resolver {
            allow_private: true,
        }
        .resolve(name())
        .await
        .expect("resolves with the flag")
        .collect();
        assert!(!allowed.is_empty() && allowed.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn the_flag_admits_http_and_https_to_private_addresses_only() {
        assert!(check_url("http://127.0.0.5:8080/hook", true).is_ok());
        assert!(check_url("https://192.168.1.20/hook", true).is_ok());
        assert!(check_url("http://localhost:9/hook", true).is_ok());
        assert!(
            check_url("http://hooks.example.com/x", true).is_err(),
            "http to a name"
        );
        assert!(
            check_url("http://93.184.216.34/x", true).is_err(),
            "http to public"
        );
        assert!(check_url("http://169.254.169.254/", true).is_err());
    }
}
