"""Pulling models and datasets from the Hugging Face hub (huggingface_hub / datasets), pinned and recorded.

* `pull_model` resolves a revision (branch, tag or commit) to its commit, downloads the files a
  `transformers` model needs — safetensors weights, configs, tokenizer files, the model card — into the
  HF cache at that commit, and publishes them as a new immutable version of the slm registry with its
  provenance (repo, requested revision, commit, license, endpoint, files). From then on the model is a
  registry version like any other: served as `registry:<name>`, promoted, rolled back. A repository
  that only has pickled PyTorch weights (`pytorch_model.bin`, e.g. older uer/* models) is loaded once
  with `torch.load(weights_only=True)` and stored as safetensors (the registry holds no pickles).
* `pull_dataset` downloads a dataset repository's data files at a pinned commit and stores it with
  `datasets` (`save_to_disk`) plus a `provenance.json`, loadable offline with `load_pulled_dataset`.
* `download_snapshot` is the one download path; `slm.loader` uses it when SLM_ALLOW_DOWNLOAD is set.

The hub is `HF_ENDPOINT` (read when called; default https://huggingface.co), the token `HF_TOKEN`
(gated/private repos), the cache `HF_HOME`/`HF_HUB_CACHE`. Without a network, `HubOffline` says how
to get the model anyway. No Django here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from slm.registry import ModelVersion, Registry, utcnow_iso

DEFAULT_ENDPOINT = "https://huggingface.co"
# Top-level files a transformers model needs. Weights only as safetensors unless a repo has none.
MODEL_FILE_PATTERNS = (
    "*.json",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.safetensors",
    "README.md",
    "LICENSE*",
)
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
DATASET_FILE_PATTERNS = ("*.parquet", "*.csv", "*.tsv", "*.json", "*.jsonl", "*.txt", "*.arrow", "README.md")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(RuntimeError):
    """Pulling failed; the message says why and what to do."""


class HubOffline(HubError):
    """The hub cannot be reached (no network, HF_HUB_OFFLINE, wrong HF_ENDPOINT)."""


@dataclass(frozen=True)
class Snapshot:
    repo_id: str
    repo_type: str  # "model" | "dataset"
    revision: str  # as asked ("main", a tag, a commit)
    commit: str  # the commit it resolved to
    path: Path  # local snapshot directory (HF cache)
    files: tuple[str, ...]
    license: str | None
    endpoint: str
    offline: bool = False  # served from the local cache because the hub was unreachable

    def provenance(self) -> dict[str, Any]:
        return {
            "kind": "hub",
            "repo": self.repo_id,
            "repo_type": self.repo_type,
            "revision": self.revision,
            "commit": self.commit,
            "license": self.license,
            "endpoint": self.endpoint,
            "files": list(self.files),
            "pulled": utcnow_iso(),
        }


@dataclass
class ModelPull:
    version: ModelVersion
    created: bool  # False: this repo@commit was already in the registry under that name
    promoted: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class DatasetPull:
    path: Path  # the `save_to_disk` directory
    provenance: dict[str, Any]
    created: bool


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def default_name(repo_id: str) -> str:
    """Registry name for a hub id: its last part, e.g. uer/gpt2-chinese-cluecorpussmall -> gpt2-chinese-cluecorpussmall."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", repo_id.rstrip("/").split("/")[-1]).lstrip("._-")
    return name[:100] or "model"


def _offline_message(repo_id: str, endpoint: str, exc: BaseException | None, what: str) -> str:
    reason = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        reason = " (HF_HUB_OFFLINE is set: unset it to download)"
    return (
        f"cannot reach the Hugging Face hub at {endpoint}{reason}, and {repo_id!r} is not in the local "
        f"Hugging Face cache. This machine looks offline. {what}"
    )


def _license(info: Any, snapshot_dir: Path | None) -> str | None:
    card = getattr(info, "card_data", None)
    lic = getattr(card, "license", None) if card is not None else None
    if not lic:
        for tag in getattr(info, "tags", None) or []:
            if isinstance(tag, str) and tag.startswith("license:"):
                lic = tag.split(":", 1)[1]
                break
    if not lic and snapshot_dir is not None and (snapshot_dir / "README.md").exists():
        try:
            from huggingface_hub.repocard import metadata_load

            lic = (metadata_load(snapshot_dir / "README.md") or {}).get("license")
        except Exception:
            lic = None
    if isinstance(lic, list):
        lic = ", ".join(map(str, lic))
    return str(lic) if lic else None


