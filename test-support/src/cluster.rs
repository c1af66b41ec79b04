//! A throwaway Redis Cluster: `redis-server --cluster-enabled yes` nodes on free loopback ports
//! (each a [`RedisServer`] in its own temp dir), joined with
//! `redis-cli --cluster create ... --cluster-yes`, and the faults cluster tests inject: a node
//! killed (`kill -9`) and its replica promoted, slots resharded (`redis-cli --cluster reshard`).
//!
//! When `redis-server` or `redis-cli` is missing, [`RedisClusterBuilder::start`] skips with a
//! loud message (it returns `None`), unless `CACHEBACK_REQUIRE_REDIS=1`, where it panics.
//! `redis-cli` is looked for beside `redis-server`, then on `PATH`.
//!
//! ```no_run
//! use cacheback_test_support::RedisCluster;
//!
//! let Some(mut cluster) = RedisCluster::builder().masters(3).replicas(1).start() else {
//!     return; // skipped, loudly
//! };
//! println!("{}", cluster.url()); // redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
//! let slot = cluster.slot_of("{app}:key");
//! let master = cluster.master_of(slot).expect("the slot is served");
//! cluster.kill(master);
//! cluster.wait_until_healthy(std::time::Duration::from_secs(30)).expect("a replica took over");
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::server::{RedisServer, free_port, required};

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// A cluster to start: 3 masters without replicas unless told otherwise.
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisClusterBuilder {
    masters: usize,
    replicas: usize,
    node_timeout: Duration,
    tls: bool,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        RedisClusterBuilder {
            masters: 3,
            replicas: 0,
            node_timeout: Duration::from_millis(1000),
            tls: false,
        }
    }
}

impl RedisClusterBuilder {
    /// Number of masters (at least 3, `redis-cli`'s minimum; default 3).
    pub fn masters(mut self, n: usize) -> Self {
        self.masters = n;
        self
    }

