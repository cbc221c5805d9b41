import json
import os
import threading
from pathlib import Path

import pytest

from slm.registry import LiveModel, Registry, RegistryError, VersionNotFound, parse_ref


def write_artifact(value: str):
    def write(d: Path) -> None:
        (d / "weights.txt").write_text(value)

    return write


def test_create_version_is_immutable_and_numbered(tmp_path):
    reg = Registry(tmp_path)
    v1 = reg.create_version("m", write_artifact("a"), {"metrics": {"f1": 0.5}, "config": {"x": 1}})
    v2 = reg.create_version("m", write_artifact("b"), {"metrics": {"f1": 0.6}}, parent=v1.version)
    assert (v1.version, v2.version) == ("v0001", "v0002")
    assert v2.metadata["parent"] == "v0001"
    assert v2.metadata["name"] == "m" and "created" in v2.metadata
    assert (v1.path / "weights.txt").read_text() == "a"
    assert not os.access(v1.path / "weights.txt", os.W_OK) or os.geteuid() == 0
    assert [v.version for v in reg.versions("m")] == ["v0001", "v0002"]
    assert reg.live("m") is None
    # no temp dirs left behind
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp-")]


def test_failed_write_leaves_nothing(tmp_path):
    reg = Registry(tmp_path)

    def boom(d: Path) -> None:
        (d / "partial").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reg.create_version("m", boom, {})
    assert reg.versions("m") == []
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".tmp-")]


def test_promote_and_rollback(tmp_path):
    reg = Registry(tmp_path)
    for i in range(3):
        reg.create_version("m", write_artifact(str(i)), {})
    with pytest.raises(RegistryError):
        reg.rollback("m")
    reg.promote("m", "v0001")
    reg.promote("m", "v0003")
    assert reg.live_version("m") == "v0003"
    assert reg.rollback("m").version == "v0001"
    assert reg.live_version("m") == "v0001"
    assert reg.rollback("m", "v0002").version == "v0002"
    assert reg.get("m").version == "v0002"
    with pytest.raises(VersionNotFound):
        reg.promote("m", "v0009")
    with pytest.raises(RegistryError):
        reg.promote("../etc", "v0001")
    assert reg.live_version("m") == "v0002"


def test_parse_ref_and_resolve(tmp_path):
    reg = Registry(tmp_path)
    reg.create_version("m", write_artifact("a"), {})
    reg.promote("m", "v0001")
    assert parse_ref("m@v0001") == ("m", "v0001")
    assert parse_ref("m") == ("m", None)
    assert reg.resolve("m").ref == "m@v0001"
    assert reg.resolve("m@v0001").path.name == "v0001"
    with pytest.raises(VersionNotFound):
        reg.resolve("other")


def test_promote_is_atomic_under_concurrent_readers(tmp_path):
    """Readers never see a missing, partial or unknown pointer while two threads flip it 200 times."""
    reg = Registry(tmp_path)
    versions = {reg.create_version("m", write_artifact(str(i)), {}).version for i in range(2)}
    reg.promote("m", "v0001")
    stop = threading.Event()
    bad: list[object] = []

    def reader() -> None:
        r = Registry(tmp_path)  # a separate instance, like another process
        while not stop.is_set():
            try:
                raw = (tmp_path / "m" / "LIVE.json").read_text()
                v = json.loads(raw)["version"]
                if v not in versions:
                    bad.append(v)
                mv = r.get("m")
                if (mv.path / "weights.txt").read_text() not in {"0", "1"}:
                    bad.append(mv.path)
            except Exception as exc:  # any error is a torn read
                bad.append(exc)

    def writer(n: int) -> None:
        w = Registry(tmp_path)
        for i in range(100):
            w.promote("m", "v0001" if (i + n) % 2 else "v0002")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=10)
    assert bad == []
    assert reg.live_version("m") in versions


def test_live_model_hot_swaps_and_keeps_old_on_failure(tmp_path):
    reg = Registry(tmp_path)
    reg.create_version("m", write_artifact("one"), {})
    reg.create_version("m", write_artifact("two"), {})
    reg.create_version("m", write_artifact("broken"), {})
    reg.promote("m", "v0001")
    loads: list[str] = []

    def loader(mv):
        text = (mv.path / "weights.txt").read_text()
        if text == "broken":
            raise ValueError("corrupt weights")
        loads.append(text)
        return text

    live = LiveModel(reg, "m", loader)
    assert live.get()[1] == "one"
    assert live.get()[1] == "one" and loads == ["one"]  # loaded once
    reg.promote("m", "v0002")
    assert live.get()[1] == "two"
    reg.promote("m", "v0003")
    mv, model = live.get()
    assert (mv.version, model) == ("v0002", "two")
    assert "corrupt weights" in (live.last_error or "")
    assert live.get()[1] == "two" and loads == ["one", "two"]  # does not retry the broken one every call
