"""dockyard: a Docker-compatible container stack in Python."""

__version__ = "0.1.0"
