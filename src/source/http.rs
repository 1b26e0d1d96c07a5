//! The one HTTPS client a daemon uses for Entra ID and the alert APIs.
//!
//! Shared by azure_identity (as its transport) and the poller, so both trust the same roots and
//! go through the same proxy (rust-stack.md §1.4: "one connection pool and one proxy config").
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Settings of the HTTPS client (global in the config file).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `http://[user:password@]host:port` of an HTTP proxy used for every request. Environment
    /// variables are ignored so the daemon behaves the same under systemd and in a shell.
    /// Credentials in the URL must be percent-encoded (peers.md §6 "proxies").
    /// A secret: it may carry a password, and `Debug` must not print it.
    pub proxy: Option<crate::source::SecretString>,
    /// A PEM file of extra CA certificates trusted on top of the system roots (corporate TLS
    /// inspection, or the local fake's test CA).
    pub extra_ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Whole-request timeout; a poll page that takes longer is retried with backoff.
    pub request_timeout: Duration,
    /// Sent as User-Agent. defender-api.md §1.2 asks partners for `MdePartner-{Company}-{Product}/{Version}`.
    pub user_agent: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            proxy: None,
            extra_ca_file: None,
            connect_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(120),
            user_agent: concat!("defender-bridge/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot read the extra CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the extra CA file {path} holds no usable PEM certificate: {detail}")]
    CaPem { path: PathBuf, detail: String },
    /// The proxy URL is not repeated: it may carry a password.
    #[error("the proxy setting is not a valid URL (http://host:port)")]
    Proxy,
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

/// Builds the client: system roots plus the extra CA, the proxy, timeouts, gzip.
pub fn build_http_client(settings: &HttpSettings) -> Result<reqwest::Client, HttpError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .user_agent(settings.user_agent.clone())
        .no_proxy();
    if let Some(path) = &settings.extra_ca_file {
        let pem = std::fs::read(path).map_err(|source| HttpError::CaFile {
            path: path.clone(),
            source,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpError::CaPem {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(HttpError::CaPem {
                path: path.clone(),
                detail: "no CERTIFICATE block".into(),
            });
        }
        // Merged with the platform roots, not replacing them (reqwest `tls_certs_merge`).
        builder = builder.tls_certs_merge(certs);
    }
    if let Some(proxy) = &settings.proxy {
        builder = builder.proxy(reqwest::Proxy::all(proxy.expose()).map_err(|_| HttpError::Proxy)?);
    }
    // reqwest's own text is only "builder error": the cause is in its sources.
    builder.build().map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        HttpError::Build(text)
    })
}
