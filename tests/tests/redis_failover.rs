//! The shared tier with Redis Sentinel, with real processes: a primary, its replica, three
//! `redis-sentinel`s (quorum 2), ext-authz-server instances that find the primary through
//! them (`redis.sentinel`, `min_replicas: 1`), and an Envoy whose filter calls one of them.
//!
//! The primary is killed while checks and revocations flow. What must hold: nothing revoked is
//! lost (a revocation acknowledged before the failover, one made during it, and a server started
//! afterwards that only knows what Redis holds all refuse the tokens); a privileged route never
//! allows a revoked token, fails closed (503) only while no primary answers, and recovers by
//! itself once the sentinel has promoted the replica.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tests::*;

/// A server that finds the primary through `sentinels`, after a sentinel on a port nothing
/// listens on (a sentinel on a dead node must not hold up the others).
fn sentinel_server(idp: &DevIdp, sentinels: &RedisSentinels, zone: &str) -> AuthzServerProcess {
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let mut addresses = vec![dead];
    addresses.extend(sentinels.urls());
    server_with_sentinels(idp, &addresses, zone)
}

/// A server that asks the sentinels at `addresses` (`redis://` URLs), in that order.
fn server_with_sentinels(idp: &DevIdp, addresses: &[String], zone: &str) -> AuthzServerProcess {
    let addresses = serde_json::to_string(addresses).expect("json");
    AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\nzone: {zone}\nredis:\n  sentinel:\n    master_name: {SENTINEL_MASTER}\n    addresses: {addresses}\n  min_replicas: 1\n  replica_wait_ms: 300\n  secret: \"{SHARED_SECRET}\"\n  block_ms: 200\n  max_unconfirmed_ms: 1000\n"
        ),
    ))
}

/// The statuses `server` answers for `tokens` on the privileged route (gRPC Check).
fn statuses(server: &AuthzServerProcess, tokens: &[&String]) -> Vec<u16> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut grpc = tests::grpc::connect(server.grpc_port).await;
        let mut statuses = Vec::new();
        for token in tokens {
            statuses.push(
                tests::grpc::check(&mut grpc, "/admin/users", Some(token))
                    .await
                    .0,
            );
        }
        statuses
    })
}

/// Sends `which` (`-STOP`, `-CONT`) to `server`'s process.
fn signal(server: &AuthzServerProcess, which: &str) {
    let pid = server.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([which, &pid])
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill {which}");
}

fn epochs(server: &AuthzServerProcess) -> Value {
    server.admin("GET", "/admin/epochs?since=0", None).json()
}

fn confirmed(server: &AuthzServerProcess) -> bool {
    epochs(server)["confirmed"] == true
}

fn admin_token(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true}))
}

fn revoke(server: &AuthzServerProcess, token: &str) -> Value {
    server
        .admin("POST", "/admin/revoke", Some(json!({"token": token})))
        .json()
}

#[test]
fn a_failover_loses_no_revocation_and_privileged_routes_recover_by_themselves() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = RedisSentinels::start(&primary, 3);
    assert_eq!(sentinel.primary_port(), Some(primary.port));
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let a = sentinel_server(&idp, &sentinel, "zone-a");
    let b = sentinel_server(&idp, &sentinel, "zone-b");
    assert!(
        eventually(Duration::from_secs(10), || confirmed(&a) && confirmed(&b)),
        "both instances sync through the sentinel's primary"
    );
    assert!(
        a.logged("shared_primary"),
        "the primary the sentinel named is logged"
    );
    let envoy = decision_cache_envoy(&a, &idp, &echo);
    let (before, during, user) = tokens_one_revoked_at(&b, &idp, &envoy);
    let (promoted, closed, rounds) = fail_over_under_traffic(
        &envoy,
        [&a, &b],
        [&before, &during, &user],
        &mut primary,
        RedisServer::stop,
        |_| sentinel.primary_port() == Some(replica.port),
    );
    eprintln!(
        "failover: promoted after {promoted:?}; {closed} of {rounds} privileged checks failed closed meanwhile"
    );

    // Nothing revoked is lost: both revocations are in the new primary, as a server started
    // now (which knows only what Redis holds) shows, and every Envoy path refuses them.
    let c = sentinel_server(&idp, &sentinel, "zone-c");
    assert!(eventually(Duration::from_secs(10), || confirmed(&c)));
    assert!(
        eventually(Duration::from_secs(5), || epochs(&c)["version"]
            == epochs(&a)["version"]),
        "c {} a {}",
        epochs(&c),
        epochs(&a)
    );
    for (name, token) in [("before", &before), ("during", &during)] {
        assert!(
            eventually(Duration::from_secs(5), || envoy.status_on_new_connection(
                "GET",
                "/admin/users",
                token
            ) == 401),
            "the token revoked {name} the failover is allowed again"
        );
    }
    assert_eq!(
        statuses(&c, &[&before, &during]),
        vec![401, 401],
        "a server that only knows Redis"
    );
    drop(replica);
}

