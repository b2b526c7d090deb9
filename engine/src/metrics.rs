//! The engine's instruments, in the process's default Prometheus registry (which `/metrics`
//! gathers): work queues under KubeVirt's names for its controllers' (client-go's, prefixed
//! `kubevirt_`), so KubeVirt's dashboards and alerts read them, and the store's transactions.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    // Registered once per process; a second registration (never expected) keeps the first.
    let _ = prometheus::register(Box::new(collector.clone()));
    collector
}

/// client-go's work-queue latency buckets: 10 ns to 10 s, by tens.
fn queue_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1e-8, 10.0, 10).unwrap_or_default()
}

pub static WORKQUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(Opts::new("kubevirt_workqueue_depth", "Current depth of workqueue"), &["name"])
            .expect("metric"),
    )
});
pub static WORKQUEUE_ADDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("kubevirt_workqueue_adds_total", "Total number of adds handled by workqueue"),
            &["name"],
        )
        .expect("metric"),
    )
});
pub static WORKQUEUE_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("kubevirt_workqueue_retries_total", "Total number of retries handled by workqueue"),
            &["name"],
        )
        .expect("metric"),
    )
});
pub static WORKQUEUE_QUEUE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "kubevirt_workqueue_queue_duration_seconds",
        "How long in seconds an item stays in workqueue before being requested.",
    )
    .buckets(queue_buckets());
    register(HistogramVec::new(opts, &["name"]).expect("metric"))
});
pub static WORKQUEUE_WORK_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "kubevirt_workqueue_work_duration_seconds",
        "How long in seconds processing an item from workqueue takes.",
    )
    .buckets(queue_buckets());
    register(HistogramVec::new(opts, &["name"]).expect("metric"))
});
pub static STORE_TRANSACTION_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "converge_store_transaction_duration_seconds",
        "How long a store write transaction took, from its start to its commit, by operation.",
    )
    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
    register(HistogramVec::new(opts, &["operation", "backend"]).expect("metric"))
});
