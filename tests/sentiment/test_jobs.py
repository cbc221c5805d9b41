"""Batch CSV predictions: parsing, inline runs, the RQ job with progress, downloads and permissions."""

from __future__ import annotations

import csv
import io

import django_rq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rq import SimpleWorker

from sentiment import services
from sentiment.models import BatchPrediction
from tests.sentiment.fakes import install_fake_loader, make_fake_version

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fake_models(monkeypatch, registry):
    install_fake_loader(monkeypatch)
    make_fake_version(registry)
    yield
    import sentiment.inference

    sentiment.inference.reset_services()


def csv_bytes(texts: list[str], extra: bool = True) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"] if extra else ["text"])
    for i, t in enumerate(texts):
        w.writerow([i, t] if extra else [t])
    return buf.getvalue().encode()


def upload(data: bytes, name: str = "reviews.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/csv")


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"review,stars\ngood,5\n", "column named 'text'"),
        (b"text\n", "no rows"),
        (b"\xff\xfe\xfa\x00\x81", "not UTF-8"),
    ],
)
def test_csv_read_rejects_bad_files(data, message):
    with pytest.raises(services.BatchInputError, match=message):
        services.csv_read(data)


def test_csv_read_accepts_bom_gb18030_and_tabs():
    cols, rows, col = services.csv_read("\ufeffText,n\n好,1\n".encode())
    assert col == "Text" and rows[0]["Text"] == "好"
    _, rows, _ = services.csv_read("text\n这家店很好\n".encode("gb18030"))
    assert rows[0]["text"] == "这家店很好"
    _, rows, _ = services.csv_read(b"id\ttext\n1\tgood, really\n")
    assert rows[0]["text"] == "good, really"


def test_small_upload_runs_inline(plain_user):
    batch = services.batch_submit(owner=plain_user, upload=upload(csv_bytes(["很好", "bad food", "", "good"])))
    assert batch.inline and batch.status == "succeeded"
    assert batch.total == batch.done == 4
    assert batch.model_ref == "sentiment@v0001"
    assert batch.label_counts == {"positive": 2, "negative": 1}
    assert [r["label"] for r in batch.preview] == ["positive", "negative", "", "positive"]
    raw = batch.result_file.open("rb").read()
    assert raw.startswith(b"\xef\xbb\xbf")  # a UTF-8 BOM, so Excel shows Chinese text
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert list(rows[0]) == ["id", "text", "label", "score", "p_negative", "p_positive"]
    assert rows[1]["label"] == "negative" and float(rows[1]["p_negative"]) == pytest.approx(0.8)
    assert rows[2]["label"] == "" and rows[2]["id"] == "2"


def test_upload_limits_and_bad_model(plain_user, settings):
    settings.SENTIMENT_MAX_UPLOAD_BYTES = 50
    with pytest.raises(services.BatchInputError, match="limit"):
        services.batch_submit(owner=plain_user, upload=upload(csv_bytes(["x" * 100])))
    settings.SENTIMENT_MAX_UPLOAD_BYTES = 10_000
    with pytest.raises(services.BatchInputError, match="unknown model"):
        services.batch_submit(owner=plain_user, upload=upload(csv_bytes(["x"])), model="chat@v0001")
    batch = services.batch_submit(owner=plain_user, upload=upload(csv_bytes(["x"])), model="v0042")
    assert batch.status == "failed" and "no version" in batch.error
    assert BatchPrediction.objects.count() == 1


def test_big_upload_runs_as_rq_job_with_progress(plain_user, settings, django_capture_on_commit_callbacks):
    settings.SENTIMENT_INLINE_ROWS = 3
    texts = [f"review {i} {'good' if i % 2 else 'awful'}" for i in range(10)]
    queue = django_rq.get_queue("default")
    queue.empty()
    with django_capture_on_commit_callbacks(execute=True):
        batch = services.batch_submit(owner=plain_user, upload=upload(csv_bytes(texts)))
    assert not batch.inline and batch.status == "queued"
    batch.refresh_from_db()
    assert batch.job_id and queue.count == 1
    SimpleWorker([queue], connection=queue.connection).work(burst=True)
    batch.refresh_from_db()
    assert batch.status == "succeeded", batch.error
    assert batch.done == batch.total == 10
    assert batch.label_counts == {"positive": 5, "negative": 5}


def test_job_progress_is_recorded_per_chunk(plain_user, settings):
    from sentiment.inference import get_service

    settings.SENTIMENT_INLINE_ROWS = 1
    batch = services.batch_create(owner=plain_user, upload=upload(csv_bytes([f"t{i}" for i in range(7)])))
    service = get_service()
    real_predict = service.predict
    seen: list[tuple[str, int]] = []

    def spy(texts, model=None):
        row = BatchPrediction.objects.get(pk=batch.pk)
        seen.append((row.status, row.done))
        return real_predict(texts, model)

    service.predict = spy  # type: ignore[method-assign]
    try:
        result = services.batch_run(batch_id=batch.pk, chunk=3)
    finally:
        del service.predict
    assert seen == [("running", 0), ("running", 3), ("running", 6)]
    assert result.status == "succeeded" and result.done == 7 and result.percent == 100