/// A revocation the replica had not received when the primary failed (`WAIT` short of
/// `min_replicas`: answered `"unreplicated"`) is published again to the promoted replica by
/// the instance that made it, even when another instance that never saw it has written to the
/// new primary first under the same number (so the sequence shows no gap): the instance finds
/// that the entry under its last number is not the one it read, reads everything again and
/// republishes what it knows. A server that only knows Redis, and both instances, refuse both
/// tokens.
#[test]
fn a_revocation_only_the_failed_primary_held_is_published_again_to_the_promoted_replica() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = RedisSentinels::start(&primary, 3);
    let idp = DevIdp::start(&[]);
    let a = sentinel_server(&idp, &sentinel, "zone-a");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a)));
    let only_primary = admin_token(&idp, "bob");
    let after = admin_token(&idp, "carol");

    // The replica is cut off (frozen, its link closed, so nothing sent later sits in its
    // socket): the primary alone holds the revocation.
    replica.pause();
    assert!(primary
        .command(&["CLIENT", "KILL", "TYPE", "replica"])
        .is_some_and(|n| n != "0"));
    let answer = revoke(&a, &only_primary);
    assert_eq!(answer["shared"], "unreplicated", "{answer}");
    assert_eq!(a.metric("authz_shared_unreplicated"), 1.0);
    assert!(a.metric("authz_shared_replication_waits_total{result=\"short\"}") >= 1.0);
    // A sleeps through the failover; B, started after it, writes to the new primary first.
    signal(&a, "-STOP");
    primary.stop();
    replica.resume();
    assert!(
        eventually(Duration::from_secs(20), || sentinel.primary_port()
            == Some(replica.port)),
        "the sentinels promote the replica"
    );
    every_instance_refuses_both(
        &a,
        |zone| sentinel_server(&idp, &sentinel, zone),
        &only_primary,
        &after,
    );
    assert!(
        a.metric("authz_shared_primary_changes_total") >= 2.0,
        "it followed the failover"
    );
}

/// Three tokens the privileged route allows through `envoy` (`before`, `during`, `user`);
/// `before` is then revoked at `b`, acknowledged by a replica (`"published"`), and refused
/// through the Envoy, which learns it through Redis only.
fn tokens_one_revoked_at(
    b: &AuthzServerProcess,
    idp: &DevIdp,
    envoy: &Envoy,
) -> (String, String, String) {
    let status = |token: &String| envoy.status_on_new_connection("GET", "/admin/users", token);
    let before = admin_token(idp, "revoked-before");
    let during = admin_token(idp, "revoked-during");
    let user = admin_token(idp, "alice");
    for token in [&before, &during, &user] {
        assert_eq!(status(token), 200);
    }
    let answer = revoke(b, &before);
    assert_eq!(answer["shared"], "published", "{answer}");
    assert!(eventually(Duration::from_secs(3), || status(&before) == 401));
    (before, during, user)
}