def _pick(names: list[str], patterns: tuple[str, ...], top_level: bool) -> list[str]:
    out = []
    for n in names:
        if top_level and "/" in n:
            continue
        base = n.rsplit("/", 1)[-1]
        if any(fnmatch(base, p) for p in patterns):
            out.append(n)
    return sorted(out)


def model_files(names: list[str]) -> tuple[list[str], bool]:
    """(files to download, True if the weights are pickles to convert) for a model repo's file list."""
    files = _pick(names, MODEL_FILE_PATTERNS, top_level=True)
    if any(f.endswith(".safetensors") for f in files):
        return files, False
    pickles = _pick(names, PICKLE_WEIGHT_PATTERNS, top_level=True)
    return sorted({*files, *pickles}), bool(pickles)


def _hub_errors() -> tuple[Any, ...]:
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    network = (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, OfflineModeIsEnabled)
    return network, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError


def _repo_info(repo_id: str, repo_type: str, revision: str, endpoint: str, token: str | None) -> Any:
    from huggingface_hub import HfApi

    network, gated, not_found, no_revision, http_error = _hub_errors()
    api = HfApi(endpoint=endpoint, token=token, library_name="slm")
    kind = "dataset" if repo_type == "dataset" else "model"
    try:
        return api.repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=30)
    except network as exc:
        raise HubOffline(str(exc)) from exc
    except gated as exc:
        raise HubError(
            f"{kind} {repo_id!r} is gated: accept its terms on the hub, then set HF_TOKEN to a token of that account"
        ) from exc
    except no_revision as exc:
        raise HubError(f"{kind} {repo_id!r} has no revision {revision!r} on {endpoint}") from exc
    except not_found as exc:
        raise HubError(f"no {kind} {repo_id!r} on {endpoint} (check the id; private repos need HF_TOKEN)") from exc
    except http_error as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise HubError(f"the hub at {endpoint} answered HTTP {status} for {kind} {repo_id!r}: {exc}") from exc


def cached_snapshot(
    repo_id: str, *, repo_type: str = "model", revision: str | None = None, cache_dir: str | Path | None = None
) -> Path | None:
    """The local snapshot directory of a repo in the HF cache, or None. Never touches the network. A
    snapshot missing files slm never downloads (e.g. tf_model.h5) still counts."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import IncompleteSnapshotError
    except ImportError:  # pragma: no cover
        return None
    try:
        return Path(
            snapshot_download(
                repo_id, repo_type=repo_type, revision=revision, local_files_only=True, cache_dir=cache_dir
            )
        )
    except IncompleteSnapshotError as exc:
        path = getattr(exc, "snapshot_path", None)
        return Path(path) if path and Path(path).is_dir() else None
    except Exception:
        return None


def download_snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Snapshot, bool]:
    """Downloads the files slm needs of `repo_id` at `revision` (default main) into the HF cache and
    returns (snapshot, weights_are_pickles). Offline, a snapshot already in the cache is used (marked
    `offline`); otherwise HubOffline."""
    from huggingface_hub import snapshot_download

    endpoint = hub_endpoint()
    revision = revision or "main"
    network = _hub_errors()[0]
    try:
        info = _repo_info(repo_id, repo_type, revision, endpoint, token)
    except HubOffline as exc:
        path = cached_snapshot(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache_dir)
        if path is None:
            raise HubOffline(
                _offline_message(repo_id, endpoint, exc.__cause__, _how_to_get(repo_id, repo_type))
            ) from exc
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        pickles = repo_type == "model" and not any(n.endswith(".safetensors") for n in names)
        snap = Snapshot(repo_id, repo_type, revision, path.name, path, tuple(sorted(names)), _license(None, path),
                        endpoint, offline=True)  # fmt: skip
        return snap, pickles
    commit = str(info.sha)
    names = [s.rfilename for s in (info.siblings or [])]
    if repo_type == "model":
        files, pickles = model_files(names)
        if not any(f == "config.json" for f in files):
            raise HubError(f"{repo_id!r} has no config.json at {commit[:12]}: not a transformers model")
    else:
        files, pickles = _pick(names, DATASET_FILE_PATTERNS, top_level=False), False
        if not [f for f in files if f != "README.md"]:
            raise HubError(f"dataset {repo_id!r} has no data files slm can read (parquet, csv, json, jsonl, txt)")
    try:
        path = Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=commit,  # pinned: a branch moving during the download cannot mix two commits
                allow_patterns=files,
                endpoint=endpoint,
                token=token,
                cache_dir=cache_dir,
            )
        )
    except network as exc:
        raise HubOffline(_offline_message(repo_id, endpoint, exc, _how_to_get(repo_id, repo_type))) from exc
    except Exception as exc:
        raise HubError(f"downloading {repo_id!r} at {commit[:12]} failed: {type(exc).__name__}: {exc}") from exc
    _remember_ref(path, revision, commit)
    return Snapshot(repo_id, repo_type, revision, commit, path, tuple(files), _license(info, path), endpoint), pickles


def _remember_ref(snapshot_path: Path, revision: str, commit: str) -> None:
    """Records `revision` -> `commit` in the cache's refs/ (what snapshot_download does when given a branch
    name; we download by commit so the files cannot mix two commits), so offline lookups of the branch —
    the loader's `hub_cache_path` — find this snapshot."""
    if _COMMIT_RE.match(revision) or revision == commit:
        return
    ref = snapshot_path.parent.parent / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError:  # a read-only cache only loses the offline lookup by branch name
        pass


