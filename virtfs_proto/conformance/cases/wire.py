"""Wire: golden vectors."""