/// A failover while checks flow: `envoy` (behind A) checks the revoked `before` and `user`
/// every 20 ms while `kill` stops the primary (in `redis`), `during` is revoked at B (kept while no primary
/// answers, published once one does), `promoted` becomes true, both instances confirm again
/// by themselves and `user` is allowed again. A revoked token never gets anything but 401 or
/// 503, `user` only 200 or 503, and 200 from a second after the instances recovered. Returns
/// the time from the kill to the promotion, and how many of how many checks of `user` failed
/// closed.
fn fail_over_under_traffic<Redis>(
    envoy: &Envoy,
    [a, b]: [&AuthzServerProcess; 2],
    [before, during, user]: [&String; 3],
    redis: &mut Redis,
    kill: impl FnOnce(&mut Redis),
    promoted: impl Fn(&Redis) -> bool,
) -> (Duration, usize, usize) {
    let status = |token: &String| envoy.status_on_new_connection("GET", "/admin/users", token);
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<(Instant, u16, u16)>> = Mutex::default();
    let (killed, promoted_after, recovered) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let got = (status(before), status(user));
                seen.lock().unwrap().push((Instant::now(), got.0, got.1));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        kill(redis);
        let answer = revoke(b, during);
        assert!(
            ["pending", "unreplicated", "published"]
                .contains(&answer["shared"].as_str().unwrap_or("")),
            "{answer}"
        );
        assert!(
            eventually(Duration::from_secs(20), || promoted(redis)),
            "the replica is promoted"
        );
        let promoted_after = killed.elapsed();
        assert!(
            eventually(Duration::from_secs(15), || confirmed(a) && confirmed(b)),
            "both instances follow the failover by themselves"
        );
        let recovered = Instant::now();
        assert!(
            eventually(Duration::from_secs(5), || status(user) == 200),
            "the privileged route recovers by itself"
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (killed, promoted_after, recovered)
    });
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 10, "{} rounds", seen.len());
    for (at, revoked, allowed) in &seen {
        assert!(
            *revoked == 401 || *revoked == 503,
            "a revoked token got {revoked} {:?} after the kill",
            at.saturating_duration_since(killed)
        );
        assert!(*allowed == 200 || *allowed == 503, "alice got {allowed}");
        if *at > recovered + Duration::from_secs(1) {
            assert_eq!(*allowed, 200, "503 after the new primary answered");
        }
    }
    let closed = seen
        .iter()
        .filter(|(_, _, allowed)| *allowed == 503)
        .count();
    (promoted_after, closed, seen.len())
}

/// After a failover that lost the revocation of `only_primary` made at `a` (stopped through
/// it): B, started now, revokes `after` on the new primary first (so under the same number);
/// then A resumes. A, B and a fresh server C (started by `start` for a zone) must all refuse
/// both tokens: the promoted replica holds both, B applied the republished one, A read what
/// B wrote under its number.
fn every_instance_refuses_both(
    a: &AuthzServerProcess,
    start: impl Fn(&str) -> AuthzServerProcess,
    only_primary: &String,
    after: &String,
) {
    let b = start("zone-b");
    assert!(eventually(Duration::from_secs(15), || confirmed(&b)));
    let answer = revoke(&b, after);
    assert_ne!(answer["shared"], "pending", "{answer}");
    signal(a, "-CONT");
    assert!(eventually(Duration::from_secs(15), || confirmed(a)));
    let c = start("zone-c");
    assert!(eventually(Duration::from_secs(10), || confirmed(&c)));
    let both = [only_primary, after];
    for (name, server) in [("c", &c), ("b", &b), ("a", a)] {
        assert!(
            eventually(Duration::from_secs(5), || statuses(server, &both)
                == vec![401, 401]),
            "{name}: {:?}",
            statuses(server, &both)
        );
    }
}

