"""The prepare engine: N variants per real image for each chosen family, resumable and deterministic.

Layout of `out_dir`:
  prepare.yaml      the config of the run (a resumed run must match it, `workers` aside)
  journal.jsonl     one JSON line per finished task (output written, or error), appended and
                    flushed as tasks finish: a killed run resumes from it without redoing work
  images/<family>/  the generated images
  manifest.parquet  inputs (when `include_inputs`) + every generated image, in task order
  errors.csv        tasks that failed (unreadable input, a family that raised): listed, skipped

Every task (input image, family, variant index) draws its randomness from a seed derived from
(seed, input id, family, variant), so the outputs do not depend on worker count, order or
interruptions. All images go through one output encoder (format and quality range from the
config), fakes and benign reals alike, so the encoder cannot tell the labels apart.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepfake_moe.config import ConfigError, save_yaml, to_dict
from deepfake_moe.io import atomic_write

JOURNAL = "journal.jsonl"
MANIFEST = "manifest.parquet"
ERRORS = "errors.csv"
CONFIG = "prepare.yaml"
INPUTS_DIGEST = "inputs.sha256"  # the real inputs a run started from: a resume must see the same
IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
ERROR_COLUMNS = ["input", "family", "variant", "error"]
DONOR_TRIES = 5


@dataclass
class FamilySpec:
    name: str
    variants: int = 1  # images per real input
    options: dict = field(default_factory=dict)  # passed to the family as ctx.options


@dataclass
class PrepareConfig:
    input: str  # manifest of real images: label-0 rows are sources, other rows are passed through
    out_dir: str
    families: list[FamilySpec]
    seed: int = 0
    workers: int = 2
    include_inputs: bool = True  # copy the input rows into the output manifest
    image_format: str = "jpg"  # "jpg" | "png" | "webp"
    jpeg_quality: list[int] = field(default_factory=lambda: [75, 98])  # sampled per output image (jpg, webp)
    max_side: int | None = None  # inputs larger than this are shrunk (area interpolation) first
    plugins: list[str] = field(default_factory=list)  # modules registering extra families, imported in every worker
    faces: bool = False  # crop every input to its largest face first (out_dir/faces/), as `predict --faces` crops
    # The final output chain (augment/chain.py: downscales, colour work, mixed encoders) instead of
    # one image_format/jpeg_quality encoder; {} = the chain's defaults, null = off.
    output_chain: dict | None = None


@dataclass(frozen=True)
class Task:
    key: str  # "<input id>|<family>|<variant>": the journal's key
    input_id: str
    input_index: int  # position among the real inputs (= in the donor list)
    input_path: str
    origin: str
    family: str
    variant: int
    output: str  # relative to out_dir


# ---------------------------------------------------------------- configuration and task list


def import_plugins(modules: Iterable[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"prepare: cannot import plugin module {name!r}: {e}") from None


def validate_config(cfg: PrepareConfig) -> None:
    from deepfake_moe.augment.registry import get_family

    import_plugins(cfg.plugins)
    if not cfg.families:
        raise ConfigError("prepare: 'families' is empty; name at least one family")
    names = [f.name for f in cfg.families]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ConfigError(f"prepare: family listed twice: {dups} (use 'variants' for more images)")
    for spec in cfg.families:
        try:
            get_family(spec.name)
        except KeyError as e:
            raise ConfigError(f"prepare: {e.args[0]}") from None
        if spec.variants < 1:
            raise ConfigError(f"prepare: family {spec.name!r}: variants must be >= 1, got {spec.variants}")
        if not isinstance(spec.options, dict):
            raise ConfigError(f"prepare: family {spec.name!r}: options must be a mapping")
    if cfg.image_format not in IMAGE_FORMATS:
        raise ConfigError(f"prepare: image_format must be one of {sorted(IMAGE_FORMATS)}, got {cfg.image_format!r}")
    q = list(cfg.jpeg_quality)
    if len(q) != 2 or not all(isinstance(v, int) and 1 <= v <= 100 for v in q) or q[0] > q[1]:
        raise ConfigError(f"prepare: jpeg_quality must be [low, high] with 1 <= low <= high <= 100, got {q}")
    if cfg.seed < 0:
        raise ConfigError(f"prepare: seed must be >= 0, got {cfg.seed}")
    if cfg.max_side is not None and cfg.max_side < 8:
        raise ConfigError(f"prepare: max_side must be >= 8 or null, got {cfg.max_side}")
    if cfg.output_chain is not None:
        from deepfake_moe.augment.chain import OutputChain

        try:
            OutputChain.from_dict(cfg.output_chain)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"prepare: {e}") from None


def input_id(path: str, base: Path) -> str:
    """A stable id for an input: its path relative to the input manifest's folder when inside it."""
    rel = os.path.relpath(path, base)
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def output_name(input_key: str, input_path: str, variant: int, ext: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(input_path).stem)[:60]
    digest = hashlib.sha1(input_key.encode()).hexdigest()[:10]
    return f"{stem}-{digest}-{variant}.{ext}"


