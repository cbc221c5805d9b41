"""slm.hub against the fake hub (tests/fakehub.py): pinned pulls into the registry with provenance,
safetensors only, offline messages, datasets, and the loader's SLM_ALLOW_DOWNLOAD path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from slm.hub import HubError, HubOffline, default_name, load_pulled_dataset, model_files, pull_dataset, pull_model
from slm.loader import ModelNotAvailable, resolve_source
from slm.registry import Registry
from tests.fakehub import closed_port_url

GPT2 = "fake-org/tiny-gpt2"
UER = "uer/gpt2-chinese-cluecorpussmall"


def test_pull_pins_revision_records_provenance_and_versions_like_any_other(hub_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "reg")
    repo = hub_env.repo(GPT2)
    first = pull_model(GPT2, registry=reg, revision="v1")
    assert first.created and first.promoted and first.version.ref == "tiny-gpt2@v0001"
    src = first.version.metadata["source"]
    assert src["repo"] == GPT2 and src["revision"] == "v1" and src["commit"] == repo.refs["v1"]
    assert src["license"] == "mit" and src["endpoint"] == hub_env.url
    meta = first.version.metadata
    assert meta["family"] == "gpt2" and meta["task"] == "text-generation" and meta["tokenizer"] == "bpe"
    files = sorted(p.name for p in first.version.path.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files and "README.md" in files
    assert not [f for f in files if f.endswith((".bin", ".msgpack", ".onnx", ".h5"))]
    assert not hub_env.fetched(".msgpack") and not hub_env.fetched(".onnx")
    # every file was fetched at the resolved commit, never at a moving branch name
    assert all(f"/resolve/{repo.refs['v1']}/" in p for p in hub_env.fetched())

    second = pull_model(GPT2, registry=reg)  # main moved on: a new version, not live until promoted
    assert second.created and not second.promoted and second.version.version == "v0002"
    assert second.version.metadata["source"]["commit"] == repo.refs["main"] != repo.refs["v1"]
    w1 = load_file(first.version.path / "model.safetensors")
    w2 = load_file(second.version.path / "model.safetensors")
    assert not torch.equal(w1["transformer.wte.weight"], w2["transformer.wte.weight"])
    assert reg.live_version("tiny-gpt2") == "v0001"
    reg.promote("tiny-gpt2", "v0002")
    assert resolve_source("registry:tiny-gpt2", registry=reg).ref == "tiny-gpt2@v0002"
    reg.rollback("tiny-gpt2")
    assert reg.live_version("tiny-gpt2") == "v0001"

    again = pull_model(GPT2, registry=reg, revision="v1")  # same repo@commit: no duplicate version
    assert not again.created and again.version.version == "v0001" and len(reg.versions("tiny-gpt2")) == 2


def test_pickled_weights_become_safetensors_and_bert_tokenizer_lm_gets_cls_sep(hub_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reg = Registry(tmp_path / "reg")
    pulled = pull_model(UER, registry=reg, name="chat")
    mv = pulled.version
    assert mv.ref == "chat@v0001" and pulled.promoted
    assert mv.metadata["source"]["license"] is None  # the card names none: unknown, not invented
    assert mv.metadata["tokenizer"] == "wordpiece" and mv.metadata["converted_with"] == "GPT2LMHeadModel"
    names = {p.name for p in mv.path.iterdir()}
    assert "model.safetensors" in names and "vocab.txt" in names
    assert "pytorch_model.bin" not in names and "tf_model.h5" not in names
    assert not hub_env.fetched(".h5")
    # the pickle's tensors survive the conversion exactly
    pickled = torch.load(Path(resolve_source(UER).path) / "pytorch_model.bin", weights_only=True)
    converted = load_file(mv.path / "model.safetensors")
    assert torch.equal(pickled["transformer.wte.weight"], converted["transformer.wte.weight"])
    tok = AutoTokenizer.from_pretrained(mv.path)
    model = AutoModelForCausalLM.from_pretrained(mv.path)
    assert model.generation_config.eos_token_id == tok.sep_token_id == 3
    assert model.generation_config.bos_token_id == tok.cls_token_id
    assert any("eos_token_id 50256" in n for n in mv.metadata["pull_notes"])


def test_encoder_pull_and_name_rules(hub_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "reg")
    mv = pull_model("bert-base-chinese", registry=reg, promote=False).version
    assert mv.name == "bert-base-chinese" and reg.live_version("bert-base-chinese") is None
    assert mv.metadata["task"] == "encoder" and mv.metadata["family"] == "bert"
    assert mv.metadata["source"]["license"] == "apache-2.0"
    assert default_name("uer/gpt2-chinese-cluecorpussmall") == "gpt2-chinese-cluecorpussmall"
    assert model_files(["config.json", "pytorch_model.bin", "tf_model.h5", "onnx/model.onnx"]) == (
        ["config.json", "pytorch_model.bin"],
        True,
    )


def test_unknown_repo_revision_and_offline_say_what_to_do(hub_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    reg = Registry(tmp_path / "reg")
    with pytest.raises(HubError, match="no model 'fake-org/nope'"):
        pull_model("fake-org/nope", registry=reg)
    with pytest.raises(HubError, match="no revision 'v9'"):
        pull_model(GPT2, registry=reg, revision="v9")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(HubOffline) as err:
        pull_model(GPT2, registry=reg)
    msg = str(err.value)
    assert "offline" in msg and "pull_model fake-org/tiny-gpt2" in msg and "SLM_REGISTRY_DIR" in msg
    assert reg.names() == [] or reg.versions("tiny-gpt2") == []


def test_offline_pull_registers_a_cached_snapshot(hub_env, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pull_model(GPT2, registry=Registry(tmp_path / "a"))  # fills the HF cache (as if copied from elsewhere)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    offline = pull_model(GPT2, registry=Registry(tmp_path / "b"))
    assert offline.created and "unreachable" in offline.notes[0]
    assert offline.version.metadata["source"]["commit"] == hub_env.repo(GPT2).refs["main"]


def test_pull_dataset_pins_commit_and_loads_offline(hub_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    pulled = pull_dataset("fake-org/tiny-reviews", root=root)
    prov = pulled.provenance
    assert pulled.created and prov["commit"] == hub_env.repo("fake-org/tiny-reviews", "dataset").refs["main"]
    assert prov["license"] == "cc-by-4.0" and prov["splits"] == {"train": 4, "test": 2}
    assert prov["columns"]["train"] == ["text", "label"]
    assert json.loads((pulled.path / "provenance.json").read_text())["commit"] == prov["commit"]
    assert not [p for p in hub_env.fetched() if p.endswith(".py")]  # dataset scripts are never fetched
    ds = load_pulled_dataset(root, "fake-org/tiny-reviews")
    assert ds["test"][0] == {"text": "非常喜欢", "label": "positive"}
    hub_env.clear_log()
    assert not pull_dataset("fake-org/tiny-reviews", root=root).created and not hub_env.fetched()
    with pytest.raises(HubError, match="pull_dataset other/set"):
        load_pulled_dataset(root, "other/set")


def test_loader_downloads_hub_ids_only_when_allowed(hub_env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    monkeypatch.delenv("SLM_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotAvailable, match="pull_model fake-org/tiny-gpt2"):
        resolve_source(GPT2)
    assert not hub_env.requests
    monkeypatch.setenv("SLM_ALLOW_DOWNLOAD", "1")
    src = resolve_source(GPT2)
    assert src.kind == "hub" and src.path is not None and src.metadata["source"]["commit"]
    # what the engine does: load from the directory without touching the network
    assert AutoModelForCausalLM.from_pretrained(src.path, local_files_only=True).config.n_layer == 2
    monkeypatch.delenv("SLM_ALLOW_DOWNLOAD")
    assert resolve_source(GPT2).path == src.path  # cached now
