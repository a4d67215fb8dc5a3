"""Training stages connected by files, cached by key and shared between jobs.

A stage is a folder written atomically with a ``stage.json`` record (its key hash, wall time,
peak memory, the stage's own stats and the size and sha256 of every file). A job that needs a
stage with the same key finds the folder and reuses it; concurrent jobs that need it together
are serialised by a lock file beside it, so it is computed once. PageLLM's pre-training,
fine-tuning and reward models (`pagellm.model`) and UniSRec's multi-domain pre-training
(`baselines.unisrec`) are stages.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from bench.io import hash_json, record_problems, tree_record, write_json_atomic
from bench.locks import lock_if_free, locked

logger = logging.getLogger(__name__)


def run_stage(directory: Path, key: dict, work: Callable[[Path], dict]) -> dict:
    """Run `work(tmp_dir) -> stats` unless `directory` holds a finished stage with this key.

    The stage writes its files in a temporary sibling folder, renamed to `directory` with a
    ``stage.json`` record (key hash, wall time, peak memory, the stats, and the size and sha256
    of every file under ``files``). Returns the record with ``cached`` = whether it was reused.
    A stage whose record is unreadable or whose files differ from it is recomputed, with a
    warning naming the file. Temporary folders that killed stages left beside it are removed
    first; a failing stage removes its own.
    """
    from bench.provenance import PeakMemory

    digest = hash_json(key)
    _remove_stale_tmp(directory.parent)
    with locked(_stage_lock(directory.parent, directory.name)):
        record = _finished_stage(directory, digest)
        if record is not None:
            logger.info("stage %s: reusing %s", directory.name, directory)
            return {**record, "cached": True}
        tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with PeakMemory() as memory:
                t0 = time.perf_counter()
                stats = work(tmp)
                seconds = time.perf_counter() - t0
            record = {"hash": digest, "key": key, "seconds": round(seconds, 3), "memory": memory.report(), **stats,
                      "files": tree_record(tmp)}
            write_json_atomic(tmp / "stage.json", record)
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**record, "cached": False}


def _stage_lock(parent: Path, stage: str) -> Path:
    return parent / f".{stage}.lock"


def _remove_stale_tmp(parent: Path) -> None:
    """Remove the temporary folders (``.<stage>.tmp-<pid>``) of stages killed while writing.

    A stage writes its temporary folder only while holding the stage's lock, so one whose
    lock is free belongs to a process that died (kill -9, a power cut, a killed worker)."""
    for tmp in parent.glob(".*.tmp-*"):
        stage = tmp.name[1:].rsplit(".tmp-", 1)[0]
        with lock_if_free(_stage_lock(parent, stage)) as stale:
            if stale:
                logger.info("removing %s, left by an interrupted stage", tmp)
                shutil.rmtree(tmp, ignore_errors=True)


def _finished_stage(directory: Path, digest: str) -> dict | None:
    """The stage.json record of `directory` when it is this key's stage and every file it lists is
    intact (stages written before files were recorded: the record alone); else None."""
    record_path = directory / "stage.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        logger.warning("stage %s recomputed: its record %s is unreadable (%s)", directory.name, record_path, exc)
        return None
    if record.get("hash") != digest:
        return None
    problems = record_problems(directory, record.get("files") or {})
    if problems:
        logger.warning("stage %s recomputed: %s", directory.name, "; ".join(problems))
        return None
    return record
