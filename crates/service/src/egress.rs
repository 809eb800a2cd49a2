//! How every outbound HTTP client of the service is built: directly, or through the one
//! proxy the operator configured (`egress.proxy_url`), never through a proxy named by
//! the environment.
//!
//! reqwest honours `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` by default. For URLs that
//! clients give us (input images, webhooks) that defeats the SSRF guard: a request for
//! `http://localhost:8500/` goes to the proxy, no name is ever resolved here, and the
//! proxy fetches whatever it can reach. So the environment is ignored. An operator who
//! needs a proxy names it in the configuration, knowing that the guard then checks only
//! IP-literal URLs and the proxy has to refuse private destinations itself.

/// A client builder with the proxy setting applied: `proxy` for every request, or none.
pub fn client_builder(proxy: Option<&str>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match proxy {
        // Config validation has parsed the URL already.
        Some(url) => builder.proxy(reqwest::Proxy::all(url).expect("egress.proxy_url was validated at startup")),
        None => builder.no_proxy(),
    }
}
