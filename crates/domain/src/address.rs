//! Which destinations a client-supplied URL (an input image, a webhook) may name.
//!
//! This is the one classification of addresses in reelgate: request validation uses
//! it to refuse IP-literal URLs at submission, and the service's SSRF guard uses it on
//! the addresses a host name resolves to at fetch or delivery time. It only judges
//! what it is given; resolving names is the guard's job, since that needs I/O.

use std::net::{IpAddr, Ipv4Addr};

use url::{Host, Url};

/// Why an address may not be contacted, or `None` if it may.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address dressed as IPv6 is judged as the IPv4 address it carries.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                // NAT64 reaches the IPv4 address in the low 32 bits.
                forbidden_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
            } else if s[..6] == [0, 0, 0, 0, 0, 0] {
                // Deprecated IPv4-compatible form.
                forbidden_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("shared address space (CGNAT)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else {
        None
    }
}

/// A client-supplied URL that may not be fetched.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    /// Not http or https.
    #[error("only http and https URLs can be fetched")]
    Scheme,
    /// Not a URL with a host.
    #[error("not a valid URL")]
    Invalid,
    /// Resolves to (or is) an address of a refused class.
    #[error("destination {addr} is not allowed ({reason} address)")]
    Forbidden {
        /// The refused address.
        addr: IpAddr,
        /// Its class.
        reason: &'static str,
    },
}

/// Checks a parsed URL's scheme and, when its host is an IP literal, the address.
///
/// Host names pass: what they resolve to can change between now and the request, so
/// the resolver that makes the connection checks them (the service's guard).
pub fn check_destination(url: &Url, allow_private: bool) -> Result<(), UrlRefusal> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(UrlRefusal::Scheme);
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(_)) => return Ok(()),
        None => return Err(UrlRefusal::Invalid),
    };
    match forbidden_reason(ip) {
        Some(reason) if !allow_private => Err(UrlRefusal::Forbidden { addr: ip, reason }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refused_class_is_refused_and_public_addresses_pass() {
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ];
        for ip in refused {
            assert!(forbidden_reason(ip.parse().unwrap()).is_some(), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn ip_literal_urls_are_checked_without_resolving_anything() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(matches!(check_destination(&url("http://127.0.0.1/x.png"), false), Err(UrlRefusal::Forbidden { .. })));
        assert!(matches!(check_destination(&url("http://[::1]/x.png"), false), Err(UrlRefusal::Forbidden { .. })));
        // The WHATWG parser reads these spellings as 127.0.0.1, exactly as the HTTP client will.
        for sneaky in ["http://0x7f.1/", "http://2130706433/", "http://017700000001/"] {
            assert!(matches!(check_destination(&url(sneaky), false), Err(UrlRefusal::Forbidden { .. })), "{sneaky}");
        }
        assert!(check_destination(&url("http://127.0.0.1/x.png"), true).is_ok());
        assert_eq!(check_destination(&url("file:///etc/passwd"), true), Err(UrlRefusal::Scheme));
        assert!(check_destination(&url("https://images.example.com/x.png"), false).is_ok());
        assert!(check_destination(&url("http://localhost/x.png"), false).is_ok(), "names are checked when resolved");
    }
}
