from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from slm.device import pick_device, supports_dtype
from slm.loader import ModelNotAvailable, load_pretrained, resolve_source
from slm.registry import Registry


def test_hub_id_not_cached_gives_clear_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as err:
        resolve_source("some-org/definitely-not-here")
    msg = str(err.value)
    assert "some-org/definitely-not-here" in msg and "bootstrap_models" in msg and "download" in msg


def test_missing_local_dir_and_dir_without_config(tmp_path):
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_registry_source_without_live_version(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ModelNotAvailable, match="bootstrap_models"):
        resolve_source("registry:chat", registry=reg)
    with pytest.raises(ModelNotAvailable, match="no registry"):
        resolve_source("registry:chat")


def test_same_loader_for_local_dir_and_registry(tmp_path):
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    model = GPT2LMHeadModel(config)
    local = tmp_path / "local"
    model.save_pretrained(local)
    reg = Registry(tmp_path / "reg")
    reg.create_version("chat", lambda d: model.save_pretrained(d), {"family": "gpt2"})
    reg.promote("chat", "v0001")
    a = load_pretrained(GPT2LMHeadModel, str(local))
    b = load_pretrained(GPT2LMHeadModel, "registry:chat", registry=reg)
    c = load_pretrained(GPT2LMHeadModel, "registry:chat@v0001", registry=reg)
    for m in (a, b, c):
        assert m.config.n_embd == 16
    assert resolve_source("registry:chat", registry=reg).ref == "chat@v0001"
    assert list(Path(resolve_source(str(local)).path).glob("*.safetensors"))


def test_device_selection_cpu_and_explicit_unavailable():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
    cpu = torch.device("cpu")
    assert supports_dtype(cpu, torch.float32)
    assert not supports_dtype(cpu, torch.float16)
