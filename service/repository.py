"""The live model repository: which model versions exist, their state, and which one a request
gets; loading, reloading and unloading them at run time.

On disk (`IIS_MODELS_DIR`), one folder per model, either flat (one version, the card's
`version`) or with numbered version folders, as Triton's repository:

    models/resnet/model.json + model.onnx [+ golden.npz]
    models/resnet/1/model.json + model.onnx, models/resnet/2/...

A version goes loading -> ready, or -> failed with the reason (the card's field, or what
onnxruntime or the load checks said). A reload is a swap: the new runtime is loaded, validated,
warmed up and checked while the old one serves; only then does it take traffic, and the old one
is retired once the requests holding it are done. If the new one fails, the old one keeps
serving and the reason is reported. Unloading retires the runtime and drops its session.

`IIS_MODEL_CONTROL`: none (fixed at start), explicit (the /v2/repository API), poll (also
rescans the folder; a version is (re)loaded once its files have stayed the same for one poll,
so a folder being copied is not loaded half-written).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread

from service.cards import (
    CARD_FILE,
    GOLDEN_FILE,
    ONNX_FILE,
    CardError,
    ModelCard,
    read_card,
)
from service.errors import (
    InvalidRequest,
    LoadFailed,
    ModelFailed,
    ModelNotFound,
    ModelUnavailable,
)
from service.memory import give_back
from service.runtime import (
    ModelRuntime,
    check_golden,
    load_model,
    request_leases,
    warm_up,
)
from service.settings import Settings

log = logging.getLogger("service.repository")

State = Literal["loading", "ready", "unloading", "failed", "unloaded"]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_FILES = (ONNX_FILE, CARD_FILE, GOLDEN_FILE)


class Tracker(Protocol):
    """What the repository reports to (service.metrics.Metrics)."""

    def track_model(self, runtime: ModelRuntime) -> None: ...
    def untrack_model(self, name: str) -> None: ...
    def model_loaded(self, runtime: ModelRuntime) -> None: ...
    def model_failed(self, name: str, field: str) -> None: ...
    def model_unloaded(self, name: str) -> None: ...


@dataclass
class VersionEntry:
    """One version of one model, as the repository sees it."""

    name: str
    version: int
    state: State
    reason: str = ""
    runtime: ModelRuntime | None = None
    task: str | None = None
    fingerprint: str = ""  # of the files the runtime (or the failure) came from
    refused: str = ""  # of files a reload refused while this version kept serving
    since: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "task": self.task,
            "since": round(self.since, 3),
        }


def parse_ref(ref: str) -> tuple[str, int | None]:
    """ "name" or "name@3" -> (name, version or None); InvalidRequest otherwise."""
    name, sep, version = ref.partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or not 0 < int(version) < 2**31:
        raise InvalidRequest(f"model {ref!r}: the version after '@' must be a positive integer")
    return name, int(version)


class ModelRegistry:
    """Every model version the server knows, the default model per task, and the one
    `get(task, "name[@version]")` hands a request (the pinned version, else the newest ready)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[int, VersionEntry]] = {}
        self.defaults: dict[str, str] = {}
        self.loading = True  # until the start-up scan has loaded what it found
        self.expected: list[str] = []
        self.preferred: Sequence[str] = ()

    # --- the serving view ---------------------------------------------------------------

    def newest_ready(self, name: str) -> ModelRuntime | None:
        for version in sorted(self.entries.get(name, {}), reverse=True):
            entry = self.entries[name][version]
            if entry.state == "ready" and entry.runtime is not None:
                return entry.runtime
        return None

    @property
    def models(self) -> dict[str, ModelRuntime]:
        """name -> the runtime a request without a version gets."""
        out = {}
        for name in sorted(self.entries):
            runtime = self.newest_ready(name)
            if runtime is not None:
                out[name] = runtime
        return out

    @property
    def failed(self) -> dict[str, str]:
        """ "name@version" -> why it is not served (load failures and failed reloads)."""
        return {
            f"{e.name}@{e.version}": e.reason
            for versions in self.entries.values()
            for e in versions.values()
            if e.reason and e.state in ("failed", "ready")
        }

    @property
    def pending(self) -> list[str]:
        return [n for n in self.expected if self.newest_ready(n) is None]

    @property
    def ready(self) -> bool:
        return (
            not self.loading
            and bool(self.defaults)
            and all(self.newest_ready(n) is not None for n in self.defaults.values())
        )

    def get(self, task: str, ref: str | None) -> ModelRuntime:
        """The runtime for a request; the request holds it until its response is sent."""
        runtime = self._resolve(task, ref)
        held = request_leases.get()
        if held is not None:
            runtime.acquire()
            held.append(runtime)
        return runtime

    def _resolve(self, task: str, ref: str | None) -> ModelRuntime:
        if ref is None:
            name = self.defaults.get(task)
            if name is None:
                if self.loading:
                    raise ModelUnavailable("models are still loading", headers={"Retry-After": "2"})
                raise ModelNotFound(f"no {task} model is installed on this server")
            version = None
        else:
            name, version = parse_ref(ref)
        versions = self.entries.get(name, {})
        entry = versions.get(version) if version is not None else None
        if version is None:
            runtime = self.newest_ready(name)
            if runtime is not None:
                return self._of_task(runtime, task)
            entry = versions[max(versions)] if versions else None
        if entry is None:
            choices = sorted(n for n, r in self.models.items() if r.card.task == task)
            what = f"{name}@{version}" if version is not None else repr(name)
            raise ModelNotFound(
                f"no {task} model {what}; available: {', '.join(choices) or 'none'}"
            )
        if entry.state == "ready" and entry.runtime is not None:
            return self._of_task(entry.runtime, task)
        if entry.state == "loading":
            raise ModelUnavailable(
                f"model {entry.name}@{entry.version} is still loading", headers={"Retry-After": "2"}
            )
        if entry.state == "failed":
            raise ModelFailed(f"model {entry.name}@{entry.version} failed to load: {entry.reason}")
        raise ModelNotFound(f"model {entry.name}@{entry.version} is {entry.state}")

    def _of_task(self, runtime: ModelRuntime, task: str) -> ModelRuntime:
        if runtime.card.task != task:
            choices = sorted(n for n, r in self.models.items() if r.card.task == task)
            raise ModelNotFound(
                f"{runtime.name} is a {runtime.card.task} model, not {task}; {task} models: "
                f"{', '.join(choices) or 'none'}"
            )
        return runtime

    def refresh_defaults(self) -> None:
        cards = [r.card for r in self.models.values()]
        # a preferred model still loading keeps its place, so readiness waits for it
        loading: list[tuple[str, str]] = [
            (e.name, e.task)
            for versions in self.entries.values()
            for e in versions.values()
            if e.state == "loading" and e.task and e.name in self.preferred
        ]
        ready: list[tuple[str, str]] = [(c.name, c.task) for c in cards]
        self.defaults = pick_defaults(ready + loading, self.preferred)

    def index(self) -> list[VersionEntry]:
        return [e for n in sorted(self.entries) for _, e in sorted(self.entries[n].items())]


