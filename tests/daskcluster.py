"""The Dask cluster of the tests (support.daskcluster): without Dask the tests
that need it are skipped, or fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.daskcluster import DaskCluster, DaskUnavailable


def start_cluster(workers: int, nanny: bool = True, log_dir: Path | None = None
                  ) -> DaskCluster:
    """A scheduler and `workers` worker processes on 127.0.0.1."""
    try:
        return DaskCluster(workers, nanny=nanny, log_dir=log_dir)
    except DaskUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Dask cluster tests cannot run: {exc}", pytrace=False)
        pytest.skip(str(exc))
