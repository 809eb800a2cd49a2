//! The SSRF guard for URLs that clients give us (input images now, webhooks later):
//! outbound requests to them must never reach the operator's own network.
//!
//! The check happens on the addresses a name resolves to, inside the HTTP client's
//! resolver, so the connection goes to an address that was checked: there is no
//! second lookup a hostile DNS server could answer differently. IP-literal URLs never
//! reach a resolver, so they are checked up front, and so is every redirect target.
//! Operators (and the tests) can allow private destinations with
//! `engine.allow_private_urls`; the caller passes the setting in, this module reads no
//! environment. Which addresses are refused is decided in
//! `domain::address`, the same rule request validation applies to IP-literal URLs at
//! submission.
//!
//! Proxy variables in the environment are ignored (see `egress`): through a proxy, names
//! would never reach this resolver. With `egress.proxy_url` set, only IP-literal URLs
//! are checked here and the proxy must refuse the rest.
//!
//! URLs the operator configures (MiniMax base URLs) and the download links MiniMax
//! returns are not client input and do not pass through this guard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use domain::address::forbidden_reason;
/// A client-supplied URL that may not be fetched (the domain's one classification).
pub use domain::address::UrlRefusal as GuardError;

/// Checks scheme and, for IP-literal hosts, the address.
pub fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), GuardError> {
    domain::address::check_destination(url, allow_private)
}

/// Resolves names and drops refused addresses; fails when none is left.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match forbidden_reason(a.ip()) {
                    Some(reason) if !allow_private => {
                        refused = Some(GuardError::Forbidden { addr: a.ip(), reason });
                        false
                    }
                    _ => true,
                })
                .collect();
            if allowed.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = match refused {
                    Some(e) => Box::new(e),
                    None => format!("{host} has no address").into(),
                };
                return Err(err);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// An HTTP client for client-supplied URLs: every connection and redirect passes the
/// guard. `max_redirects` 0 follows none (webhooks: a 3xx is a failed delivery).
///
/// Without a proxy (`egress.proxy_url`) it connects directly to checked addresses, and
/// ignores proxy environment variables, which would otherwise carry names past the
/// resolver. With a proxy the proxy resolves names, so only IP literals (checked by
/// [`check_url`] before each request and redirect) are ours to refuse; the resolver
/// then only resolves the proxy's own name, which the operator chose and may well be
/// private, so it is the ordinary one.
pub fn guarded_client(
    timeout: Duration,
    allow_private: bool,
    max_redirects: usize,
    proxy: Option<&str>,
) -> reqwest::Client {
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max_redirects || max_redirects == 0 {
            attempt.stop()
        } else if attempt.previous().len() >= max_redirects {
            attempt.error("too many redirects")
        } else if let Err(e) = check_url(attempt.url(), allow_private) {
            attempt.error(e)
        } else {
            attempt.follow()
        }
    });
    let mut builder = crate::egress::client_builder(proxy);
    if proxy.is_none() {
        builder = builder.dns_resolver(Arc::new(GuardedResolver { allow_private }));
    }
    builder
        .redirect(redirects)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("reelgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with these settings always builds")
}

/// The refusal inside a failed request, if the guard caused it.
pub fn refusal_in(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        if let Some(g) = e.downcast_ref::<GuardError>() {
            return Some(g.to_string());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literal_urls_are_checked_before_any_connection() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(matches!(check_url(&url("http://127.0.0.1/x.png"), false), Err(GuardError::Forbidden { .. })));
        assert!(matches!(check_url(&url("http://[::1]/x.png"), false), Err(GuardError::Forbidden { .. })));
        assert!(check_url(&url("http://127.0.0.1/x.png"), true).is_ok());
        assert!(matches!(check_url(&url("file:///etc/passwd"), true), Err(GuardError::Scheme)));
        assert!(check_url(&url("https://images.example.com/x.png"), false).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_refused_addresses_are_not_contacted() {
        let client = guarded_client(Duration::from_secs(5), false, 3, None);
        let err = client.get("http://localhost:9/x.png").send().await.unwrap_err();
        let refusal = refusal_in(&err).expect("refused by the guard, not by the network");
        assert!(refusal.contains("loopback"), "{refusal}");
    }
}