def _how_to_get(repo_id: str, repo_type: str) -> str:
    if repo_type == "dataset":
        return (
            f"On a machine with internet run `python manage.py pull_dataset {repo_id}` and copy its output "
            f"directory (SLM_DATA_CACHE_DIR/hub/...) here, or import the data from a CSV/JSONL file."
        )
    folder = "models--" + repo_id.replace("/", "--")
    return (
        f"On a machine with internet run `python manage.py pull_model {repo_id}`, then either copy its Hugging "
        f"Face cache entry (HF_HOME/hub/{folder}) into this machine's HF_HOME/hub and run pull_model here again "
        f"(it registers the cached copy offline), or copy the version directory it prints into this machine's "
        f"registry (SLM_REGISTRY_DIR/<name>/<an unused version>) and run `manage.py promote`; or copy a "
        f"`save_pretrained` directory here and set CHAT_MODEL to its path."
    )


# ------------------------------------------------------------------------------------------ models
def _place(src: Path, dst: Path, link: bool) -> None:
    """Copies a file out of the HF cache (resolving its symlink); large weights are hard-linked when the
    registry is on the same filesystem (no second copy on disk; blobs are content-addressed, never edited)."""
    real = src.resolve()
    if link:
        try:
            os.link(real, dst)
            return
        except OSError:
            pass
    shutil.copyfile(real, dst)


def tokenizer_kind(tok: Any) -> str:
    """ "wordpiece" | "bpe" | "unigram" | ...: the tokenizer's model (how its text is joined back)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return type(backend.model).__name__.lower()
    return type(tok).__name__


def _is_causal_lm(conf: Any) -> bool:
    archs = getattr(conf, "architectures", None) or []
    return any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs)


def _convert_pickled_weights(src: Path, out: Path) -> str:
    """Loads a pytorch_model.bin repo (torch.load with weights_only=True: tensors only, no code) and
    writes it back as safetensors with the model's own class. Returns the class used."""
    import transformers
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(src, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    archs = getattr(conf, "architectures", None) or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), transformers.AutoModel)
    model = cls.from_pretrained(src, local_files_only=True, use_safetensors=False)
    model.save_pretrained(out, safe_serialization=True)
    return cls.__name__


