//! Counter commands on string values holding integers: INCR, DECR, INCRBY, DECRBY.

use super::{write, Args, CommandSpec, Handler, Kind, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use tunekv_node::Op;

const fn spec(name: &'static str, arity: i64, summary: &'static str) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        Kind::Write,
        (1, 1, 1),
        ("string", summary),
        Handler::Later(incr_by),
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "incr",
        2,
        "Adds 1 to a key's integer value; returns the new value.",
    ),
    spec(
        "decr",
        2,
        "Subtracts 1 from a key's integer value; returns the new value.",
    ),
    spec(
        "incrby",
        3,
        "Adds an integer to a key's integer value; returns the new value.",
    ),
    spec(
        "decrby",
        3,
        "Subtracts an integer from a key's integer value; returns the new value.",
    ),
];

/// Every counter command: the delta comes from the name and the argument.
fn incr_by<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let delta = match a.name() {
            "incr" => 1,
            "decr" => -1,
            "incrby" => a.int()?,
            _ => a
                .int()?
                .checked_neg()
                .ok_or_else(|| Reply::err("decrement would overflow"))?,
        };
        let r = write(&s.node, conn, key, |_| {
            Ok(Op::IncrBy {
                key: key.to_vec(),
                delta,
            })
        })
        .await?;
        Ok(Reply::Int(r.int))
    })
}