def test_queue_down_marks_batch_failed(plain_user, settings, monkeypatch, django_capture_on_commit_callbacks):
    settings.SENTIMENT_INLINE_ROWS = 1

    def broken_queue(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("slmsite.jobs.get_queue", broken_queue)
    with django_capture_on_commit_callbacks(execute=True):
        batch = services.batch_submit(owner=plain_user, upload=upload(csv_bytes(["a", "b"])))
    batch.refresh_from_db()
    assert batch.status == "failed" and "queue is unavailable" in batch.error


def test_batch_job_function_runs_batch(plain_user, settings):
    from sentiment.jobs import batch_predict_job

    settings.SENTIMENT_INLINE_ROWS = 1
    batch = services.batch_create(owner=plain_user, upload=upload(csv_bytes(["good", "bad"])))
    out = batch_predict_job(batch.pk)
    assert out["status"] == "succeeded" and out["done"] == 2
    assert batch_predict_job(batch.pk)["status"] == "succeeded"  # idempotent when re-run


@pytest.fixture
def client_user(plain_user, password) -> Client:
    c = Client()
    assert c.login(username=plain_user.username, password=password)
    return c


def test_upload_views_inline_htmx_and_download(client_user):
    r = client_user.post(
        reverse("sentiment:batch_upload"), {"file": upload(csv_bytes(["好", "bad"]))}, HTTP_HX_REQUEST="true"
    )
    html = r.content.decode()
    assert r.status_code == 200 and "Download CSV" in html and "<html" not in html
    batch = BatchPrediction.objects.get()
    d = client_user.get(reverse("sentiment:batch_download", kwargs={"batch_id": batch.pk}))
    assert d.status_code == 200 and d["Content-Disposition"].startswith("attachment")
    raw = b"".join(d.streaming_content)
    assert raw.startswith(b"\xef\xbb\xbf")
    body = raw.decode("utf-8-sig")
    assert body.splitlines()[0] == "id,text,label,score,p_negative,p_positive"


def test_upload_view_without_js_redirects_to_batch_page(client_user):
    r = client_user.post(reverse("sentiment:batch_upload"), {"file": upload(csv_bytes(["good"]))})
    batch = BatchPrediction.objects.get()
    assert r.status_code == 302 and r["Location"] == reverse("sentiment:batch", kwargs={"batch_id": batch.pk})
    page = client_user.get(r["Location"]).content.decode()
    assert "Download CSV" in page


def test_upload_view_errors(client_user):
    r = client_user.post(reverse("sentiment:batch_upload"), {}, HTTP_HX_REQUEST="true")
    assert "Choose a CSV" in r.content.decode()
    r = client_user.post(reverse("sentiment:batch_upload"), {"file": upload(b"foo,bar\n1,2\n")})
    assert r.status_code == 422 and "column named" in r.content.decode()


def test_running_batch_polls_and_others_cannot_see_it(client_user, plain_user, admin_user, password):
    batch = BatchPrediction.objects.create(owner=plain_user, filename="big.csv", total=100, done=40, status="running")
    url = reverse("sentiment:batch", kwargs={"batch_id": batch.pk})
    html = client_user.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert 'hx-trigger="every 1s"' in html and 'value="40"' in html
    assert "refresh" in client_user.get(url).content.decode()  # no-JS fallback
    other = Client()
    from slmsite.services import user_create

    user_create(username="other", password=password)
    other.login(username="other", password=password)
    assert other.get(url).status_code == 404
    assert other.get(reverse("sentiment:batch_download", kwargs={"batch_id": batch.pk})).status_code == 404
    admin = Client()
    admin.login(username=admin_user.username, password=password)
    assert admin.get(url).status_code == 200
    assert Client().get(url).status_code == 302


def test_csv_read_accepts_semicolons_utf16_and_drops_nul():
    # Excel in many European locales writes ';'-separated CSV; a ',' inside the text must stay in it
    cols, rows, col = services.csv_read("id;text\n1;难吃, 很差\n".encode())
    assert cols == ["id", "text"] and rows[0]["text"] == "难吃, 很差"
    # Excel's "Unicode text" export: UTF-16 with a BOM, tab-separated
    _, rows, _ = services.csv_read("id\ttext\n1\t好吃\n".encode("utf-16"))
    assert rows[0]["text"] == "好吃"
    # NUL cannot be stored in PostgreSQL text/JSON (the batch preview)
    _, rows, _ = services.csv_read(b"text\nab\x00c\n")
    assert rows[0]["text"] == "abc"


def test_semicolon_upload_predicts_every_row(plain_user):
    data = "id;text\n1;很好\n2;bad, really bad\n".encode()
    batch = services.batch_submit(owner=plain_user, upload=upload(data))
    assert batch.status == "succeeded", batch.error
    assert [p["text"] for p in batch.preview] == ["很好", "bad, really bad"]
    assert all(p["label"] for p in batch.preview)
