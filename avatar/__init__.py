"""avatar: a real-time conversational digital human."""

__version__ = "0.1.0"
