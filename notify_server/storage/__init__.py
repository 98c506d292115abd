"""Postgres: the pool, the notification and session repositories, migrations, retention."""