def pick_defaults(
    models: Iterable[tuple[str, str] | ModelCard], preferred: Sequence[str]
) -> dict[str, str]:
    """task -> model name: the preferred names first, else the first model per task by name."""
    pairs = [m if isinstance(m, tuple) else (m.name, m.task) for m in models]
    by_name = dict(pairs)
    defaults: dict[str, str] = {}
    for name in preferred:
        if name in by_name:
            defaults.setdefault(by_name[name], name)
    for name, task in sorted(pairs):
        defaults.setdefault(task, name)
    return defaults


def fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a version folder's files: changes when any file
    is rewritten, renamed in or removed."""
    parts = []
    try:
        for path in sorted(folder.iterdir()):
            st = path.stat()
            parts.append(f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    except OSError:
        return ""
    return "|".join(parts)


def _flat_version(folder: Path) -> int:
    """The version a flat folder's card declares (1 when unreadable: the load reports why)."""
    try:
        raw = json.loads((folder / CARD_FILE).read_bytes()[: 4 * 1024 * 1024])
        value = raw.get("version", 1) if isinstance(raw, dict) else 1
        return int(value) if str(value).isdigit() and 0 < int(value) < 2**31 else 1
    except (OSError, ValueError):
        return 1


def scan_model(folder: Path) -> dict[int, Path]:
    """version -> folder holding model.json, for one model folder (flat or versioned)."""
    if (folder / CARD_FILE).is_file():
        return {_flat_version(folder): folder}
    found = {}
    for sub in folder.iterdir() if folder.is_dir() else ():
        if sub.name.isdigit() and 0 < int(sub.name) < 2**31 and (sub / CARD_FILE).is_file():
            found[int(sub.name)] = sub
    return found


