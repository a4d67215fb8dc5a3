"""Running a grid on a Dask cluster (dask.distributed), for users who outgrow one machine.

Start a scheduler and workers the usual way, on machines that share the workspace folder
(results and splits are files, so every worker must see the same ``--root``):

    dask scheduler                                  # prints tcp://HOST:8786
    dask worker tcp://HOST:8786 --nthreads 1        # CPU nodes
    dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1   # GPU nodes

or on Slurm with dask-jobqueue (``SLURMCluster(...).scale(jobs=N)``; pass its scheduler address).
Then ``bench run ... --executor dask --scheduler tcp://HOST:8786 [--gpu-resource]``. With
``--gpu-resource`` a job whose model is registered with ``gpu=True`` asks the scheduler for one
``GPU`` resource, so it only lands on a worker that declared one.

Dask was chosen over Ray because RecBole 1.2.1 caps ray at 2.6.3, which does not import with
current setuptools/numpy (docs/dependencies.md); dask.distributed installs beside our pins.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bench.errors import BenchError

logger = logging.getLogger(__name__)


def run_on_dask(runnable: list, preset, ws, overwrite: bool, scheduler: str, gpu_resource: bool, on_done) -> None:
    """Submit (index, job, split) triples to the scheduler; call on_done(index, outcome) as they finish."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise BenchError("the dask executor needs dask.distributed: pip install 'dask[distributed]'") from None
    from bench.models import MODELS
    from bench.runner import _indexed

    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise BenchError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one with "
                         "`dask scheduler` and pass its address") from None
    try:
        futures = []
        for index, job, split in runnable:
            resources = {"GPU": 1} if gpu_resource and MODELS.entry(job.model_class_name).meta.get("gpu") else None
            futures.append(client.submit(_indexed, index, job, preset, ws, overwrite, Path(split.directory), None,
                                         resources=resources, pure=False, key=f"bench-{index}-{job.key}"))
        for future in as_completed(futures):
            index, outcome = future.result()
            on_done(index, outcome)
    finally:
        client.close()
