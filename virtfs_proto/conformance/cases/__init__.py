"""The cases, one module per group; importing this package registers them all."""

from . import behaviour, commandline, long_paths, security, wire

__all__ = ["behaviour", "commandline", "long_paths", "security", "wire"]
