"""Download the official Amazon review files: resumable, verified, and honest when offline.

`download(url, dest)` streams to ``<dest>.part`` with the standard library (no `requests`),
resumes a partial ``.part`` with an HTTP ``Range`` request, checks the size and SHA-256 when
given, and renames the finished file onto `dest` atomically, so `dest` is either absent or
complete. A machine without network fails at once with one message that says where to put the
file by hand; nothing is retried for minutes.

`file_urls(release, category)` builds the official download addresses from `RELEASES`. The part
before the file name can be replaced (a mirror, a local server, a file share) through the
`base_urls` argument or, per release and part, the environment::

    BENCH_AMAZON2018_URL        reviews of the 2018 release  (<Category>_5.json.gz)
    BENCH_AMAZON2018_META_URL   metadata of the 2018 release (meta_<Category>.json.gz)
    BENCH_AMAZON2014_URL        BENCH_AMAZON2014_META_URL
    BENCH_AMAZON2023_URL        BENCH_AMAZON2023_META_URL

File names always stay the official ones, so a file fetched by hand can be dropped in place.

Every raw file is recorded, the first time `fetch_release_files` meets it (downloaded, or found in
place), in ``data/raw/checksums.json`` (size and SHA-256, `CHECKSUMS`); from then on a file that
differs from its record is an error, never used silently (`verify_recorded`). A gzip file is read
through once before it is recorded, and a 5-core review file must hold the number of reviews its
release page publishes (`n_reviews`, from the dataset registry). The release pages publish no byte
sizes or hashes, so none are built in.
"""

from __future__ import annotations

import difflib
import gzip
import http.client
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, Mapping

from tqdm import tqdm

from bench.errors import BenchError, ConfigError, DataError, UnknownNameError
from bench.io import file_record, is_gzip, sha256_file, write_json_atomic
from bench.locks import locked

logger = logging.getLogger(__name__)

# Official locations, as documented by each release page. `{category}` is the file-name
# category, e.g. "All_Beauty" (2018), "Toys_and_Games" (2014/2018), "All_Beauty" (2023).
RELEASES: dict[str, dict[str, str]] = {
    "amazon2018": {
        "reviews": "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz",
        # listed behind the release's access form; hence the configurable base URL
        # The release page links http://deepyeti.ucsd.edu/jianmo/amazon/metaFiles2/ (plain http); the
        # same files are served over https beside the reviews (and from datarepo.eng.ucsd.edu).
        "meta": "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_{category}.json.gz",
    },
    "amazon2014": {
        "reviews": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz",
        "meta": "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{category}.json.gz",
    },
    "amazon2023": {
        "reviews": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/review_categories/{category}.jsonl.gz",
        "meta": "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/meta_categories/meta_{category}.jsonl.gz",
    },
}

CHECKSUMS = "checksums.json"  # in the raw-data folder, beside the datasets' folders

_CHUNK = 1 << 16
_USER_AGENT = "pagellm-bench/0.1 (research benchmark downloader)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_CATEGORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def env_var(release: str, part: str) -> str:
    """The environment variable that overrides the base URL of one part of one release."""
    return f"BENCH_{release.upper()}_URL" if part == "reviews" else f"BENCH_{release.upper()}_{part.upper()}_URL"


