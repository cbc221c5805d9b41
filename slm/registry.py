"""Model registry: immutable version directories plus an atomically swapped `live` pointer.

Layout::

    <root>/<name>/<version>/            immutable once published (safetensors + metadata.json + ...)
    <root>/<name>/LIVE.json             {"version": "v0003", "history": ["v0001", "v0003"], ...}

A version is written into a temporary directory and published with `os.rename`, so readers never
see a half-written version. The live pointer is replaced with `os.replace`, so a reader sees the old
or the new pointer, never a partial file. Serving processes call `live_version()` (one small file
read) and reload when it changes: promotion needs no restart.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
LIVE_FILE = "LIVE.json"
# Names and versions are checked against these (bounded) patterns before any path is built from them: an
# over-long or malformed one from outside is "not found", never an OSError ("File name too long").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_VERSION_RE = re.compile(r"v(\d{4,9})\Z")


class RegistryError(Exception):
    pass


class VersionNotFound(RegistryError):
    pass


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.metadata.get("metrics") or {})


def utcnow_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """'chat@v0002' -> ('chat', 'v0002'); 'chat' -> ('chat', None)."""
    name, _, version = ref.partition("@")
    return name, (version or None)


def valid_name(name: object) -> bool:
    """A registry model name: 1-100 of letters, digits, '.', '_', '-' (not starting with '.', '_' or '-')."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def valid_version(version: object) -> bool:
    """A registry version: 'v' and 4 to 9 digits."""
    return isinstance(version, str) and _VERSION_RE.fullmatch(version) is not None