def scan(models_dir: Path) -> dict[str, dict[int, Path]]:
    """Every model folder under models_dir (dot-names are work in progress: skipped)."""
    if not models_dir.is_dir():
        return {}
    out = {}
    for folder in sorted(models_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or not NAME.match(folder.name):
            continue
        versions = scan_model(folder)
        if versions:
            out[folder.name] = versions
    return out


def _build(folder: Path, name: str, version: int, settings: Settings) -> ModelRuntime:
    """Blocking: card, session, warm-up checks, golden check. Raises CardError."""
    loaded = read_card(folder, name)
    if loaded.card.version != version:  # a numbered folder's number is the version
        loaded = loaded.model_copy(
            update={"card": loaded.card.model_copy(update={"version": version})}
        )
    runtime = load_model(loaded, settings, version)
    warm_up(runtime, settings.warmup_runs)
    check_golden(runtime)
    return runtime


class ModelRepository:
    """Keeps the registry in step with the models folder and the repository API's requests."""

    def __init__(self, registry: ModelRegistry, settings: Settings, tracker: Tracker) -> None:
        self.registry = registry
        self.settings = settings
        self.tracker = tracker
        self.models_dir = settings.models_dir
        self._locks: dict[str, asyncio.Lock] = {}
        self._build_lock = asyncio.Lock()  # one load at a time: bounded CPU and memory
        self._seen: dict[tuple[str, int], str] = {}  # poll mode: fingerprints of the last scan
        self._held_off: dict[str, str] = {}  # unloaded by request: ignored until they change
        self._retiring: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        registry.preferred = settings.default_models
        registry.expected = list(settings.expected_models)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything in the models folder; then, in poll mode, keep watching it."""
        try:
            found = await anyio.to_thread.run_sync(scan, self.models_dir)
            for name, versions in found.items():
                for version in versions:  # so readiness waits for models not yet loaded
                    self._entry(name, version, "loading")
            self.registry.refresh_defaults()
            for name in found:
                await self.sync(name, found[name], force=True)
        finally:
            self.registry.loading = False
        if not found:
            log.warning(
                "no models found in %s: build them with python -m scripts build-models",
                self.models_dir,
            )
        if self.settings.model_control == "poll":
            self._poller = asyncio.create_task(self._poll_loop(), name="model-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._retiring):
            task.cancel()
        for versions in self.registry.entries.values():
            for entry in versions.values():
                if entry.runtime is not None:
                    await entry.runtime.batcher.close(drain_timeout=5.0)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:  # a poll must never stop polling
                log.exception("model repository poll failed")

    async def poll_once(self) -> None:
        found = await anyio.to_thread.run_sync(scan, self.models_dir)
        prints = {
            (n, v): await anyio.to_thread.run_sync(fingerprint, p)
            for n, versions in found.items()
            for v, p in versions.items()
        }
        settled = {key: fp for key, fp in prints.items() if self._seen.get(key) == fp}
        self._seen = prints
        for name in sorted(set(found) | set(self.registry.entries)):
            if name in self._held_off:
                state = "|".join(sorted(fp for (n, _), fp in prints.items() if n == name))
                if state == self._held_off[name]:
                    continue
                del self._held_off[name]
            on_disk = found.get(name, {})
            stable = {v: p for v, p in on_disk.items() if (name, v) in settled}
            if len(stable) < len(on_disk):
                continue  # something is still being written: wait for it to settle
            known = self.registry.entries.get(name, {})
            changed = set(stable) != set(known) or any(
                settled[(name, v)] not in (known[v].fingerprint, known[v].refused) for v in stable
            )
            if changed:
                await self.sync(name, stable)

    # --- load / unload --------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _entry(self, name: str, version: int, state: State) -> VersionEntry:
        versions = self.registry.entries.setdefault(name, {})
        entry = versions.get(version)
        if entry is None:
            entry = versions[version] = VersionEntry(name, version, state)
        return entry

    async def sync(
        self, name: str, on_disk: Mapping[int, Path] | None = None, *, force: bool = False
    ) -> list[VersionEntry]:
        """Make `name`'s loaded versions match its folder: load new and changed versions (all of
        them with force), retire the ones whose folder is gone. -> the entries touched."""
        async with self._lock(name):
            return await self._sync(name, on_disk, force=force)

    async def _sync(
        self, name: str, on_disk: Mapping[int, Path] | None, *, force: bool
    ) -> list[VersionEntry]:
        """sync, with the name's lock held."""
        if on_disk is None:
            on_disk = await anyio.to_thread.run_sync(scan_model, self.models_dir / name)
        touched = []
        for version, folder in sorted(on_disk.items()):
            fp = await anyio.to_thread.run_sync(fingerprint, folder)
            current = self.registry.entries.get(name, {}).get(version)
            if (
                not force
                and current is not None
                and fp in (current.fingerprint, current.refused)
                and current.state != "loading"
            ):
                continue
            touched.append(await self._load_version(name, version, folder, fp))
        known = self.registry.entries.get(name, {})
        serving_on_disk = any(known[v].state == "ready" for v in on_disk if v in known)
        for version in sorted(set(known) - set(on_disk)):
            if on_disk and not serving_on_disk and known[version].state == "ready":
                continue  # its replacement failed: the old version keeps serving
            touched.append(await self._unload_version(name, version))
        if not self.registry.entries.get(name):
            self.registry.entries.pop(name, None)
        self._publish(name)
        return touched

    async def _load_version(self, name: str, version: int, folder: Path, fp: str) -> VersionEntry:
        entry = self._entry(name, version, "loading")
        old = entry.runtime if entry.state == "ready" else None
        if old is None:
            entry.state, entry.reason, entry.since = "loading", "", time.time()
        started = time.perf_counter()
        async with self._build_lock:
            try:
                runtime = await anyio.to_thread.run_sync(
                    _build, folder, name, version, self.settings
                )
            except CardError as exc:
                return self._failed(entry, old, fp, exc.field, str(exc))
            except Exception as exc:  # a bug of ours, not the model's: say so, keep serving
                log.exception("model %s@%d: unexpected error while loading", name, version)
                return self._failed(entry, old, fp, "internal", f"{type(exc).__name__}: {exc}")
        runtime.batcher.start()
        runtime.ready = True
        entry.runtime, entry.state, entry.reason = runtime, "ready", ""
        entry.task, entry.fingerprint, entry.since = runtime.card.task, fp, time.time()
        entry.refused = ""
        self.tracker.model_loaded(runtime)
        log.info(
            "model %s (%s) %s: load %.0f ms, warm-up %.0f ms, checks %.0f ms (%.0f ms in all)",
            runtime.ref,
            runtime.card.task,
            "reloaded" if old else "ready",
            runtime.load_ms,
            runtime.warmup_ms,
            runtime.check_ms,
            (time.perf_counter() - started) * 1000,
        )
        if old is not None:
            self._retire(old)
        return entry

    def _failed(
        self, entry: VersionEntry, old: ModelRuntime | None, fp: str, field: str, reason: str
    ) -> VersionEntry:
        self.tracker.model_failed(entry.name, field)
        if old is not None:
            entry.refused = fp  # poll retries only when the files change again
            entry.reason = f"reload refused, version still serves the previous files: {reason}"
            log.error("model %s@%d: reload refused: %s", entry.name, entry.version, reason)
        else:
            entry.fingerprint = fp
            entry.state, entry.reason, entry.since = "failed", reason, time.time()
            log.error("model %s@%d failed to load: %s", entry.name, entry.version, reason)
        return entry

    async def _unload_version(self, name: str, version: int) -> VersionEntry:
        entry = self.registry.entries[name].pop(version)
        self._seen.pop((name, version), None)
        if entry.runtime is not None:
            entry.state = "unloading"
            runtime, entry.runtime = entry.runtime, None
            self._retire(runtime)
            self.tracker.model_unloaded(name)
        entry.state, entry.since = "unloaded", time.time()
        log.info("model %s@%d unloaded", name, version)
        return entry

    def _retire(self, runtime: ModelRuntime) -> None:
        task = asyncio.create_task(self._close(runtime))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close(self, runtime: ModelRuntime) -> None:
        await runtime.retire(self.settings.request_timeout_s)
        del runtime  # the last reference: the session's memory is free once collected
        await anyio.to_thread.run_sync(give_back)

    def _publish(self, name: str) -> None:
        self.registry.refresh_defaults()
        runtime = self.registry.newest_ready(name)
        if runtime is not None:
            self.tracker.track_model(runtime)
        elif not self.registry.entries.get(name):
            self.tracker.untrack_model(name)

    async def load(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """The repository API's load: write the files sent with it (if any), then load every
        version of `name` from its folder. LoadFailed names the field when a version fails."""
        self._check_allowed()
        if not NAME.match(name):
            raise InvalidRequest(f"model name {name!r}: letters, digits, '.', '_', '-' only")
        files = parse_files(parameters or {})
        if files:
            await self._write_and_load(name, files)
            return
        folder = self.models_dir / name
        on_disk = await anyio.to_thread.run_sync(scan_model, folder)
        if not on_disk:
            raise ModelNotFound(
                f"no model folder {name}/ with a {CARD_FILE} in the repository; send its files "
                "with the load request, or copy the folder in first"
            )
        self._held_off.pop(name, None)
        touched = await self.sync(name, on_disk, force=True)
        self._raise_failures(name, touched)

    async def _write_and_load(self, name: str, files: Mapping[str, bytes]) -> None:
        # under the name's lock from writing to loading: two loads of one model do not interleave
        async with self._lock(name):
            final = self.models_dir / name
            _, aside = await anyio.to_thread.run_sync(_stage, self.models_dir, name, files)
            self._held_off.pop(name, None)
            touched = await self._sync(name, None, force=True)
            if any(e.reason for e in touched):
                # keep the disk in step with what serves: the old files come back
                if aside is not None:
                    await anyio.to_thread.run_sync(_restore, final, aside)
                await self._sync(name, None, force=False)
                self._raise_failures(name, touched)
            elif aside is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, aside, True)

    def _raise_failures(self, name: str, touched: Sequence[VersionEntry]) -> None:
        failures = [e for e in touched if e.reason]
        if failures:
            raise LoadFailed("; ".join(f"model {e.name}@{e.version}: {e.reason}" for e in failures))

    async def unload(self, name: str) -> None:
        self._check_allowed()
        if name not in self.registry.entries:
            raise ModelNotFound(f"model {name!r} is not loaded")
        async with self._lock(name):
            for version in sorted(self.registry.entries.get(name, {})):
                await self._unload_version(name, version)
            self.registry.entries.pop(name, None)
            folder = self.models_dir / name
            on_disk = await anyio.to_thread.run_sync(scan_model, folder)
            prints = [await anyio.to_thread.run_sync(fingerprint, p) for p in on_disk.values()]
            self._held_off[name] = "|".join(sorted(prints))
            self._publish(name)

    def _check_allowed(self) -> None:
        if self.settings.model_control == "none":
            from service.errors import ModelControlDisabled

            raise ModelControlDisabled(
                "this server runs with IIS_MODEL_CONTROL=none: its models are fixed at start-up"
            )

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model folder and every known version: Triton's repository index entries."""
        rows: dict[tuple[str, int], dict[str, Any]] = {}
        for name, versions in scan(self.models_dir).items():
            for version in versions:
                rows[(name, version)] = {
                    "name": name,
                    "version": str(version),
                    "state": "UNAVAILABLE",
                    "reason": "unloaded",
                }
        for entry in self.registry.index():
            rows[(entry.name, entry.version)] = {
                "name": entry.name,
                "version": str(entry.version),
                "state": _TRITON_STATE[entry.state],
                "reason": entry.reason,
            }
        out = [rows[k] for k in sorted(rows)]
        return [r for r in out if r["state"] == "READY"] if ready_only else out


