"""Domain types, errors, settings and clock shared by every package (stdlib only)."""
