//! PUBLISH across the cluster: a message published on one node reaches the subscribers of
//! every node (as in Redis Cluster). The node only carries messages; who subscribes to what
//! is the RESP listener's business (its sink).

use super::*;

/// Delivers a message to this node's subscribers of a channel; returns how many got it.
pub type PublishSink = Arc<dyn Fn(&[u8], &[u8]) -> usize + Send + Sync>;

/// How long a publish to one peer may take before it is given up (messages are at most once).
const PUBLISH_SEND_MAX: Duration = Duration::from_millis(1000);

impl Node {
    /// Sets where this node's PUBLISH messages go (once; later calls are ignored).
    pub fn set_publish_sink(&self, sink: PublishSink) {
        let _ = self.publish_sink.set(sink);
    }

    /// Delivers `message` to this node's subscribers of `channel`.
    pub(super) fn publish_here(&self, channel: &[u8], message: &[u8]) -> usize {
        self.publish_sink
            .get()
            .map_or(0, |sink| sink(channel, message))
    }

    /// PUBLISH: delivers `message` to the subscribers of `channel` on this node, and sends it
    /// to every other node for theirs (in the background: at most once, as Redis's pub/sub).
    /// Returns how many subscribers of this node got it (what Redis Cluster answers).
    pub fn publish(&self, channel: &[u8], message: &[u8]) -> usize {
        let here = self.publish_here(channel, message);
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return here;
        };
        let (channel, message) = (channel.to_vec(), message.to_vec());
        tokio::spawn(async move {
            let nodes = me.nodes();
            let sends = nodes.iter().filter(|p| **p != me.id).map(|peer| {
                let req = Request::Publish {
                    channel: channel.clone(),
                    message: message.clone(),
                };
                me.pool.call(*peer, 0, req, PUBLISH_SEND_MAX)
            });
            futures::future::join_all(sends).await;
        });
        here
    }
}
