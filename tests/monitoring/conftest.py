"""The integration tier's real echo backends and data-plane process, for the scrape tests."""

from tests.integration.conftest import backends, dataplane_process

__all__ = ["backends", "dataplane_process"]
