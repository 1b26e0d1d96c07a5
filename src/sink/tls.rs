//! The rustls client configuration of a `tls://` destination (RFC 5425).
//!
//! Verification is on by default against the system roots (rustls-native-certs). A CA file
//! replaces the system roots (a SIEM behind a private CA); a client certificate and key add
//! mutual TLS (RFC 5425 §4.2 expects both sides to authenticate). Skipping verification is
//! an explicit opt-in and logs a warning every time a sink is built with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};

use super::destination::Host;
use super::Error;

/// TLS settings of one destination. The default verifies the server against the system roots
/// and the host name of the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that signed the server's certificate. Replaces the
    /// system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate chain, for mutual TLS. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client's private key (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// Name (or IP address) to expect in the server certificate and to send as SNI, instead
    /// of the URL's host.
    pub server_name: Option<String>,
    /// Accept any server certificate. For tests against a SIEM with a throwaway certificate
    /// only: anyone on the path can read and alter the records.
    pub insecure_skip_verify: bool,
}

/// A ready-to-use client configuration and the name to verify.
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit provider: no dependence on a process-wide default being installed.
    Arc::new(crypto::aws_lc_rs::default_provider())
}

impl TlsOptions {
    /// Loads the files and builds the rustls configuration for a destination host.
    pub(crate) fn build(&self, host: &Host, destination: &str) -> Result<TlsClient, Error> {
        let server_name = match &self.server_name {
            Some(name) => ServerName::try_from(name.clone()).map_err(|_| {
                Error::Config(format!("{destination}: invalid TLS server name {name:?}"))
            })?,
            None => match host {
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Host::Name(name) => ServerName::try_from(name.clone()).map_err(|_| {
                    Error::Config(format!(
                        "{destination}: {name:?} is not a valid TLS server name"
                    ))
                })?,
            },
        };

        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(self.client_config(destination)?),
            server_name,
        })
    }

    /// The rustls configuration: roots (or no verification) and the client certificate.
    pub(crate) fn client_config(&self, destination: &str) -> Result<Arc<ClientConfig>, Error> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("{destination}: TLS versions: {e}")))?;

        let builder = if self.insecure_skip_verify {
            tracing::warn!(
                destination,
                "TLS certificate verification is DISABLED (insecure_skip_verify): \
                 the server is not authenticated and records can be read or altered on the way"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            builder.with_root_certificates(self.roots(destination)?)
        };

        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| Error::TlsFile {
                    path: key.clone(),
                    reason: format!("no usable private key: {e}"),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::TlsFile {
                        path: cert.clone(),
                        reason: format!("client certificate and key do not match: {e}"),
                    })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(Error::Config(format!(
                "{destination}: a client certificate needs its key and a key needs its certificate"
            )))
            }
        };
        Ok(Arc::new(config))
    }

    fn roots(&self, destination: &str) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots.add(cert).map_err(|e| Error::TlsFile {
                        path: path.clone(),
                        reason: format!("not a usable CA certificate: {e}"),
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::debug!(destination, "system CA store: {e}");
                }
                // Some system stores hold certificates webpki cannot parse; skip those.
                let (added, ignored) = roots.add_parsable_certificates(native.certs);
                tracing::debug!(destination, added, ignored, "loaded system CA certificates");
                if roots.is_empty() {
                    return Err(Error::Config(format!(
                        "{destination}: no system CA certificates found; give a CA file"
                    )));
                }
            }
        }
        Ok(roots)
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let file_err = |reason: String| Error::TlsFile {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Accepts any server certificate, but still checks the handshake signatures so that the
/// session itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
