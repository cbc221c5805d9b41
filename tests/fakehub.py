"""A fake Hugging Face hub on 127.0.0.1 for pull tests: the part of the hub API huggingface_hub 2.4 calls.

Endpoints (read from huggingface_hub's hf_api.py / file_download.py / _snapshot_download.py):
  GET  /api/{models|datasets}/<repo>[/revision/<rev>]   repo info: sha, siblings, cardData, tags
  GET  /api/{models|datasets}/<repo>/tree/<rev>[/<dir>]  file listing (recursive; git oid, size, lfs)
  HEAD/GET /[datasets/]<repo>/resolve/<rev>/<path>        X-Repo-Commit, ETag (git blob sha1, or
                                                          X-Linked-Etag = sha256 for LFS files),
                                                          Content-Length / X-Linked-Size, Range
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) as the hub does, so
huggingface_hub raises its own exceptions. Every request is logged in `FakeHub.requests`.

Repositories (tiny, random weights, built once per test session):
  fake-org/tiny-gpt2                 GPT-2 + byte-level BPE; commit tagged v1 (seed 0) and main (seed 1);
                                     safetensors, plus an .onnx and a .msgpack that must not be fetched
  uer/gpt2-chinese-cluecorpussmall   like the real one: GPT2LMHeadModel, `tokenizer_class: BertTokenizer`
                                     in config.json, a Chinese-character vocab.txt, only pickled
                                     pytorch_model.bin weights (and a tf_model.h5 that must not be fetched)
  bert-base-chinese                  BertForMaskedLM with a Chinese-character vocabulary, safetensors
  fake-org/tiny-reviews (dataset)    README.md with configs + data/train.csv, data/test.csv
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx")

# bert-base-chinese style: [PAD]=0 ... with the specials first, then ASCII, a few word pieces, CJK.
CJK = (
    "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多"
    "然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头"
    "经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感见明问力理尔点文几定本公特做外孩"
    "相西果走将月十实向声车全信重三机工物气每并别真打太新比才便夫再书部水像眼等体却加电主界门利海受听表德少克"
)
ASCII = list("!,.:;?'\"()-") + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
WORDS = ["user", "agent", "hello", "world", "play", "##s", "##ing", "##ed", "the", "is", "，", "。", "！", "？", "、"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHINESE_VOCAB = SPECIALS + ASCII + WORDS + list(dict.fromkeys(CJK))

REVIEWS_README = """---
license: cc-by-4.0
language:
- zh
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.csv
  - split: test
    path: data/test.csv
---
# tiny-reviews