def _fix_wordpiece_lm(directory: Path, conf: Any, tok: Any) -> list[str]:
    """A GPT-2 with a BERT tokenizer (uer/gpt2-chinese-*) keeps GPT-2's default bos/eos id 50256, which
    is outside its 21,128-token vocabulary: it could never end a reply. Its documents were
    "[CLS] … [SEP]", so [CLS] begins and [SEP] ends a reply. Returns what was changed."""
    from transformers import GenerationConfig

    vocab = int(getattr(conf, "vocab_size", 0) or 0)
    wanted = {"bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id}
    notes: list[str] = []
    cfg_path = directory / "config.json"
    raw = json.loads(cfg_path.read_text())
    gen_path = directory / "generation_config.json"
    gen = GenerationConfig.from_pretrained(directory) if gen_path.exists() else GenerationConfig.from_model_config(conf)  # nosec B615 - a local directory (a pinned snapshot already on disk)
    for key, value in wanted.items():
        if value is None:
            continue
        current = getattr(gen, key, None)
        ids = current if isinstance(current, list) else [current]
        if current is None or any(i is None or not 0 <= int(i) < vocab for i in ids):
            notes.append(f"{key} {current} -> {value} ({tok.convert_ids_to_tokens(value)})")
            setattr(gen, key, value)
            raw[key] = value
    if notes:
        cfg_path.unlink()
        cfg_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        if gen_path.exists():
            gen_path.unlink()
        gen.save_pretrained(directory)
    return notes


def pull_model(
    repo_id: str,
    *,
    registry: Registry,
    name: str | None = None,
    revision: str | None = None,
    promote: bool | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> ModelPull:
    """Downloads `repo_id` at `revision` and publishes it as a new version of registry model `name`
    (default: the repo's last path part). `promote`: True makes it live, False never, None (default)
    only when `name` has no live version yet. Pulling a repo@commit that `name` already holds returns
    that version instead of a duplicate."""
    name = name or default_name(repo_id)
    snap, pickles = download_snapshot(repo_id, revision=revision, token=token, cache_dir=cache_dir)
    for mv in registry.versions(name):
        src = mv.metadata.get("source") or {}
        if src.get("repo") == repo_id and src.get("commit") == snap.commit:
            promoted = False
            if promote and registry.live_version(name) != mv.version:
                registry.promote(name, mv.version)
                promoted = True
            return ModelPull(
                mv, created=False, promoted=promoted, notes=[f"{repo_id}@{snap.commit[:12]} was already {mv.ref}"]
            )
    notes: list[str] = []
    if snap.offline:
        notes.append("the hub was unreachable: registered the copy found in the local Hugging Face cache")
    registry.root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pull-", dir=registry.root))  # same filesystem: hard links work
    try:
        info = _stage_model(snap, pickles, stage, notes)
        metadata: dict[str, Any] = {
            **info,
            "task": "text-generation" if info.get("causal_lm") else "encoder",
            "metrics": {},
            "source": snap.provenance(),
        }
        if notes:
            metadata["pull_notes"] = list(notes)
        try:
            mv = registry.create_version(name, lambda d: _move_all(stage, d), metadata)
        except Exception as exc:
            raise HubError(f"could not register {repo_id!r} as {name!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    promoted = False
    if promote or (promote is None and registry.live_version(name) is None):
        registry.promote(name, mv.version)
        promoted = True
    return ModelPull(mv, created=True, promoted=promoted, notes=notes)


def _move_all(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        os.replace(p, dst / p.name)


def _stage_model(snap: Snapshot, pickles: bool, out: Path, notes: list[str]) -> dict[str, Any]:
    """Writes the servable model into `out` (safetensors, configs, tokenizer, model card) and checks that
    its config and tokenizer load. Returns the facts recorded in the version's metadata."""
    from transformers import AutoConfig, AutoTokenizer

    from slm.generation import is_wordpiece

    label = f"{snap.repo_id!r} at {snap.commit[:12]}"
    info: dict[str, Any] = {}
    files = [f for f in snap.files if "/" not in f and (snap.path / f).is_file()]
    if pickles:
        try:
            info["converted_with"] = _convert_pickled_weights(snap.path, out)
        except Exception as exc:
            raise HubError(f"{label}: its PyTorch weights do not load: {type(exc).__name__}: {exc}") from exc
        notes.append(f"pickled weights ({', '.join(f for f in files if f.endswith('.bin'))}) stored as safetensors")
    for f in files:
        if (out / f).exists() or f.endswith((".bin", ".bin.index.json")):
            continue
        _place(snap.path / f, out / f, link=f.endswith(".safetensors"))
    try:
        conf = AutoConfig.from_pretrained(out, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    except Exception as exc:
        raise HubError(f"{label} has no usable config.json: {exc}") from exc
    try:
        tok = AutoTokenizer.from_pretrained(out, local_files_only=True)  # nosec B615 - local_files_only: reads a local directory, never downloads
    except Exception as exc:  # weights without a tokenizer cannot be served: say so now, not at first use
        raise HubError(f"{label}: its tokenizer does not load ({type(exc).__name__}: {exc})") from exc
    info["family"] = getattr(conf, "model_type", None) or "unknown"
    info["architectures"] = list(getattr(conf, "architectures", None) or [])
    info["causal_lm"] = _is_causal_lm(conf)
    info["tokenizer"] = tokenizer_kind(tok)
    if info["causal_lm"] and is_wordpiece(tok):
        notes.extend(_fix_wordpiece_lm(out, conf, tok))
    return info


# ---------------------------------------------------------------------------------------- datasets
PROVENANCE_FILE = "provenance.json"


def _dataset_dir(root: Path, repo_id: str, commit: str) -> Path:
    return root / "hub" / repo_id.replace("/", "--") / commit


def pull_dataset(
    repo_id: str,
    *,
    root: str | Path,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | Path | None = None,
) -> DatasetPull:
    """Downloads dataset `repo_id` at `revision` (its data files at the resolved commit), loads it with
    `datasets` and stores it under `<root>/hub/<owner>--<name>/<commit>/` (`save_to_disk` + provenance),
    from where `load_pulled_dataset` reads it offline. A commit already pulled is not fetched again."""
    from datasets import DatasetDict, load_dataset

    snap, _ = download_snapshot(repo_id, repo_type="dataset", revision=revision, token=token, cache_dir=cache_dir)
    root = Path(root)
    target = _dataset_dir(root, repo_id, snap.commit)
    if (target / PROVENANCE_FILE).exists():
        return DatasetPull(target, json.loads((target / PROVENANCE_FILE).read_text()), created=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".pull-", dir=target.parent))
    try:
        try:  # a local folder: README.md `configs`, or splits inferred from file names (train/test/...)
            ds = load_dataset(str(snap.path), cache_dir=str(stage / ".cache"))  # nosec B615 - a local snapshot folder fetched at a pinned commit by pull_dataset
        except Exception as exc:
            raise HubError(
                f"dataset {repo_id!r} at {snap.commit[:12]} does not load: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(ds, DatasetDict):
            ds = DatasetDict({"train": ds})
        ds.save_to_disk(str(stage / "data"))
        shutil.rmtree(stage / ".cache", ignore_errors=True)
        prov = snap.provenance()
        prov["splits"] = {split: d.num_rows for split, d in ds.items()}
        prov["columns"] = {split: list(d.column_names) for split, d in ds.items()}
        (stage / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2, ensure_ascii=False))
        os.rename(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return DatasetPull(target, prov, created=True)


def pulled_datasets(root: str | Path) -> list[dict[str, Any]]:
    """Provenance of every pulled dataset under `root`, newest first (each with its `path`)."""
    out = []
    for prov_file in (Path(root) / "hub").glob(f"*/*/{PROVENANCE_FILE}"):
        try:
            prov = json.loads(prov_file.read_text())
        except (OSError, ValueError):
            continue
        prov["path"] = str(prov_file.parent)
        out.append(prov)
    return sorted(out, key=lambda p: str(p.get("pulled", "")), reverse=True)


def load_pulled_dataset(root: str | Path, repo_id: str, commit: str | None = None) -> Any:
    """The DatasetDict of a pulled dataset (the newest pull unless `commit` is given), offline."""
    from datasets import load_from_disk

    for prov in pulled_datasets(root):
        if prov.get("repo") == repo_id and (commit is None or prov.get("commit") == commit):
            return load_from_disk(str(Path(prov["path"]) / "data"))
    raise HubError(f"dataset {repo_id!r} has not been pulled here; run `python manage.py pull_dataset {repo_id}`")
