//! Siblings keyspaces (`conflict: "siblings"`): `SIBLINGS key` returns every concurrent value
//! with the causal context they come with, and `SET key value CONTEXT ctx` writes one that
//! supersedes exactly what that context covers. A plain `GET` of a key with several values is
//! the `SIBLINGS` error naming this command; a plain `SET` supersedes the connection's
//! session's own last write of the key.

use super::{state, typed, Args, CommandSpec, Handler, Kind, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use std::time::Duration;
use tunekv_core::{Code, TunekvError};
use tunekv_dynamo::update::Update;
use tunekv_dynamo::Stored;

pub(super) const SPECS: &[CommandSpec] = &[CommandSpec::new(
    ("siblings", 2),
    Kind::Read,
    (1, 1, 1),
    (
        "tunekv",
        "Every concurrent value of a key and their causal context: [context, [value, …]].",
    ),
    Handler::Later(siblings),
)];

fn siblings<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let info = keyspace(s, conn).await?;
        let held = state(&s.node, conn, key).await?;
        let empty = tunekv_dynamo::crdt::Siblings::new();
        let sibs = match &held {
            Some(Stored::Siblings(x)) => x,
            None => &empty,
            Some(_) => return Err(super::wrongtype()),
        };
        let context = s.node.seal_context(&info, key, sibs.context());
        Ok(Reply::Array(vec![
            Reply::bulk(context),
            Reply::Array(sibs.values().map(|(_, v)| Reply::bulk(v.clone())).collect()),
        ]))
    })
}

async fn keyspace(
    s: &Shared,
    conn: &Conn,
) -> Result<std::sync::Arc<tunekv_node::KeyspaceInfo>, Reply> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    s.node
        .keyspace(&conn.keyspace, deadline)
        .await
        .map_err(typed)
}

/// `SET key value CONTEXT ctx` (and a delete with one): a write of a siblings keyspace that
/// supersedes what `ctx` covers.
pub(super) async fn write_in_context(
    s: &Shared,
    conn: &mut Conn,
    key: &[u8],
    value: Option<Vec<u8>>,
    ctx: &[u8],
) -> Result<Reply, Reply> {
    let info = keyspace(s, conn).await?;
    if info.spec.conflict.as_deref() != Some("siblings") {
        return Err(typed(TunekvError::new(
            Code::ContextInvalid,
            format!(
                "CONTEXT applies to siblings keyspaces; {:?} is not one",
                info.name
            ),
        )));
    }
    let text = std::str::from_utf8(ctx)
        .map_err(|_| typed(TunekvError::new(Code::ContextInvalid, "not ASCII text")))?;
    let ctx = s.node.open_context(&info, key, text).map_err(typed)?;
    let max = info.spec.siblings_max();
    super::update(&s.node, conn, key, Update::Write { value, ctx, max }).await?;
    Ok(Reply::ok())
}
