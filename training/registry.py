"""A versioned model registry in a directory: which models were trained for an entity, and which one serves.

Layout: ``ROOT/<entity>/<model>/v<N>/`` holds an artefact (``detectors.artefacts``) plus ``registry.json``,
the version's metadata (JSON, never pickle). The entity directory name is percent-encoded so that ids with
"/" or spaces are safe and reversible; the real id is in the metadata, which is what the registry reads.

Every write is a rename, so a reader never sees half a version and a crash leaves only hidden temp
entries, which are ignored: a version is built in ``.v<N>.*`` and renamed onto ``v<N>``, and
``registry.json`` is rewritten through a temp file and ``os.replace``. The number N is reserved by
``os.mkdir(v<N>)``, which only one writer can win, so concurrent registrations never share a number; a
crash after the reservation leaves an empty ``v<N>`` that is skipped, and its number is not reused.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from hashlib import blake2b
from pathlib import Path
from urllib.parse import quote

import numpy as np

from detectors import artefacts
from detectors.base import Detector

STATUSES = ("candidate", "champion", "retired", "rejected", "failed")
META = "registry.json"
_VERSION_DIR = re.compile(r"v([1-9][0-9]*)")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class Version:
    """One registered model version; ``registry.json`` holds every field but ``path``."""

    entity: str
    model: str
    version: int
    path: Path
    status: str
    created: float  # unix time of registration
    trained_from: float | None
    trained_to: float | None
    data_hash: str
    metrics: dict
    parent: int | None  # the version this one was retrained from, if any
    reason: str | None = None  # why the last status was set (a failure, a rejection...)

    @property
    def model_id(self) -> str:
        """The artefact's own id, e.g. ``pca@3``."""
        return f"{self.model}@{self.version}"


class Registry:
    """Model versions per entity under ``root``.

    Registration is safe under concurrency (threads or processes on one filesystem); status changes are
    single-writer: two concurrent ``promote`` calls for one entity may leave two champions, which
    ``champion`` resolves (see there).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def register(self, entity: str, detector: Detector, *, trained_from: float | None,
                 trained_to: float | None, data_hash: str, metrics: dict, parent: int | None,
                 status: str = "candidate") -> Version:
        """Store ``detector`` as the next version for (entity, model); sets ``detector.info.version``."""
        _check_status(status)
        model = _check_model(detector.info.name)
        folder = self._entity_dir(entity) / model
        folder.mkdir(parents=True, exist_ok=True)
        n = self._reserve(folder)
        final = folder / f"v{n}"
        staging = folder / f".v{n}.{uuid.uuid4().hex}"  # hidden: skipped by readers if a crash leaves it
        try:
            detector.info.version = str(n)
            artefacts.save(detector, staging)
            v = Version(entity, model, n, final, status, time.time(), trained_from, trained_to, data_hash,
                        dict(metrics), parent)
            (staging / META).write_text(_dumps(v))
            os.rename(staging, final)  # replaces the empty reservation in one step (POSIX)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            _rmdir_if_empty(final)  # give the number back: nothing refers to it
            raise
        return v

    def versions(self, entity: str | None = None) -> list[Version]:
        """Complete versions, sorted by (entity, model, version); temp and reserved entries are skipped."""
        if entity is not None:
            entities = [self._entity_dir(entity)]
        else:
            entities = [d for d in _children(self.root) if not d.name.startswith(".")]
        out = []
        for e in entities:
            for m in _children(e):
                for d in _children(m):
                    if _VERSION_DIR.fullmatch(d.name) and (d / META).is_file():
                        out.append(_read(d))
        return sorted(out, key=lambda v: (v.entity, v.model, v.version))

    def get(self, entity: str, model: str, version: int) -> Version:
        path = self._entity_dir(entity) / _check_model(model) / f"v{int(version)}"
        if not (path / META).is_file():
            raise KeyError(f"no version {model}@{version} for entity {entity!r} in {self.root}")
        return _read(path)

    def champion(self, entity: str) -> Version | None:
        """The version serving ``entity``, across model names, or None.

        Two champions exist only after a crash (or a race) inside ``promote``, between crowning the new
        one and retiring the old: the one with the highest ``created`` wins (ties: model, version). That is
        the intended outcome when promoting a newer model, which is the usual case; after a crashed
        rollback to an older model the newer one keeps serving until ``promote`` is run again, which
        retires every other champion and so repairs the state.
        """
        crowned = [v for v in self.versions(entity) if v.status == "champion"]
        return max(crowned, key=lambda v: (v.created, v.model, v.version), default=None)

    def set_status(self, entity: str, model: str, version: int, status: str, reason: str | None = None) -> Version:
        """Change a version's status (and reason, cleared when not given); the metadata is replaced atomically."""
        _check_status(status)
        v = dataclasses.replace(self.get(entity, model, version), status=status, reason=reason)
        fd, tmp = tempfile.mkstemp(prefix=f".{META}.", suffix=".tmp", dir=v.path)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_dumps(v))
            os.replace(tmp, v.path / META)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return v

    def promote(self, entity: str, model: str, version: int) -> Version:
        """Make a version the entity's champion and retire the previous one(s).

        The new champion is written first: a crash before the old one is retired leaves two champions,
        which ``champion`` resolves, rather than none, which would leave the entity unserved.
        """
        new = self.set_status(entity, model, version, "champion")
        for old in self.versions(entity):
            if old.status == "champion" and (old.model, old.version) != (new.model, new.version):
                self.set_status(entity, old.model, old.version, "retired", reason=f"replaced by {new.model_id}")
        return new

    def load(self, version: Version) -> Detector:
        return artefacts.load(version.path)

    def _entity_dir(self, entity: str) -> Path:
        return self.root / _encode(entity)

    @staticmethod
    def _reserve(folder: Path) -> int:
        """Claim the next free version number: mkdir succeeds for exactly one writer."""
        taken = [int(m.group(1)) for d in _children(folder) if (m := _VERSION_DIR.fullmatch(d.name))]
        n = max(taken, default=0) + 1
        while True:
            try:
                (folder / f"v{n}").mkdir()
                return n
            except FileExistsError:
                n += 1


