"""Prometheus metrics (`GET /metrics`) and the same numbers as JSON (`/api/realtime/metrics`).

One `CollectorRegistry` per app rather than the global default, so several gateways can live in
one process (tests, benchmarks) without colliding. Per-frame updates are plain counter adds on
pre-bound children: no label lookups on the hot path.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.websockets_open = Gauge(
            "voxgate_websockets_open", "Open client WebSocket connections", registry=r
        )
        self.active_sessions = Gauge(
            "voxgate_active_sessions", "Sessions with a started engine", ["engine"], registry=r
        )
        self.sessions_total = Counter(
            "voxgate_sessions", "Sessions started", ["engine"], registry=r
        )
        self.session_duration = Histogram(
            "voxgate_session_duration_seconds",
            "Session duration",
            ["engine"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
            registry=r,
        )
        self.errors_total = Counter(
            "voxgate_errors", "Errors sent to clients, by code", ["code"], registry=r
        )
        self.audio_in_seconds = Counter(
            "voxgate_audio_in_seconds", "Seconds of user audio received", registry=r
        )
        self.audio_out_seconds = Counter(
            "voxgate_audio_out_seconds", "Seconds of assistant audio sent", registry=r
        )
        self.upstream_connect_seconds = Histogram(
            "voxgate_upstream_connect_seconds",
            "Time to connect to the engine's upstream",
            ["engine", "outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.turn_first_audio_seconds = Histogram(
            "voxgate_turn_first_audio_seconds",
            "Per turn: end of user speech (or commit/typed message) to first assistant audio",
            ["engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_first_transcript_seconds = Histogram(
            "voxgate_turn_first_transcript_seconds",
            "Per turn: end of user speech (or commit/typed message) to first assistant transcript",
            ["engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.turns_total = Counter(
            "voxgate_turns", "Turns stored, by role", ["role"], registry=r
        )
        self.audio_dropped_seconds = Counter(
            "voxgate_audio_dropped_seconds",
            "Assistant audio dropped for clients that did not read fast enough",
            registry=r,
        )

        self.tool_calls_total = Counter(
            "voxgate_tool_calls",
            "Tool calls by tool (client tools share the label 'client') and how they ended "
            "(done, error, cancelled)",
            ["tool", "status"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "voxgate_tool_seconds",
            "Tool call latency, from the model's call to its result",
            ["tool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self._upstream_counters(r)

    def _upstream_counters(self, r: CollectorRegistry) -> None:
        """What the providers cost and what reconnects did to the user's audio, per engine."""
        self.billed_seconds = Counter(
            "voxgate_billed_seconds",
            "Provider time billed by duration (GPT-Live's cumulative usage), in seconds",
            ["engine"],
            registry=r,
        )

        # User audio kept while an engine reconnected to its provider, and what became of it.
        self.reconnect_audio_buffered_seconds = Counter(
            "voxgate_reconnect_audio_buffered_seconds",
            "User audio kept for the provider while an engine reconnected",
            ["engine"],
            registry=r,
        )
        self.reconnect_audio_replayed_seconds = Counter(
            "voxgate_reconnect_audio_replayed_seconds",
            "User audio sent to the new upstream after a reconnect",
            ["engine"],
            registry=r,
        )
        self.reconnect_audio_dropped_seconds = Counter(
            "voxgate_reconnect_audio_dropped_seconds",
            "User audio kept during a reconnect that never reached the provider: the oldest "
            "past VOXGATE_RECONNECT_AUDIO_BUFFER_S (overflow), or all of it when the reconnect "
            "failed (reconnect_failed)",
            ["engine", "reason"],
            registry=r,
        )

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly snapshot: counters as totals, histograms as count/sum/mean."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            if family.type in ("counter", "gauge"):
                values: dict[str, float] = {}
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "total"
                    values[key] = sample.value
                out[family.name] = values
            elif family.type == "histogram":
                stats: dict[str, dict[str, float]] = {}
                for sample in family.samples:
                    labels = {k: v for k, v in sample.labels.items() if k != "le"}
                    key = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "total"
                    entry = stats.setdefault(key, {"count": 0.0, "sum": 0.0})
                    if sample.name.endswith("_count"):
                        entry["count"] = sample.value
                    elif sample.name.endswith("_sum"):
                        entry["sum"] = sample.value
                for entry in stats.values():
                    entry["mean"] = entry["sum"] / entry["count"] if entry["count"] else 0.0
                out[family.name] = stats
        return out
