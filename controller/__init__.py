"""The kopf operator and config server (see issue 7)."""
