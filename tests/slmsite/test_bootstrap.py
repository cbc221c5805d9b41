import os
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from slmsite import bootstrap


@pytest.fixture
def fake_builder(monkeypatch):
    calls: list[int] = []

    def build(registry, progress):
        progress("training", 0.5)
        mv = registry.create_version("fake", lambda d: (d / "w").write_text("x"), {"metrics": {"acc": 1.0}})
        registry.promote("fake", mv.version)
        calls.append(1)

    monkeypatch.setattr(bootstrap, "_BUILDERS", {})
    monkeypatch.setattr(bootstrap, "autodiscover_modules", lambda name: None)
    bootstrap.register(bootstrap.Builder(name="fake", model_name="fake", build=build))
    return calls


def test_bootstrap_is_idempotent(fake_builder, registry, capsys):
    call_command("bootstrap_models")
    assert registry.live_version("fake") == "v0001"
    call_command("bootstrap_models")
    assert len(fake_builder) == 1
    assert "skipping" in capsys.readouterr().out
    call_command("bootstrap_models", "fake", "--force")
    assert len(fake_builder) == 2 and registry.live_version("fake") == "v0002"


def test_bootstrap_unknown_builder(fake_builder, registry):
    with pytest.raises(CommandError, match="unknown builder"):
        call_command("bootstrap_models", "nope")


def test_promote_rollback_commands(registry, capsys):
    for _ in range(2):
        registry.create_version("m", lambda d: (d / "w").write_text("x"), {})
    call_command("promote", "m", "v0001")
    call_command("promote", "m", "v0002")
    call_command("rollback", "m")
    assert registry.live_version("m") == "v0001"
    with pytest.raises(CommandError):
        call_command("promote", "m", "v0042")
    call_command("list_models")
    assert "* v0001" in capsys.readouterr().out


@pytest.fixture
def two_builders(monkeypatch, registry):  # type: ignore[no-untyped-def]
    """ "slow" reports progress and records what the status said meanwhile; "broken" fails."""
    seen: list[dict] = []

    def slow(reg, progress):  # type: ignore[no-untyped-def]
        progress("epoch 1", 0.25)
        progress("epoch 2", 0.5)
        seen.append(bootstrap.building(reg, "slow"))
        mv = reg.create_version("slow", lambda d: (d / "w").write_text("x"), {})
        reg.promote("slow", mv.version)

    def broken(reg, progress):  # type: ignore[no-untyped-def]
        progress("starting", 0.1)
        raise RuntimeError("out of disk")

    monkeypatch.setattr(bootstrap, "_BUILDERS", {})
    monkeypatch.setattr(bootstrap, "autodiscover_modules", lambda name: None)
    monkeypatch.setattr(bootstrap, "STATUS_EVERY_S", 0.0)
    bootstrap.register(bootstrap.Builder(name="broken", model_name="broken", build=broken, order=1))
    bootstrap.register(bootstrap.Builder(name="slow", model_name="slow", build=slow, order=2))
    return seen


def test_bootstrap_status_says_what_is_building_and_what_failed(two_builders, registry) -> None:  # type: ignore[no-untyped-def]
    assert bootstrap.read_status(registry) is None and bootstrap.building(registry, "slow") is None
    with pytest.raises(CommandError, match="broken"):
        call_command("bootstrap_models")
    # the failure did not stop the next builder; while it ran its page said "building (50%)"
    assert two_builders == [
        {"name": "slow", "model": "slow", "state": "running", "percent": 50, "message": "epoch 2", "error": ""}
    ]
    assert registry.live_version("slow") == "v0001" and bootstrap.building(registry, "slow") is None
    failed = bootstrap.building(registry, "broken")
    assert failed is not None and failed["state"] == "failed" and "out of disk" in failed["error"]
    rows = {r["name"]: r for r in bootstrap.overview(registry)}
    assert rows["slow"]["state"] == "done" and rows["slow"]["live"] == "v0001"
    assert bootstrap.read_status(registry)["state"] == "failed"  # type: ignore[index]


def test_a_killed_build_reads_as_stopped(registry) -> None:  # type: ignore[no-untyped-def]
    writer = bootstrap.StatusWriter(registry, [bootstrap.Builder(name="m", model_name="m", build=lambda r, p: None)])
    writer.update("m", state="running", fraction=0.3, force=True)
    assert bootstrap.building(registry, "m")["state"] == "running"  # type: ignore[index]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    writer.doc["pid"] = int(dead.stdout)  # a process that has exited
    writer.write(force=True)
    assert bootstrap.building(registry, "m")["state"] == "stopped"  # type: ignore[index]
    assert os.getpid() != writer.doc["pid"]


def test_pages_say_model_building_until_it_is_live(client, plain_user, password, registry, settings) -> None:  # type: ignore[no-untyped-def]
    settings.SENTIMENT_MODEL = "sentiment"
    settings.CHAT_MODEL = "registry:chat"
    builders = [bootstrap.Builder(name=n, model_name=n, build=lambda r, p: None) for n in ("chat", "sentiment")]
    writer = bootstrap.StatusWriter(registry, builders)
    writer.update("chat", state="running", fraction=0.43, message="epoch 3 loss 4.1", force=True)
    client.login(username=plain_user.username, password=password)
    for url in ("/", reverse("chat:index")):
        html = client.get(url).content.decode()
        assert "Chat model building (43%)" in html and 'hx-get="/building/chat/"' in html, url
    html = client.get(reverse("sentiment:playground")).content.decode()
    assert "Sentiment model building (0%)" in html and "waiting for the model before it" in html
    banner = client.get("/building/chat/").content.decode()
    assert "Chat model building (43%)" in banner and "data-job-active" in banner
    # live now: the poll answers "ready" (and stops polling), the pages drop the banner
    mv = registry.create_version("chat", lambda d: (d / "w").write_text("x"), {})
    registry.promote("chat", mv.version)
    banner = client.get("/building/chat/").content.decode()
    assert "The chat model is ready." in banner and "hx-get" not in banner
    assert "model building" not in client.get(reverse("chat:index")).content.decode()
    assert client.get("/building/not a name/").status_code == 200
