"""Live status: one pub/sub connection per process, fanned out to subscribers."""
