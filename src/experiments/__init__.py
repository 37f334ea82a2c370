"""Config-driven neural-network experiments."""