/// A failover while the old primary stays up (`SENTINEL FAILOVER`: it is demoted to a replica
/// of the new one): an instance's session on it still reads the stream, so only asking the
/// sentinels about its primary (every `max_unconfirmed_ms / 3`) moves it; its revocations then
/// go to the new primary, not to a replica that refuses writes.
#[test]
fn a_planned_failover_moves_every_instance_to_the_new_primary() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = RedisSentinels::start(&primary, 3);
    let idp = DevIdp::start(&[]);
    let a = sentinel_server(&idp, &sentinel, "zone-a");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a)));
    let reply = redis_command(
        sentinel.0[0].port,
        None,
        &["SENTINEL", "FAILOVER", SENTINEL_MASTER],
    );
    // (Sentinels do not know QUIT, which the helper sends after the command.)
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("OK")),
        "{reply:?}"
    );
    assert!(
        eventually(Duration::from_secs(20), || sentinel.primary_port()
            == Some(replica.port)),
        "the sentinels promote the replica"
    );
    assert!(
        a.logged("shared_primary_moved"),
        "the session on the demoted primary ends"
    );
    assert!(eventually(Duration::from_secs(10), || confirmed(&a)
        && a.metric("authz_shared_primary_changes_total") >= 2.0));
    let token = admin_token(&idp, "dave");
    let answer = revoke(&a, &token);
    assert_ne!(answer["shared"], "pending", "{answer}");
    let c = sentinel_server(&idp, &sentinel, "zone-c");
    assert!(eventually(Duration::from_secs(10), || confirmed(&c)));
    assert_eq!(statuses(&c, &[&token]), vec![401]);
    drop(primary);
}

/// A sentinel on the minority side of a partition keeps naming the old primary, which still
/// answers as one. Here: a sentinel watching another Redis under the same name, asked first.
/// A server that trusted the first sentinel to answer would write there; it must follow the
/// majority, so a revocation made at it reaches an instance that knows only the real sentinels,
/// the other Redis gets nothing, and the session is not ended over and over by the dissent.
#[test]
fn a_sentinel_in_the_minority_cannot_choose_the_primary() {
    let primary = RedisServer::start();
    let _replica = RedisServer::start_replica_of(&primary);
    let sentinels = RedisSentinels::start(&primary, 3);
    let elsewhere = RedisServer::start();
    let dissenter = RedisSentinel::start(&elsewhere);
    let idp = DevIdp::start(&[]);
    let mut addresses = vec![dissenter.url()];
    addresses.extend(sentinels.urls());
    let a = server_with_sentinels(&idp, &addresses, "zone-a");
    let b = sentinel_server(&idp, &sentinels, "zone-b");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a) && confirmed(&b)));
    let token = admin_token(&idp, "erin");
    assert_eq!(statuses(&b, &[&token]), vec![200]);
    let answer = revoke(&a, &token);
    assert_eq!(answer["shared"], "published", "{answer}");
    assert!(
        eventually(Duration::from_secs(5), || statuses(&b, &[&token])
            == vec![401]),
        "the revocation went to the primary the majority names"
    );
    assert_eq!(
        elsewhere.command(&["DBSIZE"]).as_deref(),
        Some("0"),
        "nothing written to the dissenter's Redis"
    );
    // Several primary checks later: still the same session, still confirmed.
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(confirmed(&a));
    assert!(!a.logged("shared_primary_moved"));
    assert_eq!(a.metric("authz_shared_primary_changes_total"), 1.0);
}

/// The publisher connection dies while the stream reader lives (an idle timeout, `CLIENT
/// KILL`): a revocation made then is kept (`"pending"`) and published within moments through a
/// new publisher connection, instead of staying on this instance while its reader keeps
/// confirming its state; the session (and the instance's confirmed state) carries on.
#[test]
fn a_dead_publisher_connection_is_replaced() {
    let primary = RedisServer::start();
    let _replica = RedisServer::start_replica_of(&primary);
    let sentinels = RedisSentinels::start(&primary, 3);
    let idp = DevIdp::start(&[]);
    let a = sentinel_server(&idp, &sentinels, "zone-a");
    let b = sentinel_server(&idp, &sentinels, "zone-b");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a) && confirmed(&b)));
    let clients = primary.command(&["CLIENT", "LIST"]).expect("CLIENT LIST");
    let publishers: Vec<&str> = clients
        .lines()
        .filter(|l| l.contains("name=authz-publisher"))
        .filter_map(|l| l.split_whitespace().next()?.strip_prefix("id="))
        .collect();
    assert_eq!(
        publishers.len(),
        2,
        "one named publisher per instance: {clients}"
    );
    let token = admin_token(&idp, "frank");
    assert_eq!(statuses(&b, &[&token]), vec![200]);
    for id in &publishers {
        assert_eq!(
            primary.command(&["CLIENT", "KILL", "ID", id]).as_deref(),
            Some("1")
        );
    }
    let answer = revoke(&a, &token);
    assert_eq!(answer["shared"], "pending", "{answer}");
    assert!(
        eventually(Duration::from_secs(5), || statuses(&b, &[&token])
            == vec![401]),
        "the kept revocation is published after the reconnection"
    );
    assert_eq!(a.metric("authz_shared_outbox"), 0.0);
    assert!(confirmed(&a), "privileged checks carry on");
    assert_eq!(
        a.log_lines("shared_tier_synced").len(),
        1,
        "the same session: the reader was never dropped"
    );
}

