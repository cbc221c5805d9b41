"""One loader for hub ids, local directories and registry versions. Offline first.

A model source is one of:
  * ``registry:<name>`` or ``registry:<name>@<version>`` — a version in the slm registry
    (``registry:<name>`` means the live one);
  * a local directory holding ``config.json`` (a ``save_pretrained`` output);
  * a Hugging Face hub id (``gpt2``, ``bert-base-chinese``...), loaded from the local HF cache. Only when
    downloads are allowed (``allow_download=True``, or the environment variable SLM_ALLOW_DOWNLOAD=1) is a
    hub id that is not cached downloaded first, through `slm.hub.download_snapshot` (the same path as
    `manage.py pull_model`; safetensors, configs and tokenizer files of the main revision). The preferred
    way to get a hub model is `pull_model`, which pins the revision and registers a registry version.

Every resolved source has a local directory, so callers load with ``local_files_only=True``.
Errors name what is missing and how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm.registry import Registry, RegistryError


class ModelNotAvailable(RuntimeError):
    """The model could not be found locally; the message says how to get it."""


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "registry" | "path" | "hub"
    path: Path | None  # directory to load from
    ref: str  # display name, e.g. "chat@v0002", "gpt2", "/models/x"
    metadata: dict[str, Any]


def downloads_allowed() -> bool:
    """SLM_ALLOW_DOWNLOAD=1 (or true/yes/on): hub ids missing from the HF cache are downloaded on first use."""
    return os.environ.get("SLM_ALLOW_DOWNLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_source(
    source: str, *, registry: Registry | None = None, allow_download: bool | None = None
) -> ResolvedSource:
    if not source:
        raise ModelNotAvailable("no model source given")
    if source.startswith("registry:"):
        if registry is None:
            raise ModelNotAvailable(f"{source!r} names a registry model but no registry is configured")
        try:
            mv = registry.resolve(source.removeprefix("registry:"))
        except RegistryError as exc:
            raise ModelNotAvailable(
                f"{exc}. Build the default models with `python manage.py bootstrap_models`."
            ) from exc
        return ResolvedSource("registry", mv.path, mv.ref, mv.metadata)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"directory {path} has no config.json; expected a `save_pretrained` output")
        return ResolvedSource("path", path.resolve(), str(path), {})
    if source.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailable(f"local model directory {source!r} does not exist")
    cached = hub_cache_path(source)
    if cached is not None:
        return ResolvedSource("hub", cached, source, {})
    if allow_download is None:
        allow_download = downloads_allowed()
    if allow_download:
        from slm.hub import HubError, download_snapshot

        try:
            snap, _ = download_snapshot(source)
        except HubError as exc:
            raise ModelNotAvailable(str(exc)) from exc
        return ResolvedSource("hub", snap.path, source, {"source": snap.provenance()})
    raise ModelNotAvailable(
        f"model {source!r} is not in the local Hugging Face cache and downloads are disabled. "
        f"On a machine with internet run `python manage.py pull_model {source}` (it registers the model as "
        f"`registry:<name>`; copy that version directory into this machine's registry), or copy a "
        f"`save_pretrained` directory here and point the setting at its path, or set SLM_ALLOW_DOWNLOAD=1 "
        f"to download hub ids on first use; or use the offline default `registry:<name>` built by "
        f"`python manage.py bootstrap_models`."
    )


def hub_cache_path(repo_id: str) -> Path | None:
    """The snapshot directory of a hub model in the local HF cache, or None. Never touches the network."""
    from slm.hub import cached_snapshot

    path = cached_snapshot(repo_id)
    return path if path is not None and (path / "config.json").exists() else None


def load_pretrained(cls: Any, source: str, *, registry: Registry | None = None, **kwargs: Any) -> Any:
    """`cls.from_pretrained` for any source kind, offline. `cls` is e.g. AutoTokenizer or GPT2LMHeadModel."""
    resolved = resolve_source(source, registry=registry)
    target = str(resolved.path) if resolved.path is not None else source
    try:
        return cls.from_pretrained(target, local_files_only=True, **kwargs)
    except OSError as exc:
        raise ModelNotAvailable(f"could not load {resolved.ref!r} with {getattr(cls, '__name__', cls)}: {exc}") from exc