def shorten(value: object, limit: int = 40) -> str:
    """repr() of a (possibly huge) value from outside, cut for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_name(name: str) -> None:
    if not valid_name(name):
        raise RegistryError(f"invalid model name {shorten(name)} (1-100 letters, digits, . _ - only)")


class Registry:
    def __init__(self, root: str | os.PathLike[str], *, before_write: Callable[[], None] | None = None) -> None:
        """`before_write` is called just before a version is published or a pointer moves; it may raise to
        stop the write (the Django side passes a check that the job's RQ worker is still alive)."""
        self.root = Path(root)
        self._lock = threading.Lock()
        self._before_write = before_write or (lambda: None)

    # ----------------------------------------------------------------- reading
    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[ModelVersion]:
        _check_name(name)
        base = self.root / name
        if not base.exists():
            return []
        out = []
        for p in sorted(base.iterdir()):
            if p.is_dir() and _VERSION_RE.fullmatch(p.name) and (p / METADATA_FILE).exists():
                out.append(ModelVersion(name, p.name, p, self._read_metadata(p)))
        return out

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version by name; without version, the live one."""
        _check_name(name)
        if version is None or version == "live":
            version = self.live_version(name)
            if version is None:
                raise VersionNotFound(
                    f"model {name!r} has no live version (run `manage.py bootstrap_models` or promote one)"
                )
        if not valid_version(version):
            raise VersionNotFound(f"invalid version {shorten(version)} for model {name!r} (v and 4-9 digits)")
        path = self.root / name / version
        if not (path / METADATA_FILE).exists():
            raise VersionNotFound(f"model {name!r} has no version {version!r}")
        return ModelVersion(name, version, path, self._read_metadata(path))

    def resolve(self, ref: str) -> ModelVersion:
        name, version = parse_ref(ref)
        return self.get(name, version)

    def live_state(self, name: str) -> dict[str, Any]:
        _check_name(name)
        path = self.root / name / LIVE_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"version": None, "history": []}

    def live_version(self, name: str) -> str | None:
        return self.live_state(name).get("version")

    def live(self, name: str) -> ModelVersion | None:
        version = self.live_version(name)
        return self.get(name, version) if version else None

    @staticmethod
    def _read_metadata(path: Path) -> dict[str, Any]:
        try:
            return json.loads((path / METADATA_FILE).read_text())
        except (OSError, ValueError):
            return {}

    # ----------------------------------------------------------------- writing
    @contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        """Cross-process lock for one model name (fcntl where available)."""
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        with self._lock, open(base / ".lock", "a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - non-POSIX
                pass
            try:
                yield
            finally:
                try:
                    import fcntl

                    fcntl.flock(fh, fcntl.LOCK_UN)
                except ImportError:  # pragma: no cover
                    pass

    def _next_version(self, name: str) -> str:
        numbers = [int(m.group(1)) for p in (self.root / name).iterdir() if (m := _VERSION_RE.fullmatch(p.name))]
        return f"v{(max(numbers) + 1 if numbers else 1):04d}"

    def create_version(
        self,
        name: str,
        write: Callable[[Path], None],
        metadata: dict[str, Any],
        *,
        parent: str | None = None,
    ) -> ModelVersion:
        """Writes a new immutable version: `write(tmpdir)` saves the artifacts, then it is published.

        metadata should carry config, data hash and metrics; `created`, `parent`, `name` and
        `version` are filled in here.
        """
        _check_name(name)
        base = self.root / name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        try:
            write(tmp)
            with self._name_lock(name):
                self._before_write()
                version = self._next_version(name)
                meta = dict(metadata)
                meta.update({"name": name, "version": version, "created": utcnow_iso()})
                meta.setdefault("parent", parent)
                (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
                _fsync_dir(tmp)
                os.rename(tmp, base / version)
                for p in (base / version).rglob("*"):  # immutability, best effort
                    if p.is_file():
                        p.chmod(0o444)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(name, version)

    def _write_live(self, name: str, state: dict[str, Any]) -> None:
        base = self.root / name
        fd, tmp = tempfile.mkstemp(prefix=".live-", dir=base)
        with os.fdopen(fd, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, base / LIVE_FILE)

    def promote(self, name: str, version: str) -> ModelVersion:
        """Makes `version` live (atomic pointer swap). Promoting the live version is a no-op."""
        mv = self.get(name, version)
        with self._name_lock(name):
            self._before_write()
            state = self.live_state(name)
            if state.get("version") != version:
                history = [v for v in state.get("history", []) if v != version] + [version]
                self._write_live(name, {"version": version, "history": history, "updated": utcnow_iso()})
        return mv

    def rollback(self, name: str, version: str | None = None) -> ModelVersion:
        """Goes back to `version`, or to the version that was live before the current one."""
        _check_name(name)
        if not (self.root / name).is_dir():
            raise RegistryError(f"no model {name!r} in the registry")
        if version is not None:
            self.get(name, version)  # checked before anything is locked or written
        with self._name_lock(name):
            self._before_write()
            state = self.live_state(name)
            history: list[str] = list(state.get("history", []))
            current = state.get("version")
            if version is None:
                earlier = [v for v in history if v != current]
                if not earlier:
                    raise RegistryError(f"model {name!r} has no earlier live version to roll back to")
                version = earlier[-1]
            self.get(name, version)
            history = [v for v in history if v not in (current, version)]
            if current:
                history.append(current)
            history.append(version)
            self._write_live(name, {"version": version, "history": history, "updated": utcnow_iso()})
        return self.get(name, version)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class LiveModel:
    """Holds the loaded live version of one registry model and swaps it when the pointer moves.

    `get()` costs one small file read; when the live version changed it loads the new one with
    `loader(version)` and swaps. If loading fails, the old model keeps serving and the error is kept
    in `last_error`. Thread-safe; loads happen outside the read path of in-flight requests, which
    keep the object they already got.
    """

    def __init__(self, registry: Registry, name: str, loader: Callable[[ModelVersion], Any]) -> None:
        self.registry = registry
        self.name = name
        self.loader = loader
        self._lock = threading.Lock()
        self._version: ModelVersion | None = None
        self._model: Any = None
        self._failed: str | None = None
        self.last_error: str | None = None

    def get(self) -> tuple[ModelVersion, Any]:
        wanted = self.registry.live_version(self.name)
        if wanted is None and self._model is None:
            raise VersionNotFound(f"model {self.name!r} has no live version")
        if self._version is not None and (wanted is None or wanted == self._version.version or wanted == self._failed):
            return self._version, self._model
        with self._lock:
            if self._version is None or (wanted != self._version.version and wanted != self._failed):
                try:
                    mv = self.registry.get(self.name, wanted)
                    model = self.loader(mv)
                except Exception as exc:  # keep serving the old version
                    self._failed = wanted
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self._model is None:
                        raise
                else:
                    self._version, self._model, self._failed, self.last_error = mv, model, None, None
            return self._version, self._model  # type: ignore[return-value]
