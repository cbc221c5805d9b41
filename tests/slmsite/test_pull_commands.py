"""`manage.py pull_model` / `pull_dataset` against the fake hub: in-process for the messages, and once as a
real process configured only through the environment (HF_ENDPOINT, HF_HOME, SLM_VAR_DIR)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from slm.registry import Registry
from tests.fakehub import closed_port_url
from tests.slmsite.test_settings import run_manage


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_pull_model_command_reports_pin_license_and_next_step(hub_env, registry) -> None:  # type: ignore[no-untyped-def]
    commit_v1 = hub_env.repo("fake-org/tiny-gpt2").refs["v1"]
    out = run("pull_model", "fake-org/tiny-gpt2", "--revision", "v1")
    assert f"pulled fake-org/tiny-gpt2 @ v1 (commit {commit_v1}) -> tiny-gpt2@v0001 (live)" in out
    assert "license: mit" in out and "CHAT_MODEL=registry:tiny-gpt2" in out
    out = run("pull_model", "fake-org/tiny-gpt2", "--revision", "v1")
    assert "already registered" in out and len(registry.versions("tiny-gpt2")) == 1
    out = run("pull_model", "uer/gpt2-chinese-cluecorpussmall", "--as", "chat", "--no-promote")
    assert "-> chat@v0001 (not live; live is none)" in out and "license: unknown" in out
    assert "make it live: python manage.py promote chat v0001" in out and "stored as safetensors" in out
    assert registry.live_version("chat") is None
    listing = run("list_models")
    assert "* v0001" in listing and f"from fake-org/tiny-gpt2@{commit_v1[:12]}" in listing


def test_pull_commands_offline_and_unknown_are_command_errors(hub_env, registry, settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommandError, match="no model 'nobody/nothing'"):
        run("pull_model", "nobody/nothing")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(CommandError, match="looks offline"):
        run("pull_model", "fake-org/tiny-gpt2")
    settings.SLM_DATA_CACHE_DIR = registry.root.parent / "data"
    with pytest.raises(CommandError, match="pull_dataset fake-org/tiny-reviews"):
        run("pull_dataset", "fake-org/tiny-reviews")


def test_pull_dataset_command(hub_env, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings.SLM_DATA_CACHE_DIR = tmp_path / "data"
    out = run("pull_dataset", "fake-org/tiny-reviews")
    commit = hub_env.repo("fake-org/tiny-reviews", "dataset").refs["main"]
    assert f"pulled dataset fake-org/tiny-reviews @ main (commit {commit})" in out
    assert "license: cc-by-4.0" in out and "train: 4 rows (text, label)" in out and "test: 2 rows" in out
    assert (tmp_path / "data" / "hub" / "fake-org--tiny-reviews" / commit / "data").is_dir()


def test_pull_model_as_a_process_through_hf_endpoint(fake_hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = run_manage(
        ["pull_model", "uer/gpt2-chinese-cluecorpussmall", "--as", "chat"],
        {
            "HF_ENDPOINT": fake_hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "SLM_VAR_DIR": str(tmp_path / "var"),
            "DJANGO_SETTINGS_MODULE": "slmsite.settings.dev",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        },
        drop=("HF_HUB_CACHE", "SLM_REGISTRY_DIR"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-> chat@v0001 (live)" in proc.stdout
    mv = Registry(tmp_path / "var" / "registry").get("chat")
    assert mv.metadata["source"]["endpoint"] == fake_hub.url and mv.metadata["tokenizer"] == "wordpiece"
    assert (tmp_path / "hf" / "hub" / "models--uer--gpt2-chinese-cluecorpussmall").is_dir()
