//! The TLS client configuration: the public web roots plus the operator's
//! own CA certificates, with ring as the only crypto provider.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use super::SmtpError;

/// Builds the connector that verifies the relay's certificate chain against
/// webpki-roots plus every certificate in `extra_root_certs`, and its name
/// against the host we connect to.
pub(super) fn connector(extra_root_certs: &[impl AsRef<Path>]) -> Result<TlsConnector, SmtpError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in extra_root_certs {
        add_pem_file(&mut roots, path.as_ref())?;
    }
    // An explicit provider rather than the process default: another crate
    // in the binary could install a different one, or none.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SmtpError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), SmtpError> {
    let read_error = |source| SmtpError::ReadRootCerts {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(read_error)?;
        roots
            .add(cert)
            .map_err(|source| SmtpError::InvalidRootCert {
                path: path.to_owned(),
                source,
            })?;
        added += 1;
    }
    if added == 0 {
        return Err(SmtpError::NoRootCerts {
            path: path.to_owned(),
        });
    }
    Ok(())
}
