"""The resumable downloader, against a local HTTP server on 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from bench.data import download as dl
from bench.data.download import RELEASES, download, fetch_release_files, file_urls
from bench.errors import BenchError, ConfigError, DataError, UnknownNameError

PAYLOAD = os.urandom(300_000)  # several read chunks, so resume and truncation are real


class _Server:
    """A tiny static server: `files` maps URL path -> bytes; it records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.ignore_range = False  # answer 200 with the whole file even to a Range request
        self.truncate_at: int | None = None  # announce the full length, send this many bytes, hang up
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.truncate_at is not None:
                    self.wfile.write(chunk[: server.truncate_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # a developer's proxy settings must not route 127.0.0.1 elsewhere
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for release in RELEASES:
        for part in RELEASES[release]:
            monkeypatch.delenv(dl.env_var(release, part), raising=False)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    srv.files["/data/Toy_5.json.gz"] = PAYLOAD
    yield srv
    srv.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_full_download_is_atomic(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "Toy_5.json.gz"
    out = download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False,
                   size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert os.listdir(dest.parent) == ["Toy_5.json.gz"]  # no .part left
    assert server.requests == [("/data/Toy_5.json.gz", None)]


def test_resume_from_partial_part(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "Toy_5.json.gz"
    part = tmp_path / "Toy_5.json.gz.part"
    part.write_bytes(PAYLOAD[:123_456])
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False,
             sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert server.requests == [("/data/Toy_5.json.gz", "bytes=123456-")]
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()


def test_server_without_range_support_restarts_from_zero(server: _Server, tmp_path: Path) -> None:
    server.ignore_range = True
    dest = tmp_path / "Toy_5.json.gz"
    (tmp_path / "Toy_5.json.gz.part").write_bytes(b"garbage that must not be kept")
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False)
    assert server.requests[0][1] == "bytes=29-"
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_body(server: _Server, tmp_path: Path) -> None:
    # the .part already holds every byte: the server answers 416 and the file is renamed
    dest = tmp_path / "Toy_5.json.gz"
    (tmp_path / "Toy_5.json.gz.part").write_bytes(PAYLOAD)
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data/Toy_5.json.gz", f"bytes={len(PAYLOAD)}-")]


def test_interrupted_transfer_keeps_part_and_resumes(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "Toy_5.json.gz"
    server.truncate_at = 100_000
    with pytest.raises(BenchError, match="run the same command again to resume"):
        download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False, timeout=5)
    part = tmp_path / "Toy_5.json.gz.part"
    assert not dest.exists()
    assert part.read_bytes() == PAYLOAD[:100_000]
    server.truncate_at = None
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False)
    assert server.requests[-1][1] == "bytes=100000-"
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_raises_data_error(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "Toy_5.json.gz"
    url = f"{server.url}/data/Toy_5.json.gz"
    with pytest.raises(DataError) as info:
        download(url, dest, progress=False, sha256="0" * 64)
    message = str(info.value)
    assert url in message and "0" * 64 in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert not dest.exists()
    assert not (tmp_path / "Toy_5.json.gz.part").exists()


def test_size_mismatch_raises_data_error(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "Toy_5.json.gz"
    with pytest.raises(DataError, match=f"expected 10 bytes.*{len(PAYLOAD)}"):
        download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False, size=10)
    assert os.listdir(tmp_path) == []


def test_404_names_url_and_manual_placement(server: _Server, tmp_path: Path) -> None:
    url = f"{server.url}/data/Missing_5.json.gz"
    dest = tmp_path / "Missing_5.json.gz"
    with pytest.raises(BenchError) as info:
        download(url, dest, progress=False)
    assert "404" in str(info.value)
    assert f"download it yourself from {url} and place it at {dest}" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_connection_refused_fails_fast(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/Toy_5.json.gz"
    dest = tmp_path / "Toy_5.json.gz"
    start = time.perf_counter()
    with pytest.raises(BenchError) as info:
        download(url, dest, progress=False)
    assert time.perf_counter() - start < 3.0
    assert f"download it yourself from {url} and place it at {dest}" in str(info.value)


def test_dns_failure_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    url = "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/All_Beauty_5.json.gz"
    with pytest.raises(BenchError, match="name resolution.*download it yourself from"):
        download(url, tmp_path / "All_Beauty_5.json.gz", progress=False)


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as sock:  # accepts connections (backlog) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/Toy_5.json.gz"
        start = time.perf_counter()
        with pytest.raises(BenchError, match="download it yourself from"):
            download(url, tmp_path / "Toy_5.json.gz", progress=False, timeout=0.5)
        assert time.perf_counter() - start < 3.0


def test_existing_complete_file_is_not_downloaded_again(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "Toy_5.json.gz"
    dest.write_bytes(PAYLOAD)
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False,
             size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False)  # no checks: present is enough
    assert server.requests == []
    # a wrong existing file is replaced
    dest.write_bytes(b"stale")
    download(f"{server.url}/data/Toy_5.json.gz", dest, progress=False, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_file_urls_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = file_urls("amazon2018", "All_Beauty")
    assert urls == {
        "reviews": "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/All_Beauty_5.json.gz",
        "meta": "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_All_Beauty.json.gz",
    }
    assert all(url.startswith("https://") for release in RELEASES for url in file_urls(release, "X").values())
    assert file_urls("amazon2014", "Toys_and_Games")["reviews"].endswith("/reviews_Toys_and_Games_5.json.gz")
    assert file_urls("amazon2014", "Toys_and_Games")["meta"].endswith("/meta_Toys_and_Games.json.gz")
    assert file_urls("amazon2023", "All_Beauty")["reviews"].endswith("/review_categories/All_Beauty.jsonl.gz")
    assert file_urls("amazon2023", "All_Beauty")["meta"].endswith("/meta_categories/meta_All_Beauty.jsonl.gz")

    over = file_urls("amazon2018", "All_Beauty", {"meta": "http://mirror.local/amazon/"})
    assert over["meta"] == "http://mirror.local/amazon/meta_All_Beauty.json.gz"
    assert over["reviews"] == urls["reviews"]

    monkeypatch.setenv("BENCH_AMAZON2018_URL", "http://env.local/r")
    monkeypatch.setenv("BENCH_AMAZON2018_META_URL", "http://env.local/m/")
    env = file_urls("amazon2018", "All_Beauty")
    assert env == {"reviews": "http://env.local/r/All_Beauty_5.json.gz",
                   "meta": "http://env.local/m/meta_All_Beauty.json.gz"}
    # an explicit argument (from the config) beats the environment
    assert file_urls("amazon2018", "All_Beauty", {"reviews": "http://cfg.local"})["reviews"] == \
        "http://cfg.local/All_Beauty_5.json.gz"


def test_file_urls_errors() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'amazon2018'"):
        file_urls("amazon2019", "All_Beauty")
    with pytest.raises(ConfigError, match="unknown part"):
        file_urls("amazon2018", "All_Beauty", {"ratings": "http://x"})
    with pytest.raises(ConfigError, match="bad category"):
        file_urls("amazon2018", "../etc", None)


def test_fetch_release_files(server: _Server, tmp_path: Path) -> None:
    server.files["/r/All_Beauty_5.json.gz"] = b"reviews"
    server.files["/m/meta_All_Beauty.json.gz"] = b"meta"
    raw = tmp_path / "raw"
    bases = {"reviews": f"{server.url}/r", "meta": f"{server.url}/m"}
    paths = fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False)
    assert paths == [raw / "All_Beauty_5.json.gz", raw / "meta_All_Beauty.json.gz"]
    assert [p.read_bytes() for p in paths] == [b"reviews", b"meta"]
    n = len(server.requests)
    # present files are skipped; parts can be restricted
    assert fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False,
                               parts=("reviews",)) == [raw / "All_Beauty_5.json.gz"]
    assert len(server.requests) == n
    with pytest.raises(ConfigError):
        fetch_release_files("amazon2018", "All_Beauty", raw, parts=("ratings",), progress=False)


# --- checksums: recorded on first download, verified on reuse ---------------------------------

def _reviews(n: int) -> bytes:
    return gzip.compress(b"".join(b'{"reviewerID": "U%d", "asin": "I1", "overall": 5.0, "unixReviewTime": 1}\n' % u
                                  for u in range(n)))


@pytest.fixture
def release(server: _Server, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A dataset folder <root>/data/raw/beauty and the base URLs of a served 2018 All_Beauty."""
    server.files["/r/All_Beauty_5.json.gz"] = _reviews(5)
    server.files["/m/meta_All_Beauty.json.gz"] = gzip.compress(b'{"asin": "I1", "title": "t"}\n')
    return tmp_path / "data" / "raw" / "beauty", {"reviews": f"{server.url}/r", "meta": f"{server.url}/m"}


def test_first_download_records_size_and_sha256(release, server: _Server) -> None:
    raw, bases = release
    paths = fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False, n_reviews=5)
    records = json.loads((raw.parent / "checksums.json").read_text())
    assert set(records) == {"beauty/All_Beauty_5.json.gz", "beauty/meta_All_Beauty.json.gz"}
    for path in paths:
        entry = records[f"beauty/{path.name}"]
        assert entry["bytes"] == path.stat().st_size and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert records["beauty/All_Beauty_5.json.gz"]["source"] == f"{server.url}/r/All_Beauty_5.json.gz"


def test_changed_file_is_an_error_on_reuse_and_force_downloads_again(release, server: _Server) -> None:
    raw, bases = release
    fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False)
    reviews = raw / "All_Beauty_5.json.gz"
    good = reviews.read_bytes()
    reviews.write_bytes(good[:-10])
    n = len(server.requests)
    with pytest.raises(DataError) as info:
        fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False)
    message = str(info.value)
    assert str(reviews) in message and f"{len(good)} bytes" in message and f"found {len(good) - 10} bytes" in message
    assert "bench data download --datasets beauty --force" in message
    with pytest.raises(DataError, match="differs from the file recorded"):
        dl.verify_recorded([reviews])  # what every read of the dataset's raw files does first
    assert len(server.requests) == n  # nothing downloaded
    fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False, force=True)
    assert reviews.read_bytes() == good
    dl.verify_recorded([reviews])


def test_file_found_in_place_is_read_through_then_recorded(release, server: _Server) -> None:
    raw, bases = release
    raw.mkdir(parents=True)
    reviews = raw / "All_Beauty_5.json.gz"
    reviews.write_bytes(_reviews(5)[:-12])  # a cut-off copy placed by hand
    with pytest.raises(DataError, match="truncated or corrupt gzip.*--datasets beauty --force"):
        fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False, parts=("reviews",))
    assert reviews.exists()  # the user's file is not deleted
    reviews.write_bytes(_reviews(5))
    fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False, parts=("reviews",))
    assert server.requests == []
    assert json.loads((raw.parent / "checksums.json").read_text())["beauty/All_Beauty_5.json.gz"]["source"] == \
        "found in place"


def test_published_review_count_is_checked(release) -> None:
    raw, bases = release
    with pytest.raises(DataError, match="holds 5 reviews; the release page publishes 6"):
        fetch_release_files("amazon2018", "All_Beauty", raw, base_urls=bases, progress=False, n_reviews=6)
    assert not (raw / "All_Beauty_5.json.gz").exists() and not (raw.parent / "checksums.json").exists()


def test_cli_download_verify_and_force(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.cli import main

    server.files["/All_Beauty_5.json.gz"] = _reviews(5269)  # am-beauty: 5,269 published reviews
    server.files["/meta_All_Beauty.json.gz"] = gzip.compress(b'{"asin": "I1", "title": "t"}\n')
    argv = ["--root", str(tmp_path), "data", "download", "--datasets", "am-beauty", "--base-url", server.url]
    assert main(argv) == 0
    reviews = tmp_path / "data" / "raw" / "am-beauty" / "All_Beauty_5.json.gz"
    reviews.write_bytes(reviews.read_bytes()[:-5])
    capsys.readouterr()
    assert main(argv) == 2
    assert "bench data download --datasets am-beauty --force" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "data", "prepare", "--dataset", "am-beauty"]) == 2
    assert "differs from the file recorded" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0
    assert main(["--root", str(tmp_path), "data", "prepare", "--dataset", "am-beauty"]) == 0
