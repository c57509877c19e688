//! A minimal RESP2 client for `verify`: send a pipeline of commands, read one reply each.
//! Replies come from a tunekv node, so nesting is shallow; it is still bounded here.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Deepest array nesting accepted in a reply.
const DEPTH_MAX: usize = 4;
/// Largest bulk string accepted in a reply.
const BULK_MAX: usize = 64 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

impl Value {
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Simple(s) => Some(s.clone()),
            Value::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// In a flat `[name, value, name, value, ...]` array (a RESP2 map), the value of `name`.
    pub fn field(&self, name: &str) -> Option<&Value> {
        let Value::Array(Some(items)) = self else {
            return None;
        };
        items
            .chunks(2)
            .find(|p| p.len() == 2 && p[0].text().as_deref() == Some(name))
            .map(|p| &p[1])
    }
}

pub struct RespConn {
    stream: BufReader<tunekv_node::transport::BoxStream>,
}

impl RespConn {
    pub async fn connect(addr: &str) -> Result<RespConn> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(RespConn {
            stream: BufReader::new(Box::new(s)),
        })
    }

    /// A connection to a tunekv node as this process's defaults say: over TLS when a CA is
    /// set (`TUNEKV_CA`), logged in with the token when one is set (`TUNEKV_TOKEN`: `AUTH
    /// tkv1.…`, valid until the token expires).
    pub async fn connect_node(addr: &str) -> Result<RespConn> {
        let mut c = match tunekv_client::default_ca() {
            Some(pem) => Self::connect_tls(addr, pem).await?,
            None => Self::connect(addr).await?,
        };
        if let Some(token) = tunekv_client::default_token() {
            let r = c.pipeline(&[vec![&b"AUTH"[..], token.as_bytes()]]).await?;
            if !matches!(&r[0], Value::Simple(s) if s == "OK") {
                bail!("AUTH with TUNEKV_TOKEN at {addr} failed: {:?}", r[0]);
            }
        }
        Ok(c)
    }

    /// Over TLS, trusting the CA in `ca_pem` (a node with `[tls]`).
    pub async fn connect_tls(addr: &str, ca_pem: &[u8]) -> Result<RespConn> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c.context("the CA is not PEM")?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(tunekv_node::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        s.set_nodelay(true)?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_string();
        let name = rustls::pki_types::ServerName::try_from(host)?;
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, s)
            .await
            .with_context(|| format!("TLS to {addr}"))?;
        Ok(RespConn {
            stream: BufReader::new(Box::new(tls)),
        })
    }

    /// Sends every command in one write, then reads one reply per command.
    pub async fn pipeline(&mut self, commands: &[Vec<&[u8]>]) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for args in commands {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.get_mut().write_all(&out).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_value().await?);
        }
        Ok(replies)
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// One reply, iteratively: a stack of arrays being filled.
    async fn read_value(&mut self) -> Result<Value> {
        let mut stack: Vec<(usize, Vec<Value>)> = Vec::new();
        loop {
            let line = self.line().await?;
            let (kind, rest) = line.split_at(line.len().min(1));
            let mut value = match kind {
                "+" => Value::Simple(rest.to_string()),
                "-" => Value::Error(rest.to_string()),
                ":" => Value::Int(rest.parse().context("integer reply")?),
                "$" => {
                    let n: i64 = rest.parse().context("bulk length")?;
                    if n < 0 {
                        Value::Bulk(None)
                    } else {
                        let n = usize::try_from(n)?;
                        if n > BULK_MAX {
                            bail!("bulk reply of {n} bytes");
                        }
                        let mut buf = vec![0; n + 2];
                        self.stream.read_exact(&mut buf).await?;
                        buf.truncate(n);
                        Value::Bulk(Some(buf))
                    }
                }
                "*" => {
                    let n: i64 = rest.parse().context("array length")?;
                    if n < 0 {
                        Value::Array(None)
                    } else if n == 0 {
                        Value::Array(Some(Vec::new()))
                    } else {
                        if stack.len() >= DEPTH_MAX {
                            bail!("reply nested deeper than {DEPTH_MAX}");
                        }
                        stack.push((usize::try_from(n)?, Vec::new()));
                        continue;
                    }
                }
                _ => bail!("unexpected reply line {line:?}"),
            };
            // Fold finished arrays into their parents.
            loop {
                match stack.last_mut() {
                    None => return Ok(value),
                    Some((want, items)) => {
                        items.push(value);
                        if items.len() < *want {
                            break;
                        }
                        let (_, items) = stack.pop().context("array stack")?;
                        value = Value::Array(Some(items));
                    }
                }
            }
        }
    }
}