Six short Chinese product reviews with a sentiment label (a fixture for slm's tests).
"""
REVIEWS_TRAIN = (
    "text,label\n这个手机很好用,positive\n质量太差了,negative\n物流很快，满意,positive\n再也不买了,negative\n"
)
REVIEWS_TEST = "text,label\n非常喜欢,positive\n退货了,negative\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeCommit:
    sha: str
    files: dict[str, bytes]


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str  # "model" | "dataset"
    commits: list[FakeCommit] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    license: str | None = None
    pipeline_tag: str | None = None

    def add_commit(self, files: dict[str, bytes], *refs: str) -> FakeCommit:
        digest = hashlib.sha1()
        digest.update(self.repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + git_blob_oid(files[name]).encode())
        commit = FakeCommit(digest.hexdigest(), files)
        self.commits.append(commit)
        for ref in ("main", *refs):
            self.refs[ref] = commit.sha
        return commit

    def resolve(self, revision: str) -> FakeCommit | None:
        sha = self.refs.get(revision, revision)
        return next((c for c in self.commits if c.sha == sha), None)


def _dir_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _readme(repo_id: str, license_id: str) -> bytes:
    return f"---\nlicense: {license_id}\n---\n# {repo_id}\n\nA tiny random model (test fixture).\n".encode()


def build_tiny_gpt2(directory: Path, seed: int) -> None:
    from tests.chat.tiny import save_tiny

    save_tiny(directory, seed=seed, n_positions=128)


def chinese_bert_tokenizer(directory: Path) -> Any:
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(CHINESE_VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer(str(directory / "vocab.txt"))


def build_chinese_gpt2(directory: Path, seed: int = 0) -> None:
    """Files as uer/gpt2-chinese-cluecorpussmall ships them: config.json naming BertTokenizer (GPT-2's
    bos/eos 50256 left in, outside the vocabulary), vocab.txt, pickled pytorch_model.bin only."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = chinese_bert_tokenizer(directory / "tok")
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tok))
    cfg.tokenizer_class = "BertTokenizer"
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # a slight pull towards CJK ids so a greedy reply is Chinese characters
        cjk_start = len(SPECIALS) + len(ASCII) + len(WORDS)
        model.lm_head.weight[cjk_start:] += 0.05 * torch.randn_like(model.lm_head.weight[cjk_start:])
    raw = cfg.to_dict()
    raw["architectures"] = ["GPT2LMHeadModel"]
    for key in ("transformers_version", "dtype", "torch_dtype"):
        raw.pop(key, None)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    (directory / "pytorch_model.bin").write_bytes(buf.getvalue())
    (directory / "vocab.txt").write_bytes((directory / "tok" / "vocab.txt").read_bytes())
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "unk_token": "[UNK]",
                "sep_token": "[SEP]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "mask_token": "[MASK]",
            }
        )  # fmt: skip
    )
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    (directory / "tf_model.h5").write_bytes(b"not really hdf5: must never be downloaded")


