package proxy

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hakaproxy/haka-proxy/proxy/inspect"
)

// Reasons a connection is refused before it is proxied, the values of the
// reason label of haka_proxy_connections_refused_total.
const (
	RefusedMaxConns      = "max_conns"      // --max-conns reached
	RefusedProxyProtocol = "proxy_protocol" // missing, malformed or untrusted PROXY header
	RefusedInspector     = "inspector"      // Factory.New gave a killing verdict
	RefusedDraining      = "draining"       // accepted while shutting down
)

// Causes of a failed upstream dial, the values of the cause label of
// haka_proxy_upstream_dial_errors_total and the prefix of the log reason.
const (
	DialRefused     = "refused"
	DialTimeout     = "timeout"
	DialNoRoute     = "no_route"
	DialUnreachable = "unreachable"
	DialResolve     = "resolve"
	DialOther       = "other"
)

// Limits that end a connection, the values of the limit label of
// haka_proxy_limits_total: which of them a proxy under load runs into.
const (
	LimitHandshakeTimeout = "handshake_timeout" // --handshake-timeout
	LimitIdleTimeout      = "idle_timeout"      // --idle-timeout
	LimitMaxHeldBytes     = "max_held_bytes"    // --max-held-bytes
	LimitDrainTimeout     = "drain_timeout"     // --drain-timeout, at shutdown
)

// Metrics are the proxy's Prometheus metrics, in a registry of their own
// (never the global one, so that two proxies in one process, as in tests,
// do not collide). The zero value is not usable: call NewMetrics. A nil
// *Metrics is valid everywhere and records nothing.
type Metrics struct {
	Registry *prometheus.Registry

	ConnectionsActive prometheus.Gauge
	ConnectionsTotal  prometheus.Counter
	Refused           *prometheus.CounterVec // label reason
	DialErrors        *prometheus.CounterVec // label cause
	Bytes             *prometheus.CounterVec // label direction: up, down
	Verdicts          *prometheus.CounterVec // label verdict
	InspectionErrors  prometheus.Counter
	Panics            prometheus.Counter
	Limits            *prometheus.CounterVec // label limit
	// RuleEval is observed by the rule engine, once per evaluated rule
	// (see ObserveRuleEval).
	RuleEval prometheus.Histogram

	// Resolved children, so that the per-read path does no label lookup.
	bytesUp, bytesDown prometheus.Counter
	verdicts           [inspect.Bypass + 1]prometheus.Counter
}

// NewMetrics makes the metrics and registers them, with the Go runtime and
// process collectors, in a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		ConnectionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "haka_proxy_connections_active",
			Help: "Client connections open now (accepted and not yet closed).",
		}),
		ConnectionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haka_proxy_connections_total",
			Help: "Client connections accepted, including refused ones.",
		}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haka_proxy_connections_refused_total",
			Help: "Client connections closed before being proxied, by reason.",
		}, []string{"reason"}),
		DialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haka_proxy_upstream_dial_errors_total",
			Help: "Failed upstream dials, by cause (refused, timeout, no_route, unreachable, resolve, other).",
		}, []string{"cause"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haka_proxy_bytes_total",
			Help: "Bytes forwarded, by direction (up: client to server, down: server to client).",
		}, []string{"direction"}),
		Verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haka_proxy_verdicts_total",
			Help: "Closed connections by final verdict (pass, drop, reset, bypass).",
		}, []string{"verdict"}),
		InspectionErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haka_proxy_inspection_errors_total",
			Help: "Connections ended by an inspection failure: malformed input (builtin:fail), an inspector breaking its contract or panicking.",
		}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "haka_proxy_panics_total",
			Help: "Panics recovered in a connection's path; the connection was reset.",
		}),
		Limits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "haka_proxy_limits_total",
			Help: "Connections ended by a limit, by limit (handshake_timeout, idle_timeout, max_held_bytes, drain_timeout).",
		}, []string{"limit"}),
		RuleEval: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "haka_proxy_rule_eval_duration_seconds",
			Help: "Time to evaluate one rule on one event.",
			// Rules run inline before bytes are forwarded: the
			// interesting range is a few microseconds to the rule
			// deadline (tens of milliseconds).
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
		}),
	}
	m.Registry.MustRegister(
		m.ConnectionsActive, m.ConnectionsTotal, m.Refused, m.DialErrors,
		m.Bytes, m.Verdicts, m.InspectionErrors, m.Panics, m.Limits, m.RuleEval,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.bytesUp = m.Bytes.WithLabelValues("up")
	m.bytesDown = m.Bytes.WithLabelValues("down")
	for v := range m.verdicts {
		m.verdicts[v] = m.Verdicts.WithLabelValues(inspect.Verdict(v).String())
	}
	// Make every label value visible from the start, so that dashboards
	// and alerts see zeros rather than absent series.
	for _, r := range []string{RefusedMaxConns, RefusedProxyProtocol, RefusedInspector, RefusedDraining} {
		m.Refused.WithLabelValues(r)
	}
	for _, c := range []string{DialRefused, DialTimeout, DialNoRoute, DialUnreachable, DialResolve, DialOther} {
		m.DialErrors.WithLabelValues(c)
	}
	for _, l := range []string{LimitHandshakeTimeout, LimitIdleTimeout, LimitMaxHeldBytes, LimitDrainTimeout} {
		m.Limits.WithLabelValues(l)
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveRuleEval records the duration of one rule evaluation. The rule
// engine calls it; it is safe for concurrent use and on a nil *Metrics.
func (m *Metrics) ObserveRuleEval(d time.Duration) {
	if m != nil {
		m.RuleEval.Observe(d.Seconds())
	}
}

// InspectionError counts one inspection failure; safe on a nil *Metrics.
func (m *Metrics) InspectionError() {
	if m != nil {
		m.InspectionErrors.Inc()
	}
}

func (m *Metrics) refused(reason string) {
	if m != nil {
		m.Refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) dialError(cause string) {
	if m != nil {
		m.DialErrors.WithLabelValues(cause).Inc()
	}
}

func (m *Metrics) accepted() {
	if m != nil {
		m.ConnectionsTotal.Inc()
		m.ConnectionsActive.Inc()
	}
}

func (m *Metrics) closed() {
	if m != nil {
		m.ConnectionsActive.Dec()
	}
}

func (m *Metrics) forwarded(up bool, n int) {
	if m == nil || n <= 0 {
		return
	}
	if up {
		m.bytesUp.Add(float64(n))
	} else {
		m.bytesDown.Add(float64(n))
	}
}

func (m *Metrics) verdict(v inspect.Verdict) {
	if m != nil && int(v) < len(m.verdicts) {
		m.verdicts[v].Inc()
	}
}

// limitOf names the limit a connection ended by, from its rule; "" when
// it ended otherwise.
func limitOf(rule string) string {
	switch rule {
	case RuleHandshakeTimeout:
		return LimitHandshakeTimeout
	case RuleIdleTimeout:
		return LimitIdleTimeout
	case RuleMaxHeldBytes:
		return LimitMaxHeldBytes
	case RuleShutdown:
		return LimitDrainTimeout
	}
	return ""
}

func (m *Metrics) limit(rule string) {
	if m == nil {
		return
	}
	if l := limitOf(rule); l != "" {
		m.Limits.WithLabelValues(l).Inc()
	}
}

func (m *Metrics) panicked() {
	if m != nil {
		m.Panics.Inc()
	}
}
