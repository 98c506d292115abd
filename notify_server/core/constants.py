"""Names shared by the server, the workers and the CLI: close codes, Redis keys, job names."""

# WebSocket close codes (README: "Close codes").
CLOSE_GOING_AWAY = 1001  # server shutting down / draining
CLOSE_ABNORMAL = 1006  # no close frame: the peer vanished (a metric label; never sent)
CLOSE_TOO_BIG = 1009  # a client frame over websocket.max_frame_bytes (aiohttp sends it)
CLOSE_HEARTBEAT_TIMEOUT = 1011  # no pong within heartbeat.timeout_s (the peer rarely sees it: aborted)
CLOSE_TRY_AGAIN = 1013  # Postgres or Redis unreachable while connecting: reconnect with backoff
CLOSE_UNAUTHORIZED = 4001  # no, invalid, expired or revoked session
CLOSE_TOO_SLOW = 4008  # the per-connection send queue overflowed
CLOSE_TOO_MANY_CONNECTIONS = 4029  # over limits.max_connections_per_user
# The same code, for a socket over a rate limit (refresh frames; calls to the app's proxy endpoint from
# its address): the client's answer is the same — wait a while before reconnecting.
CLOSE_TOO_MANY_ATTEMPTS = CLOSE_TOO_MANY_CONNECTIONS
# Every code above: the disconnect metric's labels (notify_server.core.metrics).
CLOSE_CODES = (
    CLOSE_GOING_AWAY, CLOSE_ABNORMAL, CLOSE_TOO_BIG, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED,
    CLOSE_TOO_SLOW, CLOSE_TOO_MANY_CONNECTIONS,
)

# arq job names.
JOB_PROCESS_EVENT = "process_event"

# Redis keys. Everything this service writes lives under "notify:".
REDIS_PREFIX = "notify:"
PRESENCE_USER_PREFIX = REDIS_PREFIX + "presence:user:"  # + user_id -> hash {node_id: expires_at}
PUSH_STREAM_PREFIX = REDIS_PREFIX + "push:"  # + node_id -> stream of push jobs
SESSION_REVOKED_CHANNEL = REDIS_PREFIX + "sessions:revoked"  # pub/sub: token hashes

PRIORITIES = ("LOW", "NORMAL", "HIGH", "URGENT")
