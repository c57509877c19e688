//! The RESP listener: one task per connection, requests parsed and answered in order
//! (pipelining), a cap on connections, and a protocol error closing only its own connection.

use crate::commands::{execute, Conn, Shared};
use crate::parse::{parse_request, Limits};
use crate::reply::Reply;
use bytes::{Buf, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tunekv_node::Node;

#[derive(Clone, Copy, Debug)]
pub struct RespOptions {
    /// Most simultaneous connections; one more is told so and closed.
    pub connections_max: usize,
    pub limits: Limits,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            connections_max: 10_000,
            limits: Limits::default(),
        }
    }
}

/// Serves RESP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, node: Arc<Node>, options: RespOptions) {
    let shared = Arc::new(Shared::new(node));
    let slots = Arc::new(Semaphore::new(options.connections_max));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = shared.connect(peer.to_string());
            if let Err(e) = connection(stream, &shared, conn, &options.limits).await {
                tracing::debug!(%peer, error = %e, "RESP connection ended");
            }
            shared.disconnect();
            drop(permit);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    shared: &Shared,
    mut conn: Conn,
    limits: &Limits,
) -> std::io::Result<()> {
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = Vec::with_capacity(16 * 1024);
    loop {
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        // Answer every complete request in the buffer, in order, then write them together.
        loop {
            match parse_request(&input, limits) {
                Ok(None) => break,
                Ok(Some((args, used))) => {
                    input.advance(used);
                    if args.is_empty() {
                        continue;
                    }
                    let reply = execute(shared, &mut conn, args).await;
                    reply.encode(conn.resp3, &mut output);
                    if conn.quit {
                        stream.write_all(&output).await?;
                        return Ok(());
                    }
                }
                Err(e) => {
                    Reply::err(format!("Protocol error: {}", e.0)).encode(conn.resp3, &mut output);
                    stream.write_all(&output).await?;
                    return Ok(());
                }
            }
        }
        if !output.is_empty() {
            stream.write_all(&output).await?;
            output.clear();
        }
    }
}