_TRITON_STATE = {
    "loading": "LOADING",
    "ready": "READY",
    "unloading": "UNLOADING",
    "failed": "UNAVAILABLE",
    "unloaded": "UNAVAILABLE",
}

_FILE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def parse_files(parameters: Mapping[str, Any]) -> dict[str, bytes]:
    """Triton's load parameters -> {relative path: bytes}. `config` is the card (model.json);
    `file:<path>` values are base64. Paths are `<file>` or `<version>/<file>`, with <file> one of
    model.onnx, model.json, golden.npz: nothing can be written outside the model's folder."""
    files: dict[str, bytes] = {}
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        path = key[len("file:") :]
        parts = path.split("/")
        if (
            not 1 <= len(parts) <= 2
            or not all(_FILE_PART.match(p) for p in parts)
            # a version folder is a version scan_model loads: 1 .. 2**31 - 1
            or (len(parts) == 2 and not (parts[0].isdigit() and 0 < int(parts[0]) < 2**31))
            or parts[-1] not in MODEL_FILES
        ):
            raise InvalidRequest(
                f"{key!r}: files are model.onnx, model.json or golden.npz, optionally under a "
                "numbered version folder (1/model.onnx); nothing else, and no path may leave "
                "the model's folder"
            )
        if not isinstance(value, str):
            raise InvalidRequest(f"{key!r}: the file's content must be a base64 string")
        try:
            files[path] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{key!r}: not valid base64") from None
    config = parameters.get("config")
    if config is not None and not files:
        raise InvalidRequest(
            "'config' alone is not supported: send it with the model's files (file:model.onnx, "
            "...), or load by name from the folder"
        )
    if files and config is not None:
        if not isinstance(config, str):
            raise InvalidRequest("'config' must be the card (model.json) as a JSON string")
        roots = {p.split("/")[0] for p in files if "/" in p} or {""}
        for root in roots:
            target = f"{root}/{CARD_FILE}" if root else CARD_FILE
            if target in files:
                raise InvalidRequest(f"both 'config' and 'file:{target}' were sent; send one")
            files[target] = config.encode()
    if files and not any(p.endswith(ONNX_FILE) for p in files):
        raise InvalidRequest(f"the files sent hold no {ONNX_FILE}")
    if files and not any(p.endswith(CARD_FILE) for p in files):
        raise InvalidRequest(f"the files sent hold no card: send 'config' or 'file:{CARD_FILE}'")
    return files


def _stage(models_dir: Path, name: str, files: Mapping[str, bytes]) -> tuple[Path, Path | None]:
    """Write the files into a hidden folder, then swap it in for models_dir/name by rename (the
    old folder set aside, returned so a failed load can put it back)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.load.", dir=models_dir))
    try:
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        staging.chmod(0o755)
        final = models_dir / name
        aside = None
        if final.exists():
            aside = models_dir / f".{name}.previous.{time.monotonic_ns()}"
            final.rename(aside)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, aside


def _restore(final: Path, aside: Path) -> None:
    broken = final.with_name(f".{final.name}.refused.{time.monotonic_ns()}")
    final.rename(broken)
    aside.rename(final)
    shutil.rmtree(broken, ignore_errors=True)
