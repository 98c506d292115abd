"""Keys of the arq job context (`ctx`) that startup fills and jobs read."""

SETTINGS = "notify_settings"  # notify_server.settings.Settings
DB_POOL = "notify_db_pool"  # aiopg.Pool
NOTIFICATIONS = "notify_notifications"  # NotificationRepository
REDIS = "redis"  # arq's own ArqRedis (a redis.asyncio.Redis), reused for push streams and presence
PRESENCE = "notify_presence"  # notify_server.presence.Presence
PUSH = "notify_push"  # notify_server.push.StreamPushTransport
METRICS = "notify_metrics"  # notify_server.metrics.WorkerMetrics
