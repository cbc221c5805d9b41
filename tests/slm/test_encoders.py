"""slm.classify.encoders: a bare encoder named as a pulled registry version (pinned), a hub id in the HF cache
or a directory resolves to what TransformerClassifier.from_encoder loads; classifiers, chat models and
missing models do not; a frozen head trains on the tiny BERT of the fake hub through that path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slm.classify.encoders import NotAnEncoder, is_encoder, resolve_encoder
from slm.hub import pull_model
from slm.loader import ModelNotAvailable
from slm.registry import Registry
from tests.chat.tiny import add_tiny_chat_version


def test_encoder_sources_resolve_and_others_are_refused(hub_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from slm.classify.testing import make_tiny_version

    reg = Registry(tmp_path / "reg")
    # not pulled yet, nor cached: nothing to resolve (and nothing is downloaded)
    with pytest.raises(ModelNotAvailable, match="pull_model"):
        resolve_encoder("bert-base-chinese", registry=reg)
    assert hub_env.fetched() == []
    pulled = pull_model("bert-base-chinese", registry=reg).version  # the first version goes live
    assert resolve_encoder("bert-base-chinese", registry=reg) == f"registry:{pulled.ref}"  # pinned
    assert resolve_encoder("registry:bert-base-chinese", registry=reg) == f"registry:{pulled.ref}"
    assert resolve_encoder(f"{pulled.ref}", registry=reg) == f"registry:{pulled.ref}"
    # the same id without the registry: the copy in the local HF cache that pull_model filled
    assert resolve_encoder("bert-base-chinese", registry=None) == "bert-base-chinese"
    assert resolve_encoder(str(pulled.path), registry=None) == str(pulled.path)  # a directory
    classifier = make_tiny_version(reg)
    with pytest.raises(NotAnEncoder, match="classifier"):
        resolve_encoder(classifier.ref, registry=reg)
    chat = add_tiny_chat_version(reg, "chat")
    with pytest.raises(NotAnEncoder, match="text-generation"):
        resolve_encoder("chat", registry=reg)
    with pytest.raises(NotAnEncoder, match="text-generation"):
        resolve_encoder(str(chat.path), registry=None)
    with pytest.raises(ModelNotAvailable):
        resolve_encoder("registry:nope", registry=reg)
    assert is_encoder("bert-base-chinese", registry=reg) and not is_encoder(classifier.ref, registry=reg)


def test_a_frozen_head_on_the_pulled_bert_classifies_and_round_trips(hub_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from slm.classify.testing import tiny_dataset
    from slm.classify.train import TrainConfig, train_transformer
    from slm.classify.transformer import TransformerClassifier

    torch.set_num_threads(1)
    reg = Registry(tmp_path / "reg")
    pull_model("bert-base-chinese", registry=reg)
    source = resolve_encoder("bert-base-chinese", registry=reg)
    texts, labels = tiny_dataset()
    model = TransformerClassifier.from_encoder(source, sorted(set(labels)), registry=reg, max_length=32)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    config = TrainConfig(mode="frozen", encoder=source, epochs=20, lr=5e-3, val_fraction=0.0, device="cpu")
    result = train_transformer(model, texts, labels, config)
    assert result.timings.get("features_s") is not None  # features were computed once and cached
    for k, v in model.encoder.state_dict().items():  # frozen: the encoder is untouched
        assert torch.equal(v, encoder_before[k]), k
    model.save(tmp_path / "clf")
    again = TransformerClassifier.load(tmp_path / "clf")
    assert again.encoder_source == source
    probs = again.predict_proba(texts[:4])
    assert probs.shape == (4, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(probs, model.predict_proba(texts[:4]), atol=1e-5)