/// A server of the Redis Cluster `cluster` (given every node as a seed).
fn cluster_server(idp: &DevIdp, cluster: &RedisCluster, zone: &str) -> AuthzServerProcess {
    let addresses = serde_json::to_string(&cluster.urls()).expect("json");
    AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\nzone: {zone}\nredis:\n  cluster:\n    addresses: {addresses}\n  min_replicas: 1\n  replica_wait_ms: 300\n  secret: \"{SHARED_SECRET}\"\n  block_ms: 200\n  max_unconfirmed_ms: 1000\n"
        ),
    ))
}

/// The key of the revocation stream (the default prefix, in its hash tag).
const STREAM_KEY: &str = "{authz:v1:}events";

/// Redis Cluster: the stream and its snapshot share one hash tag, so the publish script runs on
/// one slot. The primary of that slot is killed while checks flow through an Envoy behind one
/// instance and revocations are made at the other: no revoked token is ever allowed,
/// privileged checks fail closed only until the cluster promotes its replica, both instances
/// follow by themselves, and a server started afterwards refuses every revoked token.
#[test]
fn a_cluster_failover_loses_no_revocation_and_privileged_checks_recover_by_themselves() {
    let mut cluster = RedisCluster::start();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let a = cluster_server(&idp, &cluster, "zone-a");
    let b = cluster_server(&idp, &cluster, "zone-b");
    assert!(
        eventually(Duration::from_secs(10), || confirmed(&a) && confirmed(&b)),
        "both instances sync through the cluster"
    );
    let envoy = decision_cache_envoy(&a, &idp, &echo);
    let status = |token: &String| envoy.status_on_new_connection("GET", "/admin/users", token);
    let (before, during, user) = tokens_one_revoked_at(&b, &idp, &envoy);
    let stream_primary = cluster
        .primary_port_for(STREAM_KEY)
        .expect("a primary serves the stream's slot");
    assert_eq!(
        cluster
            .node(stream_primary)
            .and_then(|n| n.command(&[
                "EXISTS",
                STREAM_KEY,
                "{authz:v1:}seq",
                "{authz:v1:}incarnation"
            ]))
            .as_deref(),
        Some("3"),
        "the stream and its snapshot are on that node: {:?}",
        cluster
            .node(stream_primary)
            .and_then(|n| n.command(&["KEYS", "*"]))
    );
    assert!(a.logged("shared_stream_primary"));

    let (promoted, _, _) = fail_over_under_traffic(
        &envoy,
        [&a, &b],
        [&before, &during, &user],
        &mut cluster,
        |cluster| cluster.node_mut(stream_primary).expect("node").stop(),
        |cluster| {
            cluster
                .primary_port_for(STREAM_KEY)
                .is_some_and(|p| p != stream_primary)
        },
    );
    eprintln!("cluster failover: promoted after {promoted:?}");
    for token in [&before, &during] {
        assert!(eventually(Duration::from_secs(5), || status(token) == 401));
    }
    let c = cluster_server(&idp, &cluster, "zone-c");
    assert!(eventually(Duration::from_secs(10), || confirmed(&c)));
    for server in [&a, &b, &c] {
        assert!(
            eventually(Duration::from_secs(5), || statuses(
                server,
                &[&before, &during]
            ) == vec![401, 401]),
            "a revocation was lost: {:?}",
            statuses(server, &[&before, &during])
        );
    }
}

