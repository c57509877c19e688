//! Which right each HTTP request needs (docs/security.md). One exhaustive match: a new route
//! does not compile until it says what it needs.

use crate::request::{ApiRequest, UserAction};
use tunekv_core::auth::{Access, Grants};
use tunekv_core::TunekvError;

/// `Ok` when `grants` may run `req` (scans and watches may then still see only some keys: see
/// [`Grants::range`]); else `permission_denied` naming what was missing.
pub fn authorize(grants: &Grants, req: &ApiRequest) -> Result<(), TunekvError> {
    if grants.is_open() {
        // Auth is off: every check below would pass.
        return Ok(());
    }
    match req {
        // Any authenticated caller: how the cluster stands, never data.
        ApiRequest::Index { .. }
        | ApiRequest::Metrics
        | ApiRequest::Slo
        | ApiRequest::Cluster
        | ApiRequest::Clock
        | ApiRequest::Identity
        | ApiRequest::Nodes
        | ApiRequest::WhoAmI
        // Filtered to the keyspaces the caller holds rights on.
        | ApiRequest::ListKeyspaces
        // Takes no token: it issues them.
        | ApiRequest::Login(_) => Ok(()),
        ApiRequest::ReadIndex { ks, .. } => grants.check_range(ks, b"").map(|_| ()),
        ApiRequest::Scan { ks, prefix, .. } | ApiRequest::Watch { ks, prefix, .. } => {
            grants.check_range(ks, prefix).map(|_| ())
        }
        ApiRequest::GetKeyspace { ks } => {
            if grants.touches_keyspace(ks) {
                Ok(())
            } else {
                grants.check_keyspace_admin(ks)
            }
        }
        ApiRequest::CreateKeyspace { ks, .. }
        | ApiRequest::Backup { ks, .. }
        | ApiRequest::Restore { ks, .. } => grants.check_keyspace_admin(ks),
        ApiRequest::Put { ks, key, .. }
        | ApiRequest::Update { ks, key, .. }
        | ApiRequest::Delete { ks, key, .. } => grants.check_key(ks, key, Access::Write),
        ApiRequest::Get { ks, key, .. } => grants.check_key(ks, key, Access::Read),
        ApiRequest::BatchGet { ks, keys, .. } => keys
            .iter()
            .try_for_each(|k| grants.check_key(ks, k, Access::Read)),
        ApiRequest::Txn {
            ks,
            compare,
            success,
            failure,
            ..
        } => tunekv_node::Node::txn_needs(compare, success, failure)
            .iter()
            .try_for_each(|(k, need)| grants.check_key(ks, k, *need)),
        ApiRequest::Faults(_) => grants.check_cluster_admin("use the fault hook"),
        ApiRequest::AddNode(_) => grants.check_cluster_admin("add nodes"),
        ApiRequest::RemoveNode { .. } => grants.check_cluster_admin("remove nodes"),
        ApiRequest::ListUsers | ApiRequest::ListRoles => grants.check_cluster_admin("list users and roles"),
        ApiRequest::User { name, action } => {
            // Anyone may read themselves; everything else about users is for admins.
            if matches!(action, UserAction::Get) && grants.user() == Some(name.as_str()) {
                return Ok(());
            }
            grants.check_cluster_admin("manage users")
        }
        ApiRequest::Role { .. } => grants.check_cluster_admin("manage roles"),
    }
}
