"""mailhub: queue emails over HTTP, deliver them over SMTP, follow them live."""

__version__ = "0.1.0"