def data_hash(array: np.ndarray) -> str:
    """Identify training data by content: blake2b (16 bytes) over shape, dtype and bytes."""
    a = np.ascontiguousarray(array)
    h = blake2b(digest_size=16)
    h.update(f"{a.shape}|{a.dtype.str}\n".encode())
    h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def why(v: Version) -> str | None:
    """Why this model: ``auto``'s choice as its record says (training.selection), else why its status was
    last set (a rejection, a failure); None when neither says."""
    chosen = (v.metrics or {}).get("selection")
    return chosen["why"] if isinstance(chosen, dict) and chosen.get("why") else v.reason


def table(versions: list[Version]) -> list[dict]:
    """Rows for ``vigil models`` (JSON-ready): created as ISO 8601 UTC, and why this model (``why``)."""
    return [{"entity": v.entity, "model": v.model, "version": v.version, "status": v.status,
             "created": datetime.fromtimestamp(v.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "why": why(v), "metrics": v.metrics} for v in versions]


def format_table(rows: list[dict]) -> str:
    """``table`` rows as aligned plain text, metrics as ``k=v`` with 3 significant digits (``auto``'s record
    of its candidates is in ``why`` and in ``--json``)."""
    header = ["entity", "model", "version", "status", "created", "why", "metrics"]
    cells = [header] + [[str(r["entity"]), str(r["model"]), str(r["version"]), str(r["status"]),
                         str(r["created"]), r.get("why") or "-",
                         " ".join(f"{k}={_short(x)}" for k, x in r["metrics"].items() if k != "selection")]
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _short(x) -> str:
    if isinstance(x, (int, float, np.number)) and not isinstance(x, bool):
        return f"{x:.3g}"
    return str(x)


def _encode(entity: str) -> str:
    """A safe, reversible directory name: percent-encoding, and never a leading "." (".", "..", hidden)."""
    if not entity:
        raise ValueError("entity id must not be empty")
    name = quote(entity, safe="")
    return "%2E" + name[1:] if name.startswith(".") else name


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}; known: {', '.join(STATUSES)}")


def _check_model(model: str) -> str:
    if not _MODEL_NAME.fullmatch(model):
        raise ValueError(f"model name {model!r} is not a plain name")
    return model


def _children(path: Path) -> list[Path]:
    try:
        return sorted(d for d in path.iterdir() if d.is_dir())
    except FileNotFoundError:
        return []


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _dumps(v: Version) -> str:
    meta = {f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name != "path"}
    return json.dumps(meta, indent=2, default=_plain)


def _plain(x):
    """numpy scalars and arrays in metrics become plain JSON."""
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _read(path: Path) -> Version:
    meta = json.loads((path / META).read_text())
    names = {f.name for f in dataclasses.fields(Version)} - {"path"}
    return Version(path=path, **{k: meta.get(k) for k in names})