def _release(release: str) -> dict[str, str]:
    if release not in RELEASES:
        close = difflib.get_close_matches(release, list(RELEASES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown Amazon release {release!r} (known: {', '.join(RELEASES)}){hint}")
    return RELEASES[release]


def file_name(release: str, category: str, part: str) -> str:
    """The official file name of one part, e.g. ``file_name("amazon2018", "All_Beauty", "reviews")
    == "All_Beauty_5.json.gz"``."""
    templates = _release(release)
    if part not in templates:
        raise ConfigError(f"release {release!r} has no part {part!r} (parts: {', '.join(templates)})")
    if not _CATEGORY.match(category):
        raise ConfigError(f"bad category {category!r}: use the file-name form, e.g. 'Toys_and_Games'")
    return templates[part].rsplit("/", 1)[1].format(category=category)


def file_urls(release: str, category: str, base_urls: Mapping[str, str] | None = None) -> dict[str, str]:
    """Download URL of each part (``"reviews"``, ``"meta"``) of one category of one release.

    Args:
        release: a key of `RELEASES` ("amazon2018", "amazon2014", "amazon2023").
        category: the file-name category, e.g. "All_Beauty".
        base_urls: optional ``{part: base}``; `base` replaces everything before the file name
            (e.g. ``{"meta": "http://mirror.local/amazon/"}``). Takes precedence over the
            environment variables (see `env_var`), which take precedence over `RELEASES`.

    Returns:
        ``{part: url}`` with the official file names.
    """
    templates = _release(release)
    base_urls = dict(base_urls or {})
    unknown = sorted(set(base_urls) - set(templates))
    if unknown:
        raise ConfigError(f"base_urls for {release!r} has unknown part(s) {unknown} (parts: {', '.join(templates)})")
    urls: dict[str, str] = {}
    for part, template in templates.items():
        name = file_name(release, category, part)
        base = base_urls.get(part) or os.environ.get(env_var(release, part), "").strip()
        urls[part] = f"{base.rstrip('/')}/{name}" if base else template.format(category=category)
    return urls


def _manual_hint(url: str, dest: Path) -> str:
    return f"download it yourself from {url} and place it at {dest}"


def _offline_error(url: str, dest: Path, reason: object) -> BenchError:
    return BenchError(f"could not download {url}: {reason}. If this machine is offline or the server "
                      f"refuses, {_manual_hint(url, dest)}")


def _matches(path: Path, size: int | None, sha256: str | None) -> tuple[bool, str]:
    """Whether `path` has the expected size and hash; else an 'expected vs got' text with a
    ``{url}`` placeholder."""
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        return False, f"size mismatch for {{url}}: expected {size} bytes, got {got_size}"
    if sha256 is not None:
        got = sha256_file(path)
        if got.lower() != sha256.lower():
            return False, f"sha256 mismatch for {{url}}: expected {sha256.lower()}, got {got}"
    return True, ""


def _open(url: str, offset: int, timeout: float, dest: Path) -> http.client.HTTPResponse | int:
    """One request; the response, or the total size the server reports for a 416 answer."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range not satisfiable: the .part may already hold the whole file.
            match = re.match(r"bytes\s+\*/(\d+)", err.headers.get("Content-Range", "") or "")
            err.close()
            return int(match.group(1)) if match else -1
        raise _offline_error(url, dest, f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _offline_error(url, dest, err.reason) from None
    except (OSError, http.client.HTTPException, ValueError) as err:  # socket.timeout is an OSError
        raise _offline_error(url, dest, err or type(err).__name__) from None


def download(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None,
             timeout: float = 30.0, progress: bool = True) -> Path:
    """Download `url` to `dest` (resumable, verified, atomic) and return `dest`.

    Args:
        url: http(s) or file URL.
        dest: final path; the bytes go to ``<dest>.part`` first and are renamed when complete.
        sha256: expected hex digest, checked when given.
        size: expected size in bytes, checked when given (and early, against the server's size).
        timeout: seconds for connecting and for each read; there is exactly one attempt.
        progress: show a tqdm bar (only on a terminal).

    An existing `dest` with the expected size/hash (or any existing `dest` when neither is
    given) is returned without a request. A partial ``.part`` is resumed with a Range request
    (appended on 206, restarted on 200).

    Raises:
        BenchError: no connection, DNS failure, timeout, HTTP error, or an interrupted transfer
            (the ``.part`` is kept so that a rerun resumes); the message names the URL and
            says where to place a hand-downloaded file.
        DataError: the finished file has the wrong size or SHA-256 (the ``.part`` is deleted).
    """
    dest = Path(dest)
    if dest.exists():
        ok, why = _matches(dest, size, sha256)
        if ok:
            logger.info("%s is present; not downloading again", dest)
            return dest
        logger.warning("%s exists but has a %s; downloading it again", dest, why.format(url=url))
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0

    response = _open(url, offset, timeout, dest) if size is None or offset < size else size
    if isinstance(response, int):  # 416, or a .part already of the expected size
        if response != offset:
            logger.warning("%s does not match the server's file; starting %s again from zero", part, url)
            part.unlink(missing_ok=True)
            offset = 0
            response = _open(url, 0, timeout, dest)
    if not isinstance(response, int):
        _stream(response, url, dest, part, offset, size, progress)

    ok, why = _matches(part, size, sha256)
    if not ok:
        part.unlink(missing_ok=True)
        raise DataError(why.format(url=url), dest,
                        fix=f"run again to download it afresh, or {_manual_hint(url, dest)}")
    os.replace(part, dest)
    logger.info("downloaded %s -> %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _stream(response: http.client.HTTPResponse, url: str, dest: Path, part: Path, offset: int,
            size: int | None, progress: bool) -> None:
    """Write the body of `response` to `part`, appending when the server honoured the Range."""
    with response:
        status = getattr(response, "status", 200) or 200
        total: int | None = None
        mode = "wb"
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", "") or "")
            if match and int(match.group(1)) == offset:
                mode = "ab"
                total = int(match.group(3)) if match.group(3) != "*" else None
                logger.info("resuming %s at byte %d", url, offset)
        if mode == "wb":
            if offset:
                logger.info("%s does not resume (HTTP %s); starting again from zero", url, status)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise DataError(f"size mismatch for {url}: expected {size} bytes, the server has {total}", dest,
                            fix=f"check the URL, or {_manual_hint(url, dest)}")
        show = progress and sys.stderr.isatty()
        done = offset
        with open(part, mode) as fh, tqdm(total=total or size, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=dest.name, disable=not show,
                                          leave=False) as bar:
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
                fh.flush()
                raise BenchError(
                    f"the download of {url} stopped at byte {done}"
                    f"{f' of {total}' if total else ''} ({type(err).__name__}: {err}); run the same "
                    f"command again to resume, or {_manual_hint(url, dest)}") from None
    if total is not None and done != total:
        raise BenchError(f"the download of {url} stopped at byte {done} of {total}; run the same command "
                         f"again to resume, or {_manual_hint(url, dest)}")


def fetch_release_files(release: str, category: str, raw_dir: Path, *,
                        base_urls: Mapping[str, str] | None = None,
                        parts: Iterable[str] = ("reviews", "meta"), progress: bool = True,
                        force: bool = False, n_reviews: int | None = None) -> list[Path]:
    """Download the given parts of one category of one release into `raw_dir` (``<root>/data/raw/<dataset>``).

    A file already present under its official name is not downloaded again (so a file fetched by
    hand and placed there is used) but checked: against its checksum record when it has one, else
    read through and recorded; `n_reviews`, when given, is the published number of reviews (lines)
    of the reviews file. `force` deletes present files and downloads them again. Returns the paths,
    in `parts` order.
    """
    urls = file_urls(release, category, base_urls)
    raw_dir = Path(raw_dir)
    paths: list[Path] = []
    for part in parts:
        if part not in urls:
            raise ConfigError(f"release {release!r} has no part {part!r} (parts: {', '.join(urls)})")
        dest = raw_dir / file_name(release, category, part)
        if force:
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        if dest.exists() and _record_of(dest) is not None:
            verify_recorded([dest])
            paths.append(dest)
            continue
        found = dest.exists()
        download(urls[part], dest, progress=progress)
        _check_complete(dest, n_reviews if part == "reviews" else None, found)
        _record(dest, urls[part] if not found else None)
        paths.append(dest)
    return paths


def verify_recorded(paths: Iterable[Path]) -> None:
    """Check each raw file that has a checksum record against it (files without one pass).

    Raises DataError naming the file, what differs, and the command that downloads it again."""
    for path in map(Path, paths):
        record = _record_of(path)
        if record is None:
            continue
        size = path.stat().st_size
        if size != record["bytes"] or sha256_file(path) != record["sha256"]:
            got = f"{size} bytes" if size != record["bytes"] else "other content (sha256)"
            raise DataError(f"differs from the file recorded in {path.parent.parent / CHECKSUMS}: "
                            f"{record['bytes']} bytes, sha256 {record['sha256'][:12]}..., found {got}", path,
                            fix=f"download it again with `bench data download --datasets {path.parent.name} --force`; "
                                "to keep this file instead, delete its entry from the checksums file")


def _checksums_path(path: Path) -> Path:
    return path.parent.parent / CHECKSUMS


def _record_key(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _record_of(path: Path) -> dict | None:
    """The checksum record of the raw file `path` (``<raw>/<dataset>/<file>``), or None."""
    checksums = _checksums_path(path)
    if not checksums.exists():
        return None
    try:
        records = json.loads(checksums.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable checksums file ({exc})", checksums,
                        fix="delete it; the files are checked and recorded again on the next download") from None
    record = records.get(_record_key(path)) if isinstance(records, dict) else None
    return record if isinstance(record, dict) and {"bytes", "sha256"} <= set(record) else None


def _record(path: Path, url: str | None) -> None:
    """Add `path`'s size and sha256 to the checksums file (under a lock: downloads may run at once)."""
    checksums = _checksums_path(path)
    entry = {**file_record(path), "source": url or "found in place",
             "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with locked(checksums.with_name(f".{CHECKSUMS}.lock")):
        records = json.loads(checksums.read_text()) if checksums.exists() else {}
        records[_record_key(path)] = entry
        write_json_atomic(checksums, dict(sorted(records.items())))


def _check_complete(path: Path, published: int | None, found: bool) -> None:
    """A gzip file must read through to its end, and hold `published` lines (reviews) when known;
    else the file is deleted when it was just downloaded, and a DataError names it. (A plain text
    file under a .gz name is readable, gzip being detected by its magic bytes: not checked.)"""
    if not is_gzip(path):
        return
    lines = 0
    problem = None
    try:
        with gzip.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK * 16), b""):
                lines += block.count(b"\n")
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        problem = f"truncated or corrupt gzip file ({type(exc).__name__}: {exc})"
    if problem is None and published is not None and lines != published:
        problem = f"holds {lines} reviews; the release page publishes {published}"
    if problem is None:
        return
    if not found:
        path.unlink(missing_ok=True)
    raise DataError(problem, path, fix=f"download it again with `bench data download --datasets {path.parent.name} "
                                       "--force`, or place a complete copy there")