def build_tasks(cfg: PrepareConfig, reals: pd.DataFrame, base: Path) -> list[Task]:
    tasks = []
    for index, (path, origin) in enumerate(zip(reals["path"], reals["origin"])):
        iid = input_id(path, base)
        for spec in cfg.families:
            for k in range(spec.variants):
                out = f"images/{spec.name}/{output_name(iid, path, k, cfg.image_format)}"
                tasks.append(Task(f"{iid}|{spec.name}|{k}", iid, index, path, origin, spec.name, k, out))
    return tasks


def task_seed(seed: int, input_key: str, family: str, variant: int) -> np.random.SeedSequence:
    digest = hashlib.sha256(f"{input_key}\0{family}\0{variant}".encode()).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.SeedSequence([seed, *words])


# ---------------------------------------------------------------- the work of one task


@dataclass
class WorkerState:
    out_dir: str
    seed: int
    image_format: str
    quality: tuple[int, int]
    max_side: int | None
    options: dict[str, dict]
    donors: list[tuple[str, str]]  # (input id, path) of every real input
    plugins: list[str] = field(default_factory=list)
    output_chain: dict | None = None


_STATE: WorkerState | None = None


def init_worker(state: WorkerState) -> None:
    global _STATE
    _STATE = state
    _read_input.cache_clear()
    import_plugins(state.plugins)
    try:  # one thread per worker process: the pool is the parallelism
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    import torch  # the generator families run torch nets: two workers x two threads oversubscribe 2 cores

    torch.set_num_threads(1)


_DECODER = None


def _decoder():
    """This process's decode pool: inputs are untrusted files, decoded in a capped worker kept between them."""
    global _DECODER
    if _DECODER is None:
        from deepfake_moe.data.decode_pool import DecodePool
        from deepfake_moe.data.image_io import ImageReader

        _DECODER = DecodePool(ImageReader(), 1)
    return _DECODER


@lru_cache(maxsize=8)  # tasks come input by input: a few images are enough, even large ones
def _read_input(path: str, max_side: int | None) -> np.ndarray:
    import cv2

    from deepfake_moe.data.decode_pool import decoded_image

    rgb = decoded_image(_decoder().call(path), path)
    h, w = rgb.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    rgb.setflags(write=False)  # shared by the cache: families must not edit their input in place
    return rgb


