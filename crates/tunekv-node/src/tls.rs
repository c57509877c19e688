//! TLS for every listener (docs/security.md): clients' HTTP and RESP, and mutual TLS between
//! nodes — a node presents its certificate and accepts only peers whose certificate the
//! cluster's CA signed. rustls with the `ring` provider (pure Rust and asm, no C toolchain or
//! cmake as aws-lc-rs needs; ARCHITECTURE.md). Certificates are read again on
//! [`Tls::reload`] (SIGHUP), without a restart: new connections use them, open ones keep theirs.

use crate::transport::{BoxFuture, BoxStream, Listener, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a TLS handshake may take before the connection is dropped (a client that opens a
/// connection and sends nothing must not hold a slot: slowloris).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes a listener runs at once; more connections wait in the kernel's backlog.
const HANDSHAKES_AT_ONCE: usize = 64;

/// `[tls]` in a node's config: PEM files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain: served to clients and peers, and presented to peers as
    /// its client certificate. Its names must include the host of each listen address.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster's CA: peers' certificates must chain to it.
    pub ca: PathBuf,
}

struct Configs {
    /// For clients (HTTP, RESP): no client certificate asked.
    clients: Arc<ServerConfig>,
    /// For peers: a client certificate the CA signed is required.
    peers: Arc<ServerConfig>,
    /// To dial peers: their certificate must chain to the CA; ours is presented.
    dial: Arc<ClientConfig>,
}

/// A node's TLS material, reloadable.
pub struct Tls {
    files: TlsConfig,
    configs: RwLock<Configs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// rustls's `ring` provider. rustls 0.23.48 marks it deprecated because ring has no
/// post-quantum key exchange; aws-lc-rs has, but needs cmake and a C toolchain and builds far
/// slower on two cores (ARCHITECTURE.md). Revisit when post-quantum key exchange is wanted.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The CA certificates of a PEM file as trust roots.
pub fn roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn build(files: &TlsConfig) -> Result<Configs, String> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let roots = Arc::new(roots(&files.ca)?);
    let err = |e: rustls::Error| format!("TLS setup: {e}");
    let clients = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| {
            format!(
                "{} and {} do not match: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let peers = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(err)?;
    let dial = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(err)?;
    Ok(Configs {
        clients: Arc::new(clients),
        peers: Arc::new(peers),
        dial: Arc::new(dial),
    })
}

impl Tls {
    pub fn load(files: &TlsConfig) -> Result<Tls, String> {
        Ok(Tls {
            configs: RwLock::new(build(files)?),
            files: files.clone(),
        })
    }

    /// Reads the files again; on an error the old certificates stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = build(&self.files)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    fn configs<T>(&self, f: impl FnOnce(&Configs) -> T) -> T {
        f(&self.configs.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The acceptor for a client connection (HTTP, RESP).
    pub fn client_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.configs(|c| c.clients.clone()))
    }

    fn peer_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.configs(|c| c.peers.clone()))
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.configs(|c| c.dial.clone()))
    }
}

/// The host part of `host:port` as a TLS server name (an IP address or a DNS name).
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))
}

/// Node-to-node traffic over mutual TLS, on top of another transport (TCP).
pub struct TlsTransport<T> {
    inner: Arc<T>,
    tls: Arc<Tls>,
}

impl<T: Transport> TlsTransport<T> {
    pub fn new(inner: T, tls: Arc<Tls>) -> TlsTransport<T> {
        TlsTransport {
            inner: Arc::new(inner),
            tls,
        }
    }
}

/// Accepts TCP connections and finishes their handshakes in the background, so one slow or
/// silent peer never holds up the others.
struct TlsListener {
    local: String,
    ready: tokio::sync::mpsc::Receiver<(BoxStream, String)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listener for TlsListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            self.ready
                .recv()
                .await
                .ok_or_else(|| io::Error::other("the TLS listener stopped"))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.local.clone())
    }
}

impl<T: Transport> Transport for TlsTransport<T> {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let name = server_name(addr)?;
            let tcp = self.inner.connect(addr).await?;
            let tls =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.connector().connect(name, tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
            Ok(Box::new(tls) as BoxStream)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let mut inner = self.inner.bind(addr).await?;
            let local = inner.local_addr()?;
            let (tx, ready) = tokio::sync::mpsc::channel(HANDSHAKES_AT_ONCE);
            let tls = self.tls.clone();
            let gate = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
            let task = tokio::spawn(async move {
                loop {
                    let Ok(permit) = gate.clone().acquire_owned().await else {
                        return;
                    };
                    let (stream, peer) = match inner.accept().await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "node-to-node accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (tx, acceptor) = (tx.clone(), tls.peer_acceptor());
                    tokio::spawn(async move {
                        let shaken =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        drop(permit);
                        match shaken {
                            Ok(Ok(s)) => {
                                let _ = tx.send((Box::new(s) as BoxStream, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, error = %e, "a node-to-node connection failed its TLS handshake (no certificate from this cluster's CA?)");
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "node-to-node TLS handshake timed out")
                            }
                        }
                    });
                }
            });
            Ok(Box::new(TlsListener { local, ready, task }) as Box<dyn Listener>)
        })
    }
}

/// Reads the certificates again on every SIGHUP (new connections use them; open ones keep
/// theirs). A file that does not load leaves the old certificates in use, and says so.
pub async fn reload_on_sighup(tls: Arc<Tls>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: certificates reload only at restart");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: certificates not reloaded; the old ones stay in use")
            }
        }
    }
}