    /// Replicas per master (default 0); a failover needs at least 1.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// `cluster-node-timeout`: how long a node may not answer before it is failed over
    /// (default 1 s, so that failover tests are short).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// TLS only (`rediss+cluster://`): every node listens with TLS, and the nodes talk to
    /// each other over TLS (`tls-cluster`, `tls-replication`), with certificates for
    /// `127.0.0.1` signed by one throwaway CA ([`RedisCluster::ca_path`]); needs `openssl`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the nodes, joins them into a cluster and waits (up to 30 s) until every node
    /// serves all slots.
    ///
    /// # Errors
    ///
    /// [`Error::Missing`] when `redis-server` or `redis-cli` is not installed,
    /// [`Error::Server`] when a node did not start or the cluster did not form (with the
    /// output of `redis-cli`).
    pub fn try_start(self) -> Result<RedisCluster, Error> {
        if self.masters < 3 {
            return Err(Error::Server(
                "a Redis Cluster needs at least 3 masters".to_owned(),
            ));
        }
        let cli = cli()?;
        let count = self.masters * (1 + self.replicas);
        let timeout_ms = self.node_timeout.as_millis().max(1).to_string();
        let certificates = if self.tls {
            crate::tls::check_openssl()?;
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Server(format!("cannot make a temp dir: {e}")))?;
            crate::tls::make_certificates(dir.path())?;
            Some(dir)
        } else {
            None
        };
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            let mut node = RedisServer::builder();
            if let Some(dir) = &certificates {
                node = node
                    .tls_from(dir.path().to_owned())
                    .arg("--tls-cluster")
                    .arg("yes")
                    .arg("--tls-replication")
                    .arg("yes");
            }
            // The bus port is set: the default (port + 10000) may be taken, or past 65535.
            let node = node
                .arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-port")
                .arg(free_port()?.to_string())
                .arg("--cluster-node-timeout")
                .arg(&timeout_ms)
                // A replica may take over however long it lost its master.
                .arg("--cluster-replica-validity-factor")
                .arg("0")
                .try_start()?;
            nodes.push(node);
        }
        let cluster = RedisCluster {
            cli,
            nodes,
            killed: Vec::new(),
            certificates,
        };
        let mut create = cluster.cli();
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        create
            .arg("--cluster-replicas")
            .arg(self.replicas.to_string())
            .arg("--cluster-yes");
        run(create, "redis-cli --cluster create")?;
        cluster.wait_until_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Starts the cluster, or returns `None` after a loud message when `redis-server` or
    /// `redis-cli` is missing and `CACHEBACK_REQUIRE_REDIS` is not set.
    ///
    /// # Panics
    ///
    /// When the cluster does not start, or a program is missing and
    /// `CACHEBACK_REQUIRE_REDIS=1`.
    pub fn start(self) -> Option<RedisCluster> {
        match self.try_start() {
            Ok(cluster) => Some(cluster),
            Err(Error::Missing(what)) if !required() => {
                eprintln!("\n!!!!!!!!!! {what}: SKIPPING these Redis Cluster tests !!!!!!!!!!\n");
                None
            }
            Err(Error::Missing(what)) => panic!("CACHEBACK_REQUIRE_REDIS=1 but {what}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A Redis Cluster owned by one test binary (or one benchmark run); its nodes are killed when
/// it is dropped, their logs printed when that happens during a panic.
#[derive(Debug)]
pub struct RedisCluster {
    cli: PathBuf,
    nodes: Vec<RedisServer>,
    /// Indexes of the nodes killed so far.
    killed: Vec<usize>,
    /// For a TLS cluster, the dir of the CA and certificate every node uses.
    certificates: Option<tempfile::TempDir>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// A cluster to configure before starting it.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// The cluster's URL: `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...` (every node;
    /// `rediss+cluster://` for a TLS cluster).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let scheme = match self.certificates {
            Some(_) => "rediss",
            None => "redis",
        };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// For a TLS cluster, the PEM file of the CA that signed every node's certificate (for a
    /// client's trust store, e.g. `SSL_CERT_FILE`).
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.certificates
            .as_ref()
            .map(|dir| crate::tls::ca_path(dir.path()))
    }

    /// `redis-cli`, with TLS and the CA for a TLS cluster.
    fn cli(&self) -> Command {
        let mut cli = Command::new(&self.cli);
        if let Some(ca) = self.ca_path() {
            cli.arg("--tls").arg("--cacert").arg(ca);
        }
        cli
    }

    /// The nodes' own URLs (`redis://127.0.0.1:PORT`).
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node, masters and replicas, in start order (killed ones included).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A node that has not been killed.
    fn live(&self) -> impl Iterator<Item = (usize, &RedisServer)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.killed.contains(i))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Panics
    ///
    /// When no node answers.
    pub fn slot_of(&self, key: &str) -> u16 {
        let (_, node) = self.live().next().expect("a live node");
        node.cmd(&["CLUSTER", "KEYSLOT", key])
    }

    /// `CLUSTER NODES` as a live node sees it.
    fn topology(&self) -> Result<Vec<NodeLine>, Error> {
        let mut last = Error::Server("no live node".to_owned());
        for (_, node) in self.live() {
            match node.query::<String>(&["CLUSTER", "NODES"]) {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The index (in [`RedisCluster::nodes`]) of the master serving `slot`, if one does.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn master_of(&self, slot: u16) -> Result<usize, Error> {
        self.topology()?
            .iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .and_then(|n| self.index_of_port(n.port))
            .ok_or_else(|| Error::Server(format!("no live master serves slot {slot}")))
    }

    /// The indexes of the live masters.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn masters(&self) -> Result<Vec<usize>, Error> {
        let topology = self.topology()?;
        let mut masters: Vec<usize> = topology
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .filter_map(|n| self.index_of_port(n.port))
            .filter(|i| !self.killed.contains(i))
            .collect();
        masters.sort_unstable();
        Ok(masters)
    }

    /// Kills node `index` with SIGKILL (no persistence: its data is gone; its replica, if it
    /// has one, takes over after the node timeout).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
        if !self.killed.contains(&index) {
            self.killed.push(index);
        }
    }

    /// Waits until every live node says `cluster_state:ok` and sees all slots served by live
    /// masters (after a failover: the replica promoted and known to all).
    ///
    /// # Errors
    ///
    /// When that does not happen `within` (with what the nodes said last).
    pub fn wait_until_healthy(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            let why = self.unhealthy();
            let Some(why) = why else {
                return Ok(());
            };
            if Instant::now() > deadline {
                return Err(Error::Server(format!(
                    "the cluster is not healthy after {within:?}: {why}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Why the cluster is not healthy yet, or `None`.
    fn unhealthy(&self) -> Option<String> {
        let live_ports: Vec<u16> = self.live().map(|(_, n)| n.port()).collect();
        for (_, node) in self.live() {
            let info = match node.query::<String>(&["CLUSTER", "INFO"]) {
                Ok(info) => info,
                Err(e) => return Some(e.to_string()),
            };
            if !info.contains("cluster_state:ok") {
                return Some(format!("port {}: not cluster_state:ok", node.port()));
            }
            let text = match node.query::<String>(&["CLUSTER", "NODES"]) {
                Ok(text) => text,
                Err(e) => return Some(e.to_string()),
            };
            let mut served = 0u32;
            for line in parse_nodes(&text) {
                if line.master && !line.slots.is_empty() {
                    if line.failed || !live_ports.contains(&line.port) {
                        return Some(format!(
                            "port {} still sees the dead master {} serving slots",
                            node.port(),
                            line.port
                        ));
                    }
                    served += line
                        .slots
                        .iter()
                        .map(|&(a, b)| u32::from(b - a) + 1)
                        .sum::<u32>();
                }
            }
            if served != u32::from(SLOTS) {
                return Some(format!("port {} sees {served} slots served", node.port()));
            }
        }
        None
    }

    /// Moves `slots` hash slots from master `from` to master `to` with
    /// `redis-cli --cluster reshard` (it takes `from`'s lowest slots first), then waits (up
    /// to 30 s) until every node agrees.
    ///
    /// # Errors
    ///
    /// When `redis-cli` fails (with its output) or the nodes do not agree in time.
    pub fn reshard(&self, from: usize, to: usize, slots: u16) -> Result<(), Error> {
        let topology = self.topology()?;
        let id = |index: usize| {
            let port = self.nodes[index].port();
            topology
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .ok_or_else(|| Error::Server(format!("node {index} is not in the cluster")))
        };
        let (from_id, to_id) = (id(from)?, id(to)?);
        let mut reshard = self.cli();
        reshard
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{}", self.nodes[to].port()))
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"]);
        run(reshard, "redis-cli --cluster reshard")?;
        self.wait_until_healthy(Duration::from_secs(30))
    }

    /// The slots `master` serves, as inclusive ranges.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn slots_of(&self, master: usize) -> Result<Vec<(u16, u16)>, Error> {
        let port = self.nodes[master].port();
        Ok(self
            .topology()?
            .into_iter()
            .find(|n| n.port == port)
            .map(|n| n.slots)
            .unwrap_or_default())
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link>
/// <slot or range>...` (importing/migrating markers `[...]` skipped).
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let address = fields.next()?;
            let port = address
                .split('@')
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()?;
            let flags = fields.next()?;
            let slots = fields
                .skip(5)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeLine {
                id,
                port,
                master: flags.split(',').any(|f| f == "master"),
                failed: flags.split(',').any(|f| f == "fail" || f == "fail?"),
                slots,
            })
        })
        .collect()
}

/// `redis-cli`: beside `redis-server`, else on `PATH`.
fn cli() -> Result<PathBuf, Error> {
    let missing = || {
        Error::Missing(
            "redis-cli not found (it comes with redis-server; put it beside it or on PATH)"
                .to_owned(),
        )
    };
    let server = crate::server::binary().ok_or_else(|| {
        Error::Missing(
            "redis-server not found (set CACHEBACK_REDIS_SERVER or install redis-server)"
                .to_owned(),
        )
    })?;
    if let Some(beside) = server.parent().map(|dir| dir.join("redis-cli"))
        && beside.is_file()
    {
        return Ok(beside);
    }
    let paths = std::env::var_os("PATH").ok_or_else(missing)?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("redis-cli"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

/// Runs `cmd` to its end; its output is the error when it fails.
fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Server(format!("{what}: cannot run it: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Server(format!(
        "{what} exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 7 [9->-b2]
b2 127.0.0.1:30002@40002 master,fail - 0 0 2 disconnected
c3 127.0.0.1:30003@40003 slave a1 0 0 1 connected
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].id, "a1");
        assert_eq!(nodes[0].port, 30001);
        assert!(nodes[0].master && !nodes[0].failed);
        assert_eq!(nodes[0].slots, [(0, 5460), (7, 7)]);
        assert!(nodes[1].master && nodes[1].failed && nodes[1].slots.is_empty());
        assert!(!nodes[2].master);
    }

    #[test]
    fn a_cluster_forms_routes_and_reshards() {
        let Some(cluster) = RedisCluster::builder().start() else {
            return;
        };
        assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
        let masters = cluster.masters().unwrap();
        assert_eq!(masters.len(), 3);
        let slot = cluster.slot_of("{a}");
        let owner = cluster.master_of(slot).unwrap();
        let other = *masters.iter().find(|&&m| m != owner).unwrap();
        let first = cluster.slots_of(owner).unwrap()[0].0;
        cluster.reshard(owner, other, slot - first + 1).unwrap();
        assert_eq!(cluster.master_of(slot).unwrap(), other);
    }
}
