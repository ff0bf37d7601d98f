//! A Redis Cluster for the tests: `masters` masters and `replicas` replicas each, as
//! `redis-server --cluster-enabled yes` processes on free loopback ports, joined with
//! `redis-cli --cluster create --cluster-yes`. Every wait is bounded; the processes are
//! killed when the cluster is dropped (each `RedisServer` kills its own).
//!
//! Include it after `redis_server`: `#[path = "common/cluster.rs"] mod cluster;`.

#![allow(dead_code)]

use super::redis_server::{cli, RedisServer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the cluster may take to form, or to fail over.
const FORM_WITHIN: Duration = Duration::from_secs(30);

pub struct TestCluster {
    pub nodes: Vec<RedisServer>,
}

impl TestCluster {
    /// Starts and joins the nodes, and waits until every node says `cluster_state:ok` (and
    /// every replica is in sync with its master).
    pub fn start(masters: usize, replicas: usize) -> TestCluster {
        let pid = std::process::id();
        // With replicas, fail over within about a second of a master's death; without, no
        // failover can happen, and a longer timeout keeps a node slowed by a loaded machine
        // from being marked failed (which would take the cluster down).
        let node_timeout = if replicas > 0 { "1000" } else { "5000" };
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|i| {
                let conf = format!("nodes-{pid}-{i}.conf");
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    node_timeout,
                    "--maxmemory-policy",
                    "noeviction",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let replicas_arg = replicas.to_string();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas_arg, "--cluster-yes"]);
        let out = nodes[0].cli(&args);
        assert!(out.contains("All 16384 slots covered"), "cluster create failed: {out}");
        let cluster = TestCluster { nodes };
        cluster.wait("every node ok and every replica in sync", |c| {
            c.live_ports()
                .iter()
                .all(|&p| cli(p, &["cluster", "info"]).contains("cluster_state:ok"))
                && c.masters().len() == masters
                && c.replicas_in_sync() == masters * replicas
        });
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the masters that serve slots, as a live node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let Some(&any) = self.live_ports().first() else {
            return Vec::new();
        };
        cli(any, &["cluster", "nodes"])
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail")
            })
            .filter_map(|line| {
                let address = line.split(' ').nth(1)?;
                address.split('@').next()?.rsplit(':').next()?.parse().ok()
            })
            .filter(|port| self.live_ports().contains(port))
            .collect()
    }

    fn replicas_in_sync(&self) -> usize {
        self.live_ports()
            .iter()
            .filter(|&&p| {
                let info = cli(p, &["info", "replication"]);
                info.contains("role:slave") && info.contains("master_link_status:up")
            })
            .count()
    }

    /// The master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.live_ports()[0], &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        let any = self.live_ports()[0];
        let slots = cli(any, &["cluster", "nodes"]);
        for line in slots.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let covers = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>() == Ok(slot),
            });
            if covers {
                let port = fields[1].split('@').next().and_then(|a| a.rsplit(':').next());
                return port.and_then(|p| p.parse().ok()).expect("a port");
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Keys a master holds.
    pub fn dbsize(port: u16) -> u64 {
        cli(port, &["dbsize"]).trim().parse().expect("DBSIZE is a number")
    }

    /// `INFO commandstats` of a node: calls per command.
    pub fn command_calls(port: u16) -> HashMap<String, u64> {
        cli(port, &["info", "commandstats"])
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }

    /// Kills (SIGKILL) the node on `port`.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port");
        node.kill();
    }

    /// Waits (bounded by [`FORM_WITHIN`]) until `condition` holds; the polling interval only
    /// paces the wait.
    pub fn wait(&self, what: &str, condition: impl Fn(&TestCluster) -> bool) {
        let deadline = Instant::now() + FORM_WITHIN;
        while !condition(self) {
            assert!(Instant::now() < deadline, "cluster: timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
