"""The SQLite catalog: every dataset, checkpoint, run, eval and chat openchat makes."""

from store.catalog import Catalog, open_catalog

__all__ = ["Catalog", "open_catalog"]
