"""Import / export / pool refresh / simulation jobs and the demo project."""

from __future__ import annotations

import json
import time
import zipfile

import numpy as np
import pytest
from django.core.management import call_command

from annotate import io, jobs, selectors, services
from annotate.demo import create_demo_project
from annotate.models import Export, ImportJob, Item, Simulation
from slm.classify.testing import make_tiny_version
from tests.annotate.conftest import make_project

pytestmark = pytest.mark.django_db


def test_import_csv_jsonl_and_hf_dataset_with_dedupe(project, tmp_path, admin_user):
    csv = tmp_path / "a.csv"
    csv.write_text(
        "text,label\n<b>很好</b> 推荐,positive\n很好 推荐,positive\n,negative\n差评,bogus\n", encoding="utf-8"
    )
    imp = services.import_create(project=project, path=str(csv), user=admin_user)
    jobs.import_job(imp.pk)
    imp.refresh_from_db()
    assert imp.status == "succeeded" and imp.progress == 1.0
    assert imp.report["added"] == 2 and imp.report["duplicates"] == 1 and imp.report["empty"] == 1
    assert imp.report["unknown_labels"] == 1
    assert Item.objects.filter(project=project, text="很好 推荐").exists()  # HTML stripped, then deduped
    jl = tmp_path / "b.jsonl"
    jl.write_text("\n".join(json.dumps({"review": t}) for t in ["one more", "very new text", "one more"]))
    imp = services.import_create(project=project, path=str(jl), text_field="review", label_field="")
    jobs.import_job(imp.pk)
    imp.refresh_from_db()
    assert imp.report["added"] == 2 and imp.report["duplicates"] == 1
    from datasets import ClassLabel, Dataset, Features, Value

    ds = Dataset.from_dict(
        {"text": ["hf row one", "hf row two"], "label": [0, 1]},
        features=Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    imp = services.import_create(project=project, path=str(tmp_path / "hf"))
    jobs.import_job(imp.pk)
    assert Item.objects.get(project=project, text="hf row two").meta == {"source_label": "positive"}
    bad = services.import_create(project=project, path=str(jl), text_field="nope")
    with pytest.raises(ValueError):
        jobs.import_job(bad.pk)
    bad.refresh_from_db()
    assert bad.status == "failed" and "no column 'nope'" in bad.error


def test_gold_and_overlap_are_marked_at_import(db):
    p = make_project(gold_fraction=0.5, overlap_k=3, overlap_fraction=0.5)
    items = Item.objects.filter(project=p)
    gold = items.filter(is_gold=True)
    assert 0 < gold.count() < items.count()
    assert not gold.filter(gold_label="").exists()  # labelled rows give gold labels
    assert set(items.values_list("needed", flat=True)) == {1, 3}


def _label(project, user, n, label="positive"):  # type: ignore[no-untyped-def]
    for _ in range(n):
        a = services.lease_next(project=project, user=user)
        services.label_submit(project=project, user=user, item_id=a.item_id, label=label)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "hf"])
def test_exports(project, annotator_user, fmt, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    _label(project, annotator_user, 3)
    exp = services.export_create(project=project, fmt=fmt)
    out = jobs.export_job(exp.pk)
    exp.refresh_from_db()
    assert exp.status == "succeeded" and exp.rows == 3 and out["rows"] == 3
    if fmt == "jsonl":
        rows = [json.loads(line) for line in open(exp.path, encoding="utf-8")]
        assert rows[0]["annotator"] == annotator_user.username and rows[0]["label"] == "positive"
        assert {"created_at", "item_agreement", "final_label", "text"} <= set(rows[0])
    elif fmt == "csv":
        assert open(exp.path, "rb").read(3) == b"\xef\xbb\xbf"  # BOM: Excel reads it as UTF-8
        assert open(exp.path, encoding="utf-8-sig").readline().startswith("item_id,text,label,annotator")
    else:
        from datasets import load_from_disk

        with zipfile.ZipFile(exp.path) as zf:
            zf.extractall(tmp_path / "unz")
        ds = load_from_disk(str(tmp_path / "unz"))
        assert len(ds) == 3 and ds[0]["annotator"] == annotator_user.username


def test_export_download_view(client, admin_user, password, project, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    exp = Export.objects.create(project=project, fmt="jsonl")
    jobs.export_job(exp.pk)
    client.login(username=admin_user.username, password=password)
    resp = client.get(f"/annotate/exports/{exp.pk}/download")
    assert resp.status_code == 200 and resp["Content-Disposition"].startswith("attachment")


def test_refresh_pool_scores_items_and_queue_follows_uncertainty(project, annotator_user, registry, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path
    make_tiny_version(registry)
    out = jobs.refresh_pool_job(project.pk)
    assert out["items"] == Item.objects.filter(project=project).count() and out["version"] == "v0001"
    project.refresh_from_db()
    assert project.pool_version == "v0001"
    items = list(Item.objects.filter(project=project))
    assert all(it.pred_label in ("negative", "positive") and 0.5 <= it.pred_conf <= 1.0 for it in items)
    top = max(items, key=lambda it: (it.score, -it.rand))
    a = services.lease_next(project=project, user=annotator_user)  # min_per_label=0: no cold start
    assert a.item_id == top.pk
    assert a.item.pred_conf == min(it.pred_conf for it in items)  # entropy: least confident first
    sug = selectors.item_payload(a.item, project)["suggestion"]  # the label page shows it with confidence
    assert sug["label"] == a.item.pred_label and sug["confidence"] == round(a.item.pred_conf, 3)
    # a second version: the stopping signal records prediction stability
    make_tiny_version(registry)
    jobs.refresh_pool_job(project.pk)
    project.refresh_from_db()
    assert project.stability and project.stability[-1]["agreement"] == 1.0


def test_query_scores_use_the_strategy():
    from annotate.pool import query_scores
    from slm.active import PoolContext

    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3], [0.99, 0.01]])
    s = query_scores("margin", PoolContext(probs=probs), batch_size=2, top=2)
    assert list(np.argsort(-s)[:2]) == [1, 2]
    with pytest.raises(ValueError, match="needs embeddings"):  # no embeddings: refused, never entropy instead
        query_scores("kcenter", PoolContext(probs=probs), batch_size=2, top=2)


