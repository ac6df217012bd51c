//! One type for the connections the shared tier talks through, whatever the mode: a plain
//! connection to one node (the stream reader and the publisher with one Redis or Sentinel),
//! the reconnecting manager (the check path with one Redis or Sentinel), or a Redis Cluster
//! connection (which routes each command to the node that holds its key's slot, and follows
//! the cluster when a replica is promoted).

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection of the shared tier.
#[derive(Clone)]
pub(super) enum Link {
    /// A connection to one node.
    Node(MultiplexedConnection),
    /// A connection to one node that reconnects by itself.
    Managed(ConnectionManager),
    /// A connection to a Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Node(conn) => conn.req_packed_command(cmd),
            Link::Managed(conn) => conn.req_packed_command(cmd),
            Link::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Managed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Link::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Node(conn) => conn.get_db(),
            Link::Managed(conn) => conn.get_db(),
            Link::Cluster(conn) => conn.get_db(),
        }
    }
}