class DonorPicker:
    """Another real input, chosen by the family's rng; unreadable donors are skipped deterministically."""

    def __init__(self, donors: list[tuple[str, str]], exclude: int, max_side: int | None):
        self.donors = donors
        self.exclude = exclude  # the index of the input itself
        self.max_side = max_side

    def __call__(self, rng: np.random.Generator) -> tuple[str, np.ndarray]:
        from deepfake_moe.data.image_io import ImageReadError

        others = len(self.donors) - 1
        if others < 1:
            raise ValueError("no donor: this family needs at least two real inputs")
        start = int(rng.integers(others))
        failures = []
        for i in range(min(DONOR_TRIES, others)):
            j = (start + i) % others
            donor_id, path = self.donors[j + (j >= self.exclude)]  # every input but this one
            try:
                return donor_id, _read_input(path, self.max_side).copy()
            except ImageReadError as e:
                failures.append(e.reason)
        raise ValueError(f"no readable donor among {len(failures)} tried: {failures}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode(rgb: np.ndarray, fmt: str, rng: np.random.Generator, quality: tuple[int, int]) -> tuple[bytes, dict]:
    """The one output encoder every generated image goes through."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(rgb).save(buf, "PNG", compress_level=6)
        return buf.getvalue(), {"format": fmt}
    q = int(rng.integers(quality[0], quality[1] + 1))
    Image.fromarray(rgb).save(buf, IMAGE_FORMATS[fmt], quality=q)
    return buf.getvalue(), {"format": fmt, "quality": q}


def _encode_output(image: np.ndarray, task: Task, state: WorkerState, rng: np.random.Generator) -> tuple[bytes, str, dict]:
    """(bytes, output path, record): the output chain when configured (it picks the format), else the one encoder."""
    if state.output_chain is None:
        data, enc = encode(image, state.image_format, rng, state.quality)
        return data, task.output, enc
    from deepfake_moe.augment.chain import OutputChain, finish

    data, ext, enc = finish(image, rng, OutputChain.from_dict(state.output_chain))
    return data, str(Path(task.output).with_suffix("." + ext)), enc


def run_task(task: Task, state: WorkerState) -> dict[str, Any]:
    """Make, encode and write one output; any failure becomes an error record, never an exception."""
    from deepfake_moe.augment.registry import AugmentContext, get_family

    record: dict[str, Any] = {"key": task.key}
    try:
        family = get_family(task.family)
        rgb = _read_input(task.input_path, state.max_side).copy()  # the cached one stays pristine
        family_seq, encode_seq = task_seed(state.seed, task.input_id, task.family, task.variant).spawn(2)
        ctx = AugmentContext(
            donor=DonorPicker(state.donors, task.input_index, state.max_side),
            options=dict(state.options.get(task.family) or {}),
        )
        result = family.fn(rgb, np.random.default_rng(family_seq), ctx)
        image = np.asarray(result.image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"family returned {image.dtype} {image.shape}, not an RGB uint8 image")
        data, output, enc = _encode_output(np.ascontiguousarray(image), task, state, np.random.default_rng(encode_seq))
        params = {"family": result.params, "encoding": enc, "variant": task.variant, "input": task.input_id}
        params_json = json.dumps(params, sort_keys=True, default=_json_default)
        with atomic_write(Path(state.out_dir) / output, "wb") as f:
            f.write(data)
        record.update(path=output, label=int(family.label), source=task.family, origin=task.origin, params=params_json)
    except Exception as e:  # noqa: BLE001 - one bad input or family must not stop the run
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        record["error"] = f"{type(e).__name__}: {reason}"
        if getattr(e, "path", None) == task.input_path:  # an ImageReadError of the input itself
            record["input_unreadable"] = True
    return record


def run_batch(tasks: list[Task]) -> list[dict[str, Any]]:
    assert _STATE is not None, "worker not initialised"
    return [run_task(t, _STATE) for t in tasks]


# ---------------------------------------------------------------- the journal


def load_journal(path: Path) -> dict[str, dict]:
    """Finished tasks by key. A torn last line (the run was killed mid-write) is cut off."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    good_bytes = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
                key = record["key"]
            except (ValueError, KeyError, TypeError):
                break
            done[key] = record
            good_bytes += len(line)
    if good_bytes < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return done


def drop_errors(path: Path, done: dict[str, dict]) -> dict[str, dict]:
    kept = {k: r for k, r in done.items() if not r.get("error")}
    with atomic_write(path) as f:
        for record in kept.values():
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return kept


# ---------------------------------------------------------------- execution


def execute(tasks: list[Task], state: WorkerState, workers: int) -> Iterator[dict[str, Any]]:
    """Records of the finished tasks, in completion order."""
    if workers <= 1 or len(tasks) <= 1:
        init_worker(state)
        try:
            for t in tasks:
                yield run_task(t, state)
        finally:
            _decoder().close()
        return
    yield from _execute_pool(tasks, state, workers)


def _batches(tasks: list[Task], size: int) -> Iterable[list[Task]]:
    for i in range(0, len(tasks), size):
        yield tasks[i : i + size]


def worker_context() -> multiprocessing.context.BaseContext:
    """Workers start clean (no inherited threads, CUDA state or open files, unlike fork).

    forkserver where the OS has it: a server process imports the package once and forks each
    worker from it, so starting a pool (again, after a worker crash) costs little; spawn elsewhere.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["deepfake_moe.augment.prepare", "deepfake_moe.augment.preload"])
        return context
    return multiprocessing.get_context("spawn")


def _execute_pool(tasks: list[Task], state: WorkerState, workers: int) -> Iterator[dict[str, Any]]:
    context = worker_context()

    def new_pool() -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker, initargs=(state,))

    size = max(1, min(16, len(tasks) // (workers * 8)))
    queue = deque(_batches(tasks, size))
    suspects: deque[Task] = deque()  # in flight when a worker process died
    pool = new_pool()
    try:
        running: dict[cf.Future, list[Task]] = {}
        while queue or running:
            # A worker may die between two submissions, while this generator waits at a yield: submit() then
            # raises, and the batch stays queued.
            try:
                while queue and len(running) < workers * 3:
                    future = pool.submit(run_batch, queue[0])
                    running[future] = queue.popleft()
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    records = future.result()
                    running.pop(future)
                    yield from records
            except BrokenProcessPool:
                suspects.extend(t for batch in running.values() for t in batch)
                running.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
        # Each suspect alone, so a crash now is that task's own and takes no other task down.
        while suspects:
            task = suspects.popleft()
            try:
                yield from pool.submit(run_batch, [task]).result()
            except BrokenProcessPool:
                yield {"key": task.key, "error": "worker process died while running this task"}
                pool.shutdown(wait=True, cancel_futures=True)
                pool = new_pool()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the run


def _comparable(cfg: PrepareConfig) -> dict:
    d = to_dict(cfg)
    d.pop("workers", None)
    d.pop("out_dir", None)
    return d


def _check_resume(cfg: PrepareConfig, out: Path) -> None:
    from deepfake_moe.config import load_yaml

    saved_path = out / CONFIG
    if not saved_path.exists():
        return
    saved = _comparable(load_yaml(PrepareConfig, saved_path))
    now = _comparable(cfg)
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(
            f"{out} holds a prepare run with a different config (differs in {changed}); "
            "use a new out_dir, or delete the old one to start over"
        )


def _check_inputs(out: Path, reals: pd.DataFrame, base: Path) -> None:
    """Refuse to resume over a changed list of real inputs: donors and ids would no longer match."""
    ids = "\n".join(f"{input_id(p, base)}\t{o}" for p, o in zip(reals["path"], reals["origin"]))
    digest = hashlib.sha256(ids.encode()).hexdigest()
    path = out / INPUTS_DIGEST
    if path.exists() and path.read_text().strip() != digest:
        raise ConfigError(
            f"{out} was started from a different list of real inputs (the input manifest changed); "
            "use a new out_dir, or delete the old one to start over"
        )
    if not path.exists():
        with atomic_write(path) as f:
            f.write(digest + "\n")


def run_prepare(cfg: PrepareConfig, progress: bool = True, retry_errors: bool = False) -> pd.DataFrame:
    """Run (or resume) a prepare job; returns the output manifest (absolute paths).

    Workers are spawned processes: a script calling this with workers > 1 needs the usual
    `if __name__ == "__main__":` guard, and families defined outside the package must be in a
    module named in `cfg.plugins` so that every worker registers them too.

    `retry_errors` runs again the tasks a previous run listed as failed (default: they stay failed,
    so a resumed run ends exactly like an uninterrupted one).
    """
    from deepfake_moe.data.manifest import ManifestError, check_files, read_manifest

    validate_config(cfg)
    out = Path(cfg.out_dir).resolve()
    input_path = Path(cfg.input).resolve()
    if input_path == out / MANIFEST:
        raise ConfigError("prepare: the input manifest is this run's own output; use another out_dir")
    inputs = read_manifest(input_path)
    reals = inputs[inputs["label"] == 0]
    if reals.empty:
        raise ManifestError(f"{cfg.input}: no real (label 0) rows to make variants from")
    check_files(inputs if cfg.include_inputs else reals, what=str(cfg.input))
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
    save_yaml(cfg, out / CONFIG)
    if cfg.faces:  # reals, passed-through rows and fakes alike are face crops (images without a face drop out)
        from deepfake_moe.data.face_crops import crop_manifest

        input_path, _ = crop_manifest(inputs, out / "faces", progress)
        inputs = read_manifest(input_path)
        reals = inputs[inputs["label"] == 0]

    base = input_path.parent
    tasks = build_tasks(cfg, reals, base)
    _check_inputs(out, reals, base)
    journal_path = out / JOURNAL
    done = load_journal(journal_path)
    if retry_errors:
        done = drop_errors(journal_path, done)
    # an output deleted since it was journaled is made again (same task, same bytes)
    done = {k: r for k, r in done.items() if r.get("error") or (out / r["path"]).is_file()}
    pending = [t for t in tasks if t.key not in done]
    state = WorkerState(
        out_dir=str(out),
        seed=cfg.seed,
        image_format=cfg.image_format,
        quality=(int(cfg.jpeg_quality[0]), int(cfg.jpeg_quality[1])),
        max_side=cfg.max_side,
        options={f.name: dict(f.options) for f in cfg.families},
        donors=[(input_id(p, base), p) for p in reals["path"]],
        plugins=list(cfg.plugins),
        output_chain=None if cfg.output_chain is None else dict(cfg.output_chain),
    )
    _run_journaled(tasks, pending, done, state, cfg.workers, journal_path, progress)
    return _write_outputs(cfg, out, inputs, tasks, done)


def _run_journaled(
    tasks: list[Task], pending: list[Task], done: dict[str, dict], state: WorkerState, workers: int,
    journal_path: Path, progress: bool,
) -> None:
    """Run the pending tasks, appending each result to the journal as it comes (and to `done`)."""
    from tqdm import tqdm

    errors = sum(1 for t in tasks if done.get(t.key, {}).get("error"))
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(pending), unit="img", desc="prepare", disable=not progress, file=sys.stderr)
    try:
        with open(journal_path, "a", encoding="utf-8") as journal:
            for record in execute(pending, state, workers):
                journal.write(json.dumps(record, sort_keys=True) + "\n")
                journal.flush()  # a killed run loses at most the task in hand
                done[record["key"]] = record
                errors += bool(record.get("error"))
                bar.update(1)
                if errors:
                    bar.set_postfix(errors=errors, refresh=False)
            os.fsync(journal.fileno())
    finally:
        bar.close()


def _write_outputs(
    cfg: PrepareConfig, out: Path, inputs: pd.DataFrame, tasks: list[Task], done: dict[str, dict]
) -> pd.DataFrame:
    """OUT/manifest.parquet (the inputs too if `include_inputs`) and OUT/errors.csv from the journal."""
    from deepfake_moe.data.manifest import normalize, write_manifest

    rows, failed, unreadable = [], [], set()
    for t in tasks:
        record = done[t.key]
        if record.get("error"):
            failed.append({"input": t.input_path, "family": t.family, "variant": t.variant, "error": record["error"]})
            if record.get("input_unreadable"):
                unreadable.add(t.input_path)
        else:
            rows.append({**{k: record[k] for k in ("label", "source", "origin", "params")},
                         "path": str(out / record["path"])})
    generated = pd.DataFrame(rows, columns=["path", "label", "source", "origin", "params"])
    parts = []
    if cfg.include_inputs:
        passed = inputs[~inputs["path"].isin(unreadable)].copy()  # listed in errors.csv instead
        if "params" not in passed.columns:
            passed["params"] = "{}"
        parts.append(passed)
    parts.append(generated)
    manifest = pd.concat(parts, ignore_index=True) if len(parts) > 1 else generated
    write_manifest(manifest, out / MANIFEST)
    with atomic_write(out / ERRORS) as f:
        pd.DataFrame(failed, columns=ERROR_COLUMNS).to_csv(f, index=False)
    return normalize(manifest)
