//! TLS test support: a CA issuing certificates (rcgen), a real rustls client that reports which certificate
//! the server presented, and HTTP/1.1 or h2 over it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{BoxBody, Got};

/// A certificate authority the test clients trust.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, KeyPair>,
}

/// An issued certificate: PEM chain and key, and the leaf's DER to recognise it on the wire.
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCert {
    /// Writes `NAME.crt` and `NAME.key` into `dir`, each atomically (write + rename).
    pub fn write_pair(&self, dir: &Path, name: &str) {
        write_atomic(&dir.join(format!("{name}.crt")), &self.cert_pem);
        write_atomic(&dir.join(format!("{name}.key")), &self.key_pem);
    }

    /// The etcd value of this certificate.
    pub fn etcd_value(&self) -> String {
        serde_json::json!({ "cert": self.cert_pem, "key": self.key_pem }).to_string()
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        p.distinguished_name.push(rcgen::DnType::CommonName, "reveille TLS test CA");
        let key = KeyPair::generate().unwrap();
        TestCa { issuer: rcgen::CertifiedIssuer::self_signed(p, key).unwrap() }
    }

    /// A certificate for `names` (DNS names, `*.` wildcards allowed), valid until the given year.
    pub fn issue_until(&self, names: &[&str], year: i32) -> TestCert {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("no name"));
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(year, 1, 1);
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub fn issue(&self, names: &[&str]) -> TestCert {
        self.issue_until(names, 2099)
    }

    /// The CA's own certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client that verifies the server against this CA.
    pub fn client(&self, alpn: &[&str]) -> tokio_rustls::TlsConnector {
        self.client_with(rustls::DEFAULT_VERSIONS, alpn)
    }

    /// A client limited to `versions`.
    pub fn client_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&str],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A client that accepts any certificate (signatures still checked), to see which one a server picks even when
/// it would not verify (no SNI, a default certificate for another name).
pub fn any_cert_client() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(testkit::tls::ServerCheck::any(&provider))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects and handshakes. `sni`: a DNS name to send, or `None` to connect by IP (no SNI is sent).
pub async fn connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: Option<&str>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    connector.connect(name, tcp).await
}

/// The leaf certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

/// The TLS alert the server sent to end a failed handshake, if that is how it failed.
pub fn alert_of(err: &std::io::Error) -> Option<rustls::AlertDescription> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

/// An HTTP/1.1 connection over an established TLS stream.
pub async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 connection over an established TLS stream.
pub async fn h2(stream: TlsStream<TcpStream>) -> hyper::client::conn::http2::SendRequest<BoxBody> {
    let (sender, conn) = hyper::client::conn::http2::handshake(super::executor(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `req` and reads the whole response.
pub async fn exchange1(sender: &mut hyper::client::conn::http1::SendRequest<BoxBody>, req: Request<BoxBody>) -> Got {
    sender.ready().await.unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

pub async fn exchange2(sender: &mut hyper::client::conn::http2::SendRequest<BoxBody>, req: Request<BoxBody>) -> Got {
    sender.ready().await.unwrap();
    collect(sender.send_request(req).await.unwrap()).await
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let bytes: Bytes = body.collect().await.unwrap().to_bytes();
    let mut headers = parts.headers;
    // Keep the negotiated version visible to the test.
    headers.insert("x-test-version", format!("{:?}", parts.version).parse().unwrap());
    Got { status: parts.status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
}
