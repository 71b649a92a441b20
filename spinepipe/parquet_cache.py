"""A per-study cache entry: one parquet file holding a table and, in its metadata, the
fingerprint of what it was computed from (the header cache of the metadata stage). A damaged,
stale or foreign entry is a miss, never an error; writing is atomic and never fails a job."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl

log = logging.getLogger("spinepipe.metadata")  # the cache's messages belong to the metadata stage


def read_cached(cache: Path, fingerprint: str, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """The cached rows when the entry is intact, written for ``fingerprint`` and of ``schema``;
    None (and a warning where it is damaged or of another schema) otherwise."""
    if not cache.is_file():
        return None
    try:
        if pl.read_parquet_metadata(cache).get("fingerprint") != fingerprint:
            return None
        cached = pl.read_parquet(cache)
    except Exception as error:  # a truncated or foreign file: parse again
        log.warning("metadata cache %s is unreadable (%s): parsing the study again", cache,
                    f"{type(error).__name__}: {error}"[:200])
        return None
    if dict(cached.schema) != schema:
        log.warning("metadata cache %s has another schema: parsing the study again", cache)
        return None
    return cached


def write_cached(frame: pl.DataFrame, cache: Path, fingerprint: str) -> None:
    """Atomic: a job killed while writing leaves a temporary file, never a broken entry."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        frame.write_parquet(tmp, metadata={"fingerprint": fingerprint})
        os.replace(tmp, cache)
    except OSError as error:  # the cache is an optimisation: never fail the parse for it
        log.warning("metadata cache %s not written (%s)", cache, error)
        tmp.unlink(missing_ok=True)
