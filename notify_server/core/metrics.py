"""Prometheus metrics, one registry per app or worker (no module-level globals)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from notify_server.core.constants import CLOSE_CODES

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The labels of notify_disconnects_total: the close codes this server sends or counts, and the standard
# ones a client may send (RFC 6455 §7.4.1). Any other code — a client may close with any of 3000-4999, and
# 5000-65535 reach us too — is "other": one client must not be able to mint a series per code.
DISCONNECT_LABELS = frozenset(str(code) for code in (*CLOSE_CODES, 1000, 1002, 1003, 1005, 1007, 1008, 1010, 1012))
OTHER_CLOSE_CODE = "other"

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics", "WorkerMetrics", "disconnect_label", "render"]


def disconnect_label(code: int) -> str:
    """The `code` label of a disconnect: the code itself when it is one of DISCONNECT_LABELS, else "other"."""
    label = str(code)
    return label if label in DISCONNECT_LABELS else OTHER_CLOSE_CODE


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _loop_restarts(registry: CollectorRegistry) -> Counter:
    return Counter("notify_loop_restarts", "Background loops restarted after a failure, by loop", ["loop"],
                   registry=registry)


class ServerMetrics:
    def __init__(self, connection_count: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.open_connections = Gauge(
            "notify_open_connections", "WebSocket connections open on this node", registry=self.registry
        )
        self.open_connections.set_function(connection_count)
        self.connects = Counter("notify_connects", "WebSocket connections accepted", registry=self.registry)
        self.disconnects = Counter(
            "notify_disconnects", "WebSocket connections ended, by close code (a fixed set; the rest is other)",
            ["code"], registry=self.registry,
        )
        self.auth_failures = Counter(
            "notify_auth_failures", "Requests and upgrades refused for a missing or invalid session",
            ["surface"], registry=self.registry,
        )
        self.frames_pushed = Counter("notify_frames_pushed", "Frames written to sockets", registry=self.registry)
        self.push_jobs = Counter(
            "notify_push_jobs", "Push jobs consumed from this node's stream", registry=self.registry
        )
        self.push_latency = Histogram(
            "notify_push_latency_seconds", "Push job enqueued by a worker -> frames queued on this node",
            buckets=LATENCY_BUCKETS_S, registry=self.registry,
        )
        self.loop_restarts = _loop_restarts(self.registry)
        self.refreshes = Counter(
            "notify_auth_refreshes", "In-band refresh frames, by result (ok, unauthorized, unavailable, limited)",
            ["result"], registry=self.registry,
        )
        self.published = Counter(
            "notify_published_events", "Events sent to the HTTP publish API, by result (queued, duplicate, rejected)",
            ["status"], registry=self.registry,
        )

        self.rate_limited = Counter(
            "notify_rate_limited", "Attempts refused by a rate limit, by limit (refresh, proxy_client, proxy_node)",
            ["limit"], registry=self.registry,
        )

    def disconnected(self, code: int) -> None:
        """Count a connection that ended with this close code (labelled by disconnect_label)."""
        self.disconnects.labels(disconnect_label(code)).inc()


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_processed = Counter(
            "notify_events_processed", "Events stored", registry=self.registry
        )
        self.events_rejected = Counter(
            "notify_events_rejected", "Events rejected as malformed, by field", ["reason"], registry=self.registry
        )
        self.events_retried = Counter(
            "notify_events_retried", "Events retried after a transient fault", registry=self.registry
        )
        self.notifications_stored = Counter(
            "notify_notifications_stored", "Notification rows inserted", registry=self.registry
        )
        self.push_jobs = Counter(
            "notify_push_jobs_enqueued", "Push jobs written to node streams", registry=self.registry
        )
        self.job_duration = Histogram(
            "notify_event_job_duration_seconds", "process_event duration", buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rows_pruned = Counter(
            "notify_rows_pruned", "Rows deleted by the retention prune, by kind (read, unread, sessions)",
            ["kind"], registry=self.registry,
        )
        self.loop_restarts = _loop_restarts(self.registry)
        self.web_push = Counter(
            "notify_web_push", "Web Push messages by result (sent, gone, too_large, rejected, failed, refused,"
            " expired)", ["result"], registry=self.registry,
        )
        # Preferences and digests
        self.recipients_muted = Counter(
            "notify_recipients_muted", "Recipients who got nothing because they turned the event's type off",
            registry=self.registry,
        )
        self.digest_events_held = Counter(
            "notify_digest_events_held", "Events held in a recipient's digest window", registry=self.registry
        )
        self.digests_delivered = Counter(
            "notify_digests_delivered", "Digests stored when their window ended", registry=self.registry
        )
        self.digests_muted = Counter(
            "notify_digests_muted", "Digests not stored: the user turned the type off during the window",
            registry=self.registry,
        )
        self.digest_delay = Histogram(
            "notify_digest_delay_seconds", "A window's end -> its digest stored", buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
