import pytest
from django.core.management import CommandError, call_command

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
