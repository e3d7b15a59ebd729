"""Security: attack cases."""
