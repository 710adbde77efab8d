//! Throwaway certificates: a CA, a server certificate it signs, and the
//! server's rustls configuration.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and a server certificate signed by it.
pub(crate) struct TestPki {
    /// The CA certificate as a PEM file, for `extra_root_certs`.
    pub(crate) ca_file: PathBuf,
    /// A server configuration presenting the certificate.
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    /// A new CA, and a server certificate for `names` (DNS names or IP
    /// addresses) signed by it.
    pub(crate) fn new(names: &[&str]) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "email-server test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "fault.test");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");

        let ca_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("test-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&ca_file, ca.pem()).expect("write CA file");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server TLS configuration");
        TestPki {
            ca_file,
            server: Arc::new(server),
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
