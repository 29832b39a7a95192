package controller

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	connected   prometheus.Gauge
	heartbeats  prometheus.Counter
	enrollments *prometheus.CounterVec
	cmdLatency  prometheus.Histogram
	cmdResults  *prometheus.CounterVec
	renewals    prometheus.Counter
	// Artifact fetches by nodes: what was sent, and how each call ended.
	artifactBytes   prometheus.Counter
	artifactFetches *prometheus.CounterVec
	// Reports kept to be written later (coalesce.go), by kind.
	reportsCoalesced *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bud_controller_connected_agents",
			Help: "Agents with an open session.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bud_controller_heartbeats_total",
			Help: "Heartbeats received from agents.",
		}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bud_controller_enrollments_total",
			Help: "Enrollment attempts by result.",
		}, []string{"result"}),
		cmdLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bud_controller_command_latency_seconds",
			Help:    "Time from a command being queued to its result arriving.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12),
		}),
		cmdResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bud_controller_command_results_total",
			Help: "Command results by kind and outcome.",
		}, []string{"kind", "outcome"}),
		renewals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bud_controller_certificate_renewals_total",
			Help: "Node certificates renewed over agent sessions.",
		}),
		artifactBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bud_controller_artifact_bytes_served_total",
			Help: "Artifact content sent to nodes.",
		}),
		artifactFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bud_controller_artifact_fetches_total",
			Help: "Artifact fetch calls by result: complete, resumed_complete (from an offset), not_found, cut (the call ended early), error.",
		}, []string{"result"}),
		reportsCoalesced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bud_controller_reports_coalesced_total",
			Help: "Node reports that came within the report interval of the last one stored, by kind: kept and stored (the latest of them) when the interval is up.",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.connected, m.heartbeats, m.enrollments, m.cmdLatency, m.cmdResults, m.renewals, m.artifactBytes, m.artifactFetches, m.reportsCoalesced)
	return m
}
