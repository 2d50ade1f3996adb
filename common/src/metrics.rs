//! Process metrics, served in the Prometheus text format at `/metrics` by the config service
//! and every node agent: ZooKeeper session state and request latencies (recorded by
//! [`crate::Coord`]), connection-cache counters, service restarts, failovers and group terms.
//!
//! One registry per process ([`global`]). The metrics other parts of datom increment are
//! defined here so their names are fixed in one place:
//!
//! | series | type | labels | incremented by |
//! |---|---|---|---|
//! | `datom_zk_session_state` | gauge (1 for the current state) | `state` | [`crate::Coord`] |
//! | `datom_zk_session_epoch` | gauge | | [`crate::Coord`] (new sessions after expiry) |
//! | `datom_zk_op_duration_seconds` | histogram | `op`, `outcome` | [`crate::Coord`] |
//! | `datom_connection_cache_{hits,misses,dials,redials,evictions,resyncs}_total` | counter | | the connection cache |
//! | `datom_service_restarts_total` | counter | `service`, `node` | the node agent's supervisor |
//! | `datom_failovers_total` | counter | `service` | the transition master |
//! | `datom_group_term` | gauge | `group` | the config service (from the znodes), group members |
//! | `datom_nodes` | gauge | `state` (`live`, `dead`) | the config service (from the znodes) |
//!
//! Anything else registers through [`register`] or [`register_collector`].

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::coord::{CoordError, SessionState, SessionStatus};

/// `Content-Type` of the Prometheus text format served at `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Labels of `datom_zk_session_state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `connected`, `suspended`, `expired` or `closed`.
    pub state: &'static str,
}

/// Labels of `datom_zk_op_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The request (`get`, `set`, `create`, `multi`, ...).
    pub op: &'static str,
    /// `ok`; `rejected` (ZooKeeper answered no: no node, node exists, version conflict, not
    /// empty); `error` (connection loss, session expiry, denied, ...); `timeout`.
    pub outcome: &'static str,
}

/// Labels of `datom_service_restarts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceNodeLabels {
    /// Service name.
    pub service: String,
    /// Node name.
    pub node: String,
}

/// Labels of `datom_failovers_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: String,
}

/// Labels of `datom_group_term`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Group name.
    pub group: String,
}

/// Labels of `datom_nodes`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabels {
    /// `live` or `dead`.
    pub state: &'static str,
}

/// Counters of the connection cache (`datom_common::cache`), incremented by it.
#[derive(Debug, Default, Clone)]
pub struct CacheMetrics {
    /// Lookups answered from the cache.
    pub hits: Counter,
    /// Lookups that had to dial.
    pub misses: Counter,
    /// Connections dialled.
    pub dials: Counter,
    /// Connections re-dialled after a failure or a peer change.
    pub redials: Counter,
    /// Connections evicted.
    pub evictions: Counter,
    /// Full re-lists of the peer registry after a reconnect or session expiry.
    pub resyncs: Counter,
}

type HistogramCtor = fn() -> Histogram;

/// A labelled family that is described (`# HELP`, `# TYPE`) even before its first sample, so
/// every named series shows up in `/metrics` from the start. (The registry leaves empty
/// families out by default.)
#[derive(Debug, Clone)]
struct Described<M>(M);

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> EncodeMetric for Described<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

fn op_histogram() -> Histogram {
    // 0.5 ms .. ~4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// ZooKeeper session state: 1 for the current state, 0 for the others.
    pub zk_session_state: Family<StateLabels, Gauge>,
    /// Sessions opened after an expiry (the coordination client's epoch).
    pub zk_session_epoch: Gauge,
    /// ZooKeeper request latency by request and outcome.
    pub zk_op_duration: Family<OpLabels, Histogram, HistogramCtor>,
    /// Connection cache counters.
    pub cache: CacheMetrics,
    /// Service restarts by service and node.
    pub service_restarts: Family<ServiceNodeLabels, Counter>,
    /// Failovers (a service moved off a failed node) by service.
    pub failovers: Family<ServiceLabels, Counter>,
    /// Current term of each group.
    pub group_term: Family<GroupLabels, Gauge>,
    /// Registered nodes by state.
    pub nodes: Family<NodeStateLabels, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            zk_session_state: Family::default(),
            zk_session_epoch: Gauge::default(),
            zk_op_duration: Family::new_with_constructor(op_histogram as HistogramCtor),
            cache: CacheMetrics::default(),
            service_restarts: Family::default(),
            failovers: Family::default(),
            group_term: Family::default(),
            nodes: Family::default(),
        };
        registry.register(
            "datom_zk_session_state",
            "ZooKeeper session state of this process (1 for the current state)",
            Described(m.zk_session_state.clone()),
        );
        registry.register(
            "datom_zk_session_epoch",
            "ZooKeeper sessions opened after an expiry",
            m.zk_session_epoch.clone(),
        );
        registry.register_with_unit(
            "datom_zk_op_duration",
            "ZooKeeper request latency by request and outcome",
            Unit::Seconds,
            Described(m.zk_op_duration.clone()),
        );
        let c = &m.cache;
        for (name, help, counter) in [
            ("datom_connection_cache_hits", "Connection cache lookups answered from the cache", &c.hits),
            ("datom_connection_cache_misses", "Connection cache lookups that had to dial", &c.misses),
            ("datom_connection_cache_dials", "Connections dialled by the connection cache", &c.dials),
            ("datom_connection_cache_redials", "Connections re-dialled by the connection cache", &c.redials),
            ("datom_connection_cache_evictions", "Connections evicted from the connection cache", &c.evictions),
            ("datom_connection_cache_resyncs", "Full re-lists of the peer registry", &c.resyncs),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "datom_service_restarts",
            "Service restarts by service and node",
            Described(m.service_restarts.clone()),
        );
        registry.register(
            "datom_failovers",
            "Services moved off a failed node, by service",
            Described(m.failovers.clone()),
        );
        registry.register("datom_group_term", "Current term of each group", Described(m.group_term.clone()));
        registry.register("datom_nodes", "Registered nodes by state", Described(m.nodes.clone()));
        *m.registry.lock().unwrap() = registry;
        m
    }
}

