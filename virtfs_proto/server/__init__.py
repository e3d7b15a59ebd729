"""The reference helper: a hardened, drop-in virtfs-proxy-helper (Linux only)."""