def test_choosing_the_next_item_is_fast_on_a_large_pool(annotator_user, db):
    project = make_project(n_extra=3000)
    Item.objects.filter(project=project).update(score=0.1)
    Item.objects.filter(project=project, text="item number 1234 第1234条").update(score=0.9)
    started = time.perf_counter()
    a = services.lease_next(project=project, user=annotator_user)
    assert time.perf_counter() - started < 1.0
    assert a.item.text == "item number 1234 第1234条"


def test_demo_project_and_simulation(settings, tmp_path, admin_user):
    settings.MEDIA_ROOT = tmp_path
    project, created = create_demo_project(limit=400)
    assert created and project.items.count() > 350
    assert project.items.filter(is_gold=True).exclude(gold_label="").count() > 10
    assert create_demo_project(limit=400) == (project, False)
    sim = services.simulation_create(project=project, user=admin_user, strategies=["entropy"])
    jobs.simulation_job(sim.pk)
    sim = Simulation.objects.get(pk=sim.pk)
    assert sim.status == "succeeded", sim.error
    curves = sim.result["curves"]
    assert set(curves) == {"random", "entropy"} and len(curves["random"]["labels"]) >= 3
    assert all(0 <= f <= 1 for f in curves["entropy"]["f1"])
    panel = selectors.simulation_panel(project)
    assert panel["result"]["curves"]["random"] == curves["random"] and not panel["active"]


def test_management_commands(project, tmp_path, settings, annotator_user):
    settings.MEDIA_ROOT = tmp_path
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"text": "命令导入", "label": "positive"}) + "\n")
    call_command("import_items", str(project.pk), str(f))
    assert Item.objects.filter(project=project, text="命令导入").exists()
    _label(project, annotator_user, 1)
    out = tmp_path / "out.csv"
    call_command("export_labels", project.name, "--format", "csv", "--out", str(out))
    assert out.read_text(encoding="utf-8-sig").count("\n") == 2
    assert ImportJob.objects.count() == 0  # the command imports directly


@pytest.mark.django_db(transaction=True)
def test_upload_import_runs_as_a_job_on_the_worker(client, admin_user, password, run_worker, settings, tmp_path):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.MEDIA_ROOT = tmp_path
    project = make_project()
    client.login(username=admin_user.username, password=password)
    url = f"/annotate/p/{project.pk}/import"
    body = "text,label\n上传的第一条,positive\n上传的第二条,negative\n".encode()
    r = client.post(url, {"file": SimpleUploadedFile("up.csv", body, content_type="text/csv")})
    assert r.status_code == 302
    imp = ImportJob.objects.get(project=project)
    assert imp.status == "queued"
    run_worker()
    imp.refresh_from_db()
    assert imp.status == "succeeded" and imp.report["added"] == 2
    bad = client.post(
        url, {"file": SimpleUploadedFile("x.exe", b"MZ", content_type="application/octet-stream")}, follow=True
    )
    assert b"upload a .csv" in bad.content and ImportJob.objects.count() == 1


def test_import_reads_gbk_csv_and_explains_unreadable_files(project, tmp_path):
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("text,label\n这家店的菜很新鲜,positive\n快递员态度恶劣,negative\n".encode("gb18030"))
    imp = services.import_create(project=project, path=str(gbk))
    jobs.import_job(imp.pk)
    imp.refresh_from_db()
    assert imp.status == "succeeded" and imp.report["added"] == 2
    assert Item.objects.filter(project=project, text="这家店的菜很新鲜").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"{not json\n")
    imp = services.import_create(project=project, path=str(bad))
    with pytest.raises(ValueError):
        jobs.import_job(imp.pk)
    imp.refresh_from_db()
    assert imp.status == "failed" and "bad.jsonl" in imp.error and "JSON" in imp.error


def test_utf8_check_handles_a_character_split_across_chunks(tmp_path):
    src = tmp_path / "big.csv"
    src.write_bytes(b"text\n" + b"a" * ((1 << 20) - 6) + "好\n".encode())  # 好 straddles the 1 MiB boundary
    assert io.as_utf8(src) == src
