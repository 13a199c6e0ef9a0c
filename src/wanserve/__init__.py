"""wanserve: a self-hosted, DashScope-compatible Wan video-synthesis service."""

__version__ = "0.1.0"
