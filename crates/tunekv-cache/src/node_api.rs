//! What the cache asks of one node, as a trait: the real cache talks to nodes through
//! `tunekv_client::Client` (HTTP over reqwest); the deterministic simulator implements it over
//! its own simulated network, so the same cache runs in both.

use std::future::Future;
use std::pin::Pin;
use tunekv_client::{Client, ClientError, Opts, ReadReply, Watch, WatchEvent, WriteReply};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T> = std::result::Result<T, ClientError>;

/// A node's change feed, one event at a time (`None`: it ended).
pub trait FeedStream: Send {
    fn next(&mut self) -> BoxFut<'_, Option<Result<WatchEvent>>>;
}

/// The node API calls the cache makes.
pub trait NodeApi: Send + Sync {
    /// The node's address, for messages.
    fn base(&self) -> &str;
    fn get<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<ReadReply>>;
    /// A PUT (`Some` value) or a DELETE.
    fn write<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<WriteReply>>;
    fn read_index<'a>(&'a self, ks: &'a str, shard: u32, wait_ms: u64) -> BoxFut<'a, Result<u64>>;
    fn keyspace<'a>(&'a self, ks: &'a str) -> BoxFut<'a, Result<serde_json::Value>>;
    fn create_keyspace<'a>(
        &'a self,
        ks: &'a str,
        spec: &'a serde_json::Value,
    ) -> BoxFut<'a, Result<serde_json::Value>>;
    fn scan<'a>(
        &'a self,
        ks: &'a str,
        prefix: &'a [u8],
        cursor: u64,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<(Vec<Vec<u8>>, u64)>>;
    /// The node's incarnation and monotonic clock (µs).
    fn clock(&self) -> BoxFut<'_, Result<(u64, i64)>>;
    fn watch_from<'a>(
        &'a self,
        ks: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFut<'a, Result<Box<dyn FeedStream>>>;
}

impl FeedStream for Watch {
    fn next(&mut self) -> BoxFut<'_, Option<Result<WatchEvent>>> {
        Box::pin(Watch::next(self))
    }
}

/// How many keys a scan page asks for.
const SCAN_PAGE: usize = 500;

impl NodeApi for Client {
    fn base(&self) -> &str {
        Client::base(self)
    }

    fn get<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<ReadReply>> {
        Box::pin(Client::get(self, ks, key, opts))
    }

    fn write<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<WriteReply>> {
        Box::pin(async move {
            match value {
                Some(v) => self.put(ks, key, v, opts).await,
                None => self.delete(ks, key, opts).await,
            }
        })
    }

    fn read_index<'a>(&'a self, ks: &'a str, shard: u32, wait_ms: u64) -> BoxFut<'a, Result<u64>> {
        Box::pin(Client::read_index(self, ks, shard, wait_ms))
    }

    fn keyspace<'a>(&'a self, ks: &'a str) -> BoxFut<'a, Result<serde_json::Value>> {
        Box::pin(Client::keyspace(self, ks))
    }

    fn create_keyspace<'a>(
        &'a self,
        ks: &'a str,
        spec: &'a serde_json::Value,
    ) -> BoxFut<'a, Result<serde_json::Value>> {
        Box::pin(Client::create_keyspace(self, ks, spec))
    }

    fn scan<'a>(
        &'a self,
        ks: &'a str,
        prefix: &'a [u8],
        cursor: u64,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<(Vec<Vec<u8>>, u64)>> {
        Box::pin(Client::scan(self, ks, prefix, cursor, SCAN_PAGE, opts))
    }

    fn clock(&self) -> BoxFut<'_, Result<(u64, i64)>> {
        Box::pin(Client::clock(self))
    }

    fn watch_from<'a>(
        &'a self,
        ks: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFut<'a, Result<Box<dyn FeedStream>>> {
        Box::pin(async move {
            let w = Client::watch_from(self, ks, "", cursor).await?;
            Ok(Box::new(w) as Box<dyn FeedStream>)
        })
    }
}
