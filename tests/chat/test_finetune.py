"""Chat fine-tuning: service validation, the RQ job end to end through Redis and a worker, promote/rollback."""

import json
import shutil

import django_rq
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command
from rq import SimpleWorker

from chat.bootstrap import build_tiny_chat_version
from chat.finetune import finetune_promote, finetune_rollback, finetune_run_create
from chat.jobs import feedback_dialogues, run_finetune
from chat.models import Conversation, FinetuneRun, Message
from slm.chat_data import turns_to_dialogue, write_jsonl_dialogues
from slm.registry import Registry

TRAIN = {"epochs": 2, "lr": 5e-3, "batch_size": 8, "grad_accum": 2, "num_threads": 1, "log_every": 1}
PAIRS = [
    ("what is your favourite colour?", "I like blue the most."),
    ("where do you live?", "I live inside this computer."),
    ("can you help me?", "Of course, tell me what you need."),
    ("what time is it?", "I do not have a clock, sorry."),
    ("thank you", "You are welcome!"),
]


@pytest.fixture(scope="module")
def tiny_registry_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-chat-registry")
    build_tiny_chat_version(Registry(root))
    return root


@pytest.fixture
def base(registry, tiny_registry_root):
    """The test registry with a live tiny chat model chat@v0001."""
    shutil.copytree(tiny_registry_root, registry.root, dirs_exist_ok=True)
    assert registry.live_version("chat") == "v0001"
    return registry


@pytest.fixture
def data_file(tmp_path):
    dialogues = [turns_to_dialogue(p) for p in PAIRS] * 6
    dialogues += [turns_to_dialogue([f"say number {i}", f"number {i}"]) for i in range(10)]
    return write_jsonl_dialogues(dialogues, tmp_path / "dialogues.jsonl")


def _liked_conversation(user) -> None:
    conv = Conversation.objects.create(owner=user)
    Message.objects.create(conversation=conv, role="user", text="hello bot")
    Message.objects.create(conversation=conv, role="agent", text="hello human, nice to meet you", rating=1)
    Message.objects.create(conversation=conv, role="user", text="bad question")
    Message.objects.create(conversation=conv, role="agent", text="bad answer", rating=-1)


@pytest.mark.django_db(transaction=True)
def test_finetune_end_to_end_through_rq_worker(base, admin_user, data_file):
    _liked_conversation(admin_user)
    config = {"data_path": str(data_file), "use_feedback": True, "train": TRAIN}
    run = finetune_run_create(user=admin_user, config=config)
    assert run.status == FinetuneRun.Status.QUEUED and run.base_ref == "chat@v0001"
    queue = django_rq.get_queue("gpu")
    assert run.job_id in queue.job_ids  # enqueued after commit, on the gpu queue

    SimpleWorker([queue], connection=queue.connection).work(burst=True)

    run.refresh_from_db()
    assert run.status == FinetuneRun.Status.SUCCEEDED, run.error
    assert run.progress == 1.0 and run.started and run.finished and run.result_ref == "chat@v0002"
    assert "eval_loss" in run.log and "registered chat@v0002" in run.log
    for key in ("eval_loss", "perplexity", "train_time_s", "base_eval_loss", "base_perplexity"):
        assert run.metrics[key] > 0
    mv = base.get("chat", "v0002")
    assert mv.metadata["parent"] == "v0001" and mv.metadata["family"] == "gpt2"
    assert mv.metadata["metrics"]["perplexity"] == pytest.approx(run.metrics["perplexity"])
    assert mv.metadata["data"]["feedback"] == {"dialogues": 1} and mv.metadata["data"]["jsonl"]["dialogues"] == 40
    assert (mv.path / "model.safetensors").exists()
    assert base.live_version("chat") == "v0001"  # promotion is manual by default

    assert finetune_promote(user=admin_user, version="v0002").version == "v0002"
    assert base.live_version("chat") == "v0002"
    assert finetune_rollback(user=admin_user).version == "v0001"
    assert base.live_version("chat") == "v0001"


