"""Shared fixtures: users with roles, an isolated registry, and the live stack for browser tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slm.registry import Registry


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
    # Browser tests last: Playwright's session-wide event loop must not be running under other tests.
    items.sort(key=lambda item: "e2e" in item.keywords)


@pytest.fixture
def registry(tmp_path: Path, settings) -> Registry:  # type: ignore[no-untyped-def]
    """A fresh registry in a temp dir, also configured as the Django registry."""
    root = tmp_path / "registry"
    settings.SLM_REGISTRY_DIR = root
    return Registry(root)


@pytest.fixture
def password() -> str:
    return "pw-for-tests-123"


@pytest.fixture
def admin_user(db, password):  # type: ignore[no-untyped-def]
    from slmsite.services import user_create

    return user_create(username="boss", password=password, admin=True)


@pytest.fixture
def annotator_user(db, password):  # type: ignore[no-untyped-def]
    from slmsite.services import user_create

    return user_create(username="ann", password=password, annotator=True)


@pytest.fixture
def plain_user(db, password):  # type: ignore[no-untyped-def]
    from slmsite.services import user_create

    return user_create(username="plain", password=password)


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(os.environ.get("SLM_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def fake_hub():  # type: ignore[no-untyped-def]
    """A fake Hugging Face hub on 127.0.0.1 (tests/fakehub.py) serving tiny models and a dataset."""
    from tests.fakehub import start_fake_hub

    hub, work = start_fake_hub()
    yield hub
    hub.stop()
    work.cleanup()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """HF_ENDPOINT pointed at the fake hub and a private, empty HF cache for this test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    fake_hub.clear_log()
    return fake_hub