/// The process's metrics, created on first use.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Registers more metrics in the process's registry (the hook for parts of datom that own
/// their metrics, e.g. `registry.register("datom_x", "help", counter.clone())`).
pub fn register(f: impl FnOnce(&mut Registry)) {
    f(&mut global().registry.lock().unwrap());
}

/// Registers a collector that is asked for its metrics on every scrape.
pub fn register_collector(collector: Box<dyn Collector>) {
    global().registry.lock().unwrap().register_collector(collector);
}

/// The registry encoded in the Prometheus text format (version 0.0.4).
pub fn encode() -> String {
    let mut out = String::new();
    let registry = global().registry.lock().unwrap();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// Records one ZooKeeper request that started at `started`.
pub fn observe_zk_op<T>(op: &'static str, started: Instant, result: &Result<T, CoordError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(CoordError::NoNode { .. } | CoordError::NodeExists { .. } | CoordError::Conflict { .. })
        | Err(CoordError::NotEmpty { .. }) => "rejected",
        Err(CoordError::Timeout { .. }) => "timeout",
        Err(_) => "error",
    };
    global().zk_op_duration.get_or_create(&OpLabels { op, outcome }).observe(started.elapsed().as_secs_f64());
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Connected => "connected",
        SessionState::Suspended => "suspended",
        SessionState::Expired => "expired",
        SessionState::Closed => "closed",
    }
}

/// Mirrors a coordination client's session status into `datom_zk_session_*` until the client
/// is dropped.
pub fn track_session(mut status: watch::Receiver<SessionStatus>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
    handle.spawn(async move {
        loop {
            let s = *status.borrow_and_update();
            let m = global();
            for st in [SessionState::Connected, SessionState::Suspended, SessionState::Expired, SessionState::Closed] {
                let name = state_name(st);
                m.zk_session_state.get_or_create(&StateLabels { state: name }).set(i64::from(st == s.state));
            }
            m.zk_session_epoch.set(s.epoch as i64);
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

/// An axum router serving `GET /metrics`; merge it into a larger one or serve it alone.
pub fn router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(metrics_handler))
}

async fn metrics_handler() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], encode())
}

/// Serves `router` on `addr` until `shutdown` resolves; returns the bound address (port 0
/// picks a free one) and the server task.
pub async fn serve_http(
    addr: SocketAddr,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "HTTP server failed");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_series_is_described() {
        global().failovers.get_or_create(&ServiceLabels { service: "web".into() }).inc();
        global().group_term.get_or_create(&GroupLabels { group: "g1".into() }).set(4);
        observe_zk_op::<()>("get", Instant::now(), &Ok(()));
        let text = encode();
        for name in [
            "datom_zk_session_state",
            "datom_zk_session_epoch",
            "datom_zk_op_duration_seconds",
            "datom_connection_cache_hits_total",
            "datom_connection_cache_resyncs_total",
            "datom_service_restarts_total",
            "datom_failovers_total",
            "datom_group_term",
            "datom_nodes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing from:\n{text}");
        }
        assert!(text.contains("datom_failovers_total{service=\"web\"} 1"), "{text}");
        assert!(text.contains("datom_group_term{group=\"g1\"} 4"), "{text}");
        assert!(text.contains("datom_zk_op_duration_seconds_count{op=\"get\",outcome=\"ok\"} 1"), "{text}");
    }
}