def build_chinese_bert(directory: Path, seed: int = 0) -> None:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tok = chinese_bert_tokenizer(directory)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128,
    )  # fmt: skip
    BertForMaskedLM(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}"

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo

    def repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        return self.repos[(repo_type, repo_id)]

    def fetched(self, suffix: str = "") -> list[str]:
        """Paths of files downloaded (GET …/resolve/…), optionally only those ending with `suffix`."""
        with self._lock:
            return [p for m, p in self.requests if m == "GET" and "/resolve/" in p and p.endswith(suffix)]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def build(self, workdir: Path) -> FakeHub:
        gpt2 = self.add(FakeRepo("fake-org/tiny-gpt2", "model", license="mit", pipeline_tag="text-generation"))
        for seed, refs in ((0, ("v1",)), (1, ())):
            d = workdir / f"gpt2-{seed}"
            build_tiny_gpt2(d, seed)
            files = _dir_bytes(d)
            files["README.md"] = _readme(gpt2.repo_id, "mit")
            files["flax_model.msgpack"] = b"never fetched"
            files["onnx/model.onnx"] = b"never fetched"
            files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            gpt2.add_commit(files, *refs)
        uer = self.add(FakeRepo("uer/gpt2-chinese-cluecorpussmall", "model", pipeline_tag="text-generation"))
        d = workdir / "uer"
        build_chinese_gpt2(d)
        files = _dir_bytes(d)
        files["README.md"] = b'---\nlanguage: zh\nwidget:\n- text: "\\u7c73"\n---\n# Chinese GPT2 (tiny fake)\n'
        uer.add_commit(files)
        uer.license = None  # the real card names no license: it must come out as unknown, not invented
        bert = self.add(FakeRepo("bert-base-chinese", "model", license="apache-2.0", pipeline_tag="fill-mask"))
        d = workdir / "bert"
        build_chinese_bert(d)
        files = _dir_bytes(d)
        files["README.md"] = _readme(bert.repo_id, "apache-2.0")
        bert.add_commit(files)
        reviews = self.add(FakeRepo("fake-org/tiny-reviews", "dataset", license="cc-by-4.0"))
        reviews.add_commit(
            {
                "README.md": REVIEWS_README.encode(),
                "data/train.csv": REVIEWS_TRAIN.encode(),
                "data/test.csv": REVIEWS_TEST.encode(),
                "scripts/build.py": b"raise SystemExit('dataset scripts are never run')\n",
            }
        )
        return self

    # ------------------------------------------------------------------------------------- server
    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                hub._serve(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                hub._serve(self, head=True)

            def do_POST(self) -> None:  # noqa: N802
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:  # fmt: skip
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, code: str, message: str, head: bool, commit: str = "") -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(h, 404, json.dumps({"error": message}).encode(), headers, head)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        with self._lock:
            self.requests.append((h.command, h.path))
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        m = re.match(r"^/api/(models|datasets)/(?P<repo>.+?)/tree/(?P<rev>[^/]+)(?P<sub>/.*)?$", path)
        if m:
            return self._tree(h, m.group(1)[:-1], m.group("repo"), m.group("rev"), head)
        m = re.match(r"^/api/(models|datasets)/(?P<repo>.+?)(?:/revision/(?P<rev>[^/]+))?$", path)
        if m:
            return self._info(h, m.group(1)[:-1], m.group("repo"), m.group("rev") or "main", head)
        m = re.match(r"^/(?:(?P<type>datasets)/)?(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$", path)
        if m:
            return self._resolve(h, "dataset" if m.group("type") else "model", m.group("repo"), m.group("rev"),
                                 m.group("file"), head)  # fmt: skip
        return self._error(h, "NotFound", f"no such endpoint {path}", head)

    def _lookup(self, h: BaseHTTPRequestHandler, repo_type: str, repo_id: str, rev: str, head: bool) -> Any:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(h, "RepoNotFound", f"Repository Not Found for url: {repo_id}", head)
            return None, None
        commit = repo.resolve(rev)
        if commit is None:
            self._error(h, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None, None
        return repo, commit

    def _info(self, h: BaseHTTPRequestHandler, repo_type: str, repo_id: str, rev: str, head: bool) -> None:
        repo, commit = self._lookup(h, repo_type, repo_id, rev, head)
        if repo is None:
            return
        body: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit.sha,
            "lastModified": "2024-05-01T12:00:00.000Z",
            "createdAt": "2022-03-02T23:29:04.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [f"license:{repo.license}"] if repo.license else [],
            "siblings": [{"rfilename": name} for name in sorted(commit.files)],
        }
        if repo.license:
            body["cardData"] = {"license": repo.license}
        if repo_type == "model":
            body.update({"modelId": repo_id, "library_name": "transformers", "pipeline_tag": repo.pipeline_tag})
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _tree(self, h: BaseHTTPRequestHandler, repo_type: str, repo_id: str, rev: str, head: bool) -> None:
        repo, commit = self._lookup(h, repo_type, repo_id, rev, head)
        if repo is None:
            return
        entries: list[dict[str, Any]] = []
        dirs = sorted({name.rsplit("/", 1)[0] for name in commit.files if "/" in name})
        for d in dirs:
            entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
        for name, data in sorted(commit.files.items()):
            entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._send(h, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)

    def _resolve(self, h: BaseHTTPRequestHandler, repo_type: str, repo_id: str, rev: str, name: str,
                 head: bool) -> None:  # fmt: skip
        repo, commit = self._lookup(h, repo_type, repo_id, rev, head)
        if repo is None:
            return
        data = commit.files.get(name)
        if data is None:
            return self._error(h, "EntryNotFound", f"{name} does not exist on {rev}", head, commit.sha)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = f'"{hashlib.sha256(data).hexdigest()}"'
        else:
            headers["ETag"] = f'"{git_blob_oid(data)}"'
        status = 200
        rng = re.match(r"bytes=(\d+)-$", h.headers.get("Range", "") or "")
        if rng and not head:
            start = int(rng.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data, status = data[start:], 206
        self._send(h, status, data, headers, head)


def start_fake_hub() -> tuple[FakeHub, tempfile.TemporaryDirectory[str]]:
    work = tempfile.TemporaryDirectory(prefix="fakehub-")
    hub = FakeHub().build(Path(work.name)).start()
    return hub, work


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connections are refused at once (an offline machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