def test_feedback_dialogues_pair_liked_reply_with_its_question(db, plain_user):
    _liked_conversation(plain_user)
    assert feedback_dialogues() == [
        [{"role": "user", "content": "hello bot"}, {"role": "assistant", "content": "hello human, nice to meet you"}]
    ]


def test_config_validation(base, admin_user, plain_user, data_file, tmp_path):
    ok = {"data_path": str(data_file)}
    with pytest.raises(PermissionDenied):
        finetune_run_create(user=plain_user, config=ok)
    bad = [
        ({}, "data_path"),
        ({"data_path": str(tmp_path / "nope.jsonl")}, "does not exist"),
        ({**ok, "train": {"epochs": 0}}, "epochs"),
        ({**ok, "train": {"bogus": 1}}, "unknown training option"),
        ({**ok, "colour": "red"}, "unknown config key"),
        ({**ok, "promote": "sometimes"}, "promote must be"),
        ({**ok, "base": "chat@v0042"}, "no version"),
        ({**ok, "base": "/no/such/dir"}, "does not exist"),
        ({**ok, "name": "other"}, "no live version"),
        ({**ok, "eval_fraction": "half"}, "eval_fraction"),
    ]
    for config, message in bad:
        with pytest.raises(ValidationError, match=message):
            finetune_run_create(user=admin_user, config=config)
    assert not FinetuneRun.objects.exists()
    with pytest.raises(ValidationError, match="no version"):
        finetune_promote(user=admin_user, version="v0042")
    with pytest.raises(PermissionDenied):
        finetune_rollback(user=plain_user)


def test_bad_data_fails_the_run_with_a_clear_error(db, base, admin_user, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    run = finetune_run_create(user=admin_user, config={"data_path": str(path)}, enqueue=False)
    with pytest.raises(ValueError, match="line 1"):
        run_finetune(run.pk)
    run.refresh_from_db()
    assert run.status == FinetuneRun.Status.FAILED and "line 1" in run.error and run.finished
    assert len(base.versions("chat")) == 1


def test_management_command_sync_promote_and_if_better(db, base, data_file, capsys):
    args = ["--data", str(data_file), "--epochs", "2", "--lr", "5e-3", "--batch-size", "8", "--grad-accum", "1"]
    call_command("finetune_chat", *args, "--promote")
    assert base.live_version("chat") == "v0002" and "registered chat@v0002" in capsys.readouterr().out
    run = FinetuneRun.objects.get()
    assert run.status == FinetuneRun.Status.SUCCEEDED and run.config["train"]["lr"] == 5e-3
    assert base.get("chat", "v0002").metadata["parent"] == "v0001"

    call_command("finetune_chat", *args, "--base", "chat@v0001", "--promote-if-better")
    latest = FinetuneRun.objects.order_by("-id").first()
    assert latest.metrics["promoted"] == latest.metrics["improved"]
    assert base.live_version("chat") == ("v0003" if latest.metrics["improved"] else "v0002")
    assert base.get("chat", "v0003").metadata["parent"] == "v0001"
    with pytest.raises(CommandError, match="data_path"):
        call_command("finetune_chat")


@pytest.mark.django_db(transaction=True)
def test_management_command_enqueue(base, data_file, capsys):
    call_command("finetune_chat", "--data", str(data_file), "--enqueue")
    run = FinetuneRun.objects.get()
    queue = django_rq.get_queue("gpu")
    job = queue.fetch_job(run.job_id)
    assert job is not None and job.func_name == "chat.jobs.finetune_chat_job" and job.args == (run.pk,)
    assert "enqueued on the gpu queue" in capsys.readouterr().out
    queue.remove(job)
    job.delete()


@pytest.mark.django_db(transaction=True)
def test_queue_down_marks_run_failed(base, admin_user, data_file, monkeypatch):
    def down(name):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("slmsite.jobs.get_queue", down)
    run = finetune_run_create(user=admin_user, config={"data_path": str(data_file)})
    run.refresh_from_db()
    assert run.status == FinetuneRun.Status.FAILED and "could not enqueue" in run.error


def test_metrics_are_json_safe():
    from chat.jobs import _finite

    assert _finite({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": "cpu"}) == {
        "a": None,
        "b": None,
        "c": 1.5,
        "d": "cpu",
    }