/// Redis Cluster: a revocation only the failed primary of the stream's slot held (its
/// replica cut off: `"unreplicated"`), with another instance writing to the promoted replica
/// first under the same number: the instance that made it finds the divergence and publishes
/// it again, so every instance and a fresh server refuse both tokens.
#[test]
fn a_cluster_failover_that_renumbers_loses_no_revocation() {
    let mut cluster = RedisCluster::start();
    let idp = DevIdp::start(&[]);
    let a = cluster_server(&idp, &cluster, "zone-a");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a)));
    let only_primary = admin_token(&idp, "bob");
    let after = admin_token(&idp, "carol");
    let primary = cluster.primary_port_for(STREAM_KEY).expect("primary");
    let replica = cluster.replica_port_of(primary).expect("its replica");
    cluster.node(replica).expect("replica").pause();
    assert!(cluster
        .node(primary)
        .and_then(|n| n.command(&["CLIENT", "KILL", "TYPE", "replica"]))
        .is_some_and(|n| n != "0"));
    let answer = revoke(&a, &only_primary);
    assert_eq!(answer["shared"], "unreplicated", "{answer}");
    signal(&a, "-STOP");
    cluster.node_mut(primary).expect("primary").stop();
    cluster.node(replica).expect("replica").resume();
    assert!(
        eventually(Duration::from_secs(20), || cluster
            .primary_port_for(STREAM_KEY)
            == Some(replica)),
        "the cluster promotes the replica"
    );
    every_instance_refuses_both(
        &a,
        |zone| cluster_server(&idp, &cluster, zone),
        &only_primary,
        &after,
    );
}

/// Redis Cluster, the stream's primary cut off from the majority of the cluster (here the
/// other primaries are stopped, so it reports the cluster down), even with
/// `cluster-allow-reads-when-down yes`: its reads must not keep confirming the state, since the
/// majority could meanwhile promote a replica and take revocations this node never sees. Redis
/// refuses the blocking stream read there (`CLUSTERDOWN`), which ends the session; the
/// session's periodic question to the node (is the cluster up, do you serve the slot) is a
/// second line this test cannot tell apart. Either way the state becomes unconfirmed and
/// privileged checks fail closed.
#[test]
fn a_cluster_node_that_reports_the_cluster_down_stops_confirming_the_state() {
    let mut cluster = RedisCluster::start_with(&["--cluster-allow-reads-when-down", "yes"]);
    let idp = DevIdp::start(&[]);
    let a = cluster_server(&idp, &cluster, "zone-a");
    assert!(eventually(Duration::from_secs(10), || confirmed(&a)));
    let user = admin_token(&idp, "alice");
    assert_eq!(statuses(&a, &[&user]), vec![200]);
    let stream_primary = cluster.primary_port_for(STREAM_KEY).expect("primary");
    let others: Vec<u16> = cluster
        .nodes
        .iter()
        .map(|n| n.port)
        .filter(|p| *p != stream_primary && cluster.replica_port_of(stream_primary) != Some(*p))
        .collect();
    for port in others {
        cluster.node_mut(port).expect("node").stop();
    }
    let node = cluster.node(stream_primary).expect("node");
    assert!(
        eventually(Duration::from_secs(10), || node
            .command(&["CLUSTER", "INFO"])
            .is_some_and(|i| i.contains("cluster_state:fail"))),
        "the stream's primary sees the cluster down"
    );
    assert!(
        node.command(&["XLEN", STREAM_KEY])
            .is_some_and(|n| n.parse::<u64>().is_ok()),
        "and still serves reads"
    );
    assert!(
        eventually(Duration::from_secs(5), || !confirmed(&a)),
        "reads from a node cut off from the cluster confirm nothing"
    );
    assert_eq!(
        statuses(&a, &[&user]),
        vec![503],
        "privileged checks fail closed"
    );
}
