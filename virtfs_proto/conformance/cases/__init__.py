"""The cases, one module per group; importing this package registers them all."""

from . import behaviour, security, wire

__all__ = ["behaviour", "security", "wire"]
