//! Metric registration and rendering. Names and help texts are static in the callers,
//! so a construction error is a programming bug: it panics with the metric's name (the
//! callers' unit tests build every metric). A registration clash (two metrics of one
//! name in one registry) is logged, not fatal, and also caught by those tests.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Creates metrics and registers them in one registry.
#[derive(Debug, Clone, Copy)]
pub struct Registrar<'a> {
    registry: &'a Registry,
}

impl<'a> Registrar<'a> {
    pub fn new(registry: &'a Registry) -> Self {
        Self { registry }
    }

    /// Registers `m` and returns it.
    pub fn register<T: Collector + Clone + 'static>(&self, m: T) -> T {
        if let Err(e) = self.registry.register(Box::new(m.clone())) {
            tracing::error!(error = %e, "metric registration failed");
        }
        m
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}")))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.register(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    }

    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        self.register(
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    }
}

/// The registry in the Prometheus text format (what `/metrics` serves).
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render_and_clashes_do_not_panic() {
        let r = Registry::new();
        let reg = Registrar::new(&r);
        reg.counter("x_total", "X.").inc_by(3);
        reg.counter_vec("y_total", "Y.", &["k"])
            .with_label_values(&["v"])
            .inc();
        let _clash = reg.counter("x_total", "X again.");
        let text = render(&r);
        assert!(text.contains("x_total 3"), "{text}");
        assert!(text.contains("y_total{k=\"v\"} 1"), "{text}");
    }
}
