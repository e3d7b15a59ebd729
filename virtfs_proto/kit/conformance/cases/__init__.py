"""The cases, one module per group; importing this package registers them all."""

from . import behaviour, commandline, creation, long_paths, security, wire

__all__ = ["behaviour", "commandline", "creation", "long_paths", "security", "wire"]
