//! Certificates: a local CA created on first start, leaf certificates issued from it
//! for the control plane and relays, and the rustls configurations built from them.
//!
//! The CA's private key never leaves the control plane's data directory. Agents and
//! clients trust the CA certificate alone (a `--ca` file, or the dev config), so the
//! relays' names may change without touching them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused the parameters or the key.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM document held no usable certificate or key.
    #[error("{what}: no valid PEM {what} found")]
    Pem { what: &'static str },
    /// rustls refused the certificate chain or key.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key.pem";
const CA_COMMON_NAME: &str = "ferry local CA";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

/// What a leaf certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (control plane HTTPS, relay QUIC).
    Server,
    /// TLS server and client (relay mesh links authenticate both ways).
    ServerAndClient,
}

/// The certificate authority every ferry component trusts.
pub struct Ca {
    cert_pem: String,
    /// A certificate with the CA's name and key, used only as the issuer when signing;
    /// re-derived from the key on load, so no X.509 parser is needed.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "ferry");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file only its owner can read (mode 0600 on Unix): private keys, tokens.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    write_private_file(path, contents.as_bytes()).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Ca {
    /// A fresh CA held in memory (tests, and the first start).
    pub fn create() -> Result<Ca, CertError> {
        let key = KeyPair::generate()?;
        let issuer = ca_params()?.self_signed(&key)?;
        Ok(Ca {
            cert_pem: issuer.pem(),
            issuer,
            key,
        })
    }

    /// Loads the CA from `dir`, creating and saving one on first start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CertError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            let issuer = ca_params()?.self_signed(&key)?;
            return Ok(Ca {
                cert_pem: read(&cert_path)?,
                issuer,
                key,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let ca = Ca::create()?;
        write_private(&key_path, &ca.key.serialize_pem())?;
        std::fs::write(&cert_path, &ca.cert_pem).map_err(|source| CertError::Io {
            path: cert_path.clone(),
            source,
        })?;
        tracing::info!(path = %cert_path.display(), "created a new certificate authority");
        Ok(ca)
    }

    /// The CA certificate, PEM: what agents and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[String], usage: Usage) -> Result<IssuedCert, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("ferry"),
        );
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Path of the CA certificate inside a data directory.
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join(CA_CERT_FILE)
    }

    /// Path of the CA's private key inside a data directory.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join(CA_KEY_FILE)
    }
}

/// Parses every certificate in a PEM document.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(CertError::Pem {
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Parses the first private key in a PEM document.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| CertError::Pem {
        what: "private key",
    })
}

/// Reads a PEM file.
pub fn read_pem_file(path: &Path) -> Result<String, CertError> {
    read(path)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server configuration (QUIC requires 1.3; HTTPS gets it too).
pub fn server_config(cert: &IssuedCert, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(parse_certs(&cert.cert_pem)?, parse_key(&cert.key_pem)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A relay's TLS 1.3 server configuration: like [`server_config`], but a client *may*
/// present a certificate, which is then verified against `ca_pem`. rustls cannot tie
/// client authentication to the ALPN, so it stays optional here and the relay requires
/// a verified peer certificate on mesh connections itself (agents and clients have
/// none; they authenticate with tokens).
pub fn relay_server_config(
    cert: &IssuedCert,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, CertError> {
    let roots = roots(ca_pem)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&cert.cert_pem)?, parse_key(&cert.key_pem)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A relay's TLS 1.3 client configuration for mesh links: trusts only `ca_pem` and
/// presents the relay's own CA-issued certificate (mutual TLS).
pub fn mesh_client_config(
    cert: &IssuedCert,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, CertError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(parse_certs(&cert.cert_pem)?, parse_key(&cert.key_pem)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A TLS 1.3 client configuration trusting only the given CA certificate(s).
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    /// Whether rustls' own verifier accepts `leaf_pem`, signed by `ca_pem`, for `name`.
    fn verifies(ca_pem: &str, leaf_pem: &str, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(parse_certs(ca_pem).unwrap().remove(0)).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let chain = parse_certs(leaf_pem).unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_that_chain_to_the_saved_one() {
        let dir = std::env::temp_dir().join(format!("ferry-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Ca::load_or_create(&dir).unwrap();
        let again = Ca::load_or_create(&dir).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        let leaf = again
            .issue(&["relay.test".into(), "127.0.0.1".into()], Usage::Server)
            .unwrap();
        // The leaf chains to the saved CA.
        for name in ["relay.test", "127.0.0.1"] {
            assert!(verifies(first.cert_pem(), &leaf.cert_pem, name), "{name}");
        }
        assert!(!verifies(first.cert_pem(), &leaf.cert_pem, "other.test"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_wildcard_name_covers_one_label_of_app_hosts() {
        let ca = Ca::create().unwrap();
        let leaf = ca
            .issue(
                &["127.0.0.1".into(), "*.apps.eu.localhost".into()],
                Usage::ServerAndClient,
            )
            .unwrap();
        let check = |name: &str| verifies(ca.cert_pem(), &leaf.cert_pem, name);
        assert!(check("8080--demo--dev.apps.eu.localhost"));
        assert!(check("terminal--demo--dev.apps.eu.localhost"));
        assert!(!check("apps.eu.localhost"));
        assert!(!check("a.8080--demo--dev.apps.eu.localhost"));
        assert!(!check("8080--demo--dev.apps.us.localhost"));
    }
}
