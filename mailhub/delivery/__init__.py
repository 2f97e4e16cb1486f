"""SMTP delivery: the worker, message building, the connection pool, failure classes, the sending gate."""
