"""Peak memory and wall time of `predict` over hostile image files, against as many ordinary ones.

In one run: `deepfake-moe predict` (default model, default workers) over one image (the model's
own footprint), over N ordinary JPEGs, and over N hostile files built by tests/hostile.py (formats
outside the list, headers that lie, decompression bombs, 1 x 60000 strips, 5000-frame GIFs, huge
TIFF tiles, multi-size containers hiding huge frames, truncated files, and legal-but-huge 81 MP
PNGs that only the per-worker memory cap stops). Memory is sampled every 20 ms over the whole
process tree: the sum of RSS (shared pages counted in every process) and of PSS (shared pages
split between the processes sharing them). Then each hostile kind is decoded alone in a one-worker
decode pool to give the slowest single file.

The cost of the cap on ordinary images, in the same run: `predict --workers 0` (decoding in the main
process, no cap) over the ordinary set, and `serve`'s upload decoding (decode and preprocess, as the
server does before scoring) in its capped processes against threads decoding in this process (how the
server decoded before), in images/s; then the hostile set through the server's capped decoders:
HTTP statuses and the peak PSS of this process and its decoders above their start.

    python benchmarks/hostile_inputs.py [--files 2000] [--workers N]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import hostile  # noqa: E402
from deepfake_moe.data.decode_pool import (  # noqa: E402
    DecodeBudget,
    DecodeFailure,
    DecodePool,
    SharedDecoders,
    default_workers,
    run_one,
)
from deepfake_moe.data.image_io import ImageLimits  # noqa: E402
from deepfake_moe.runtime import describe_cpu  # noqa: E402

LEGAL_BUT_HUGE = "legal_81mp.png"


def make_ordinary(folder: Path, n: int) -> list[Path]:
    sources = [cv2.imread(str(p)) for p in sorted((ROOT / "examples").glob("*.jpg"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = sources[i % len(sources)]
        size = (640, 480) if i % 2 else (256, 256)
        y, x = rng.integers(0, img.shape[0] - 300), rng.integers(0, img.shape[1] - 300)
        crop = cv2.resize(img[y : y + 300, x : x + 300], size, interpolation=cv2.INTER_AREA)
        p = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(p), crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def hostile_kinds() -> dict[str, bytes]:
    kinds = {name: build() for name, build in hostile.HOSTILE.items()}
    kinds[LEGAL_BUT_HUGE] = hostile.png(9000, 9000)  # passes every header check; decoding needs ~0.7 GB
    return kinds


def make_hostile(folder: Path, n: int, kinds: dict[str, bytes]) -> list[Path]:
    names = sorted(kinds)
    paths = []
    for i in range(n):
        name = names[i % len(names)]
        p = folder / f"{i:05d}_{name}"
        p.write_bytes(kinds[name])
        paths.append(p)
    return paths


class TreeMemory:
    """Peak over time of the summed RSS and PSS (MiB) of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.02):
        self.pid, self.every_s = pid, every_s
        self.peak_rss = self.peak_pss = 0.0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        parent: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                    parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [c for c, p in parent.items() if p in frontier]
            tree += frontier
        return tree

    @staticmethod
    def _mib(pid: int, path: str, field: str) -> float:
        try:
            for line in open(f"/proc/{pid}/{path}"):
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = self._tree()
            rss = sum(self._mib(p, "status", "VmRSS:") for p in pids)
            pss = sum(self._mib(p, "smaps_rollup", "Pss:") for p in pids)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, len(pids))
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_predict(paths: list[Path], folder: Path, label: str, workers: int | None) -> dict:
    listing = folder / f"{label}.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    out = folder / f"{label}.csv"
    cmd = [sys.executable, "-m", "deepfake_moe.cli", "predict", str(listing), "--out", str(out), "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    _, err = proc.communicate()
    mem.stop()
    wall = time.perf_counter() - start
    rows = list(csv.DictReader(open(out, newline=""))) if out.exists() else []
    errors = sum(1 for r in rows if r["error"])
    reasons = Counter(re.sub(r"\d[\d,]*", "N", r["error"])[:70] for r in rows if r["error"])
    if proc.returncode not in (0, 1):
        print(err, file=sys.stderr)
    return {"label": label, "files": len(paths), "rows": len(rows), "errors": errors, "exit": proc.returncode,
            "wall_s": wall, "reasons": reasons, "rss": mem.peak_rss, "pss": mem.peak_pss, "procs": mem.peak_procs}


def slowest_single_files(kinds: dict[str, bytes], folder: Path) -> list[tuple[str, float, str]]:
    """Each hostile kind decoded and preprocessed alone, as predict does: seconds and outcome."""
    from deepfake_moe.infer.faces import DecodeCrops, decode_crops
    from deepfake_moe.infer.weights import load_weights

    _, config = load_weights(None)
    task = DecodeCrops(tuple(config.views()[0]), config.image_backend, ImageLimits())
    budget = DecodeBudget(memory_mb=DecodeBudget().memory_mb // default_workers())
    out = []
    for name, data in sorted(kinds.items()):
        p = folder / f"alone_{name}"
        p.write_bytes(data)
        start = time.perf_counter()
        (result,) = list(DecodePool(task, workers=1, budget=budget).map([str(p)]))
        seconds = time.perf_counter() - start
        if isinstance(result, DecodeFailure):
            outcome = result.reason
        else:
            try:
                outcome = f"decoded, model input(s) {[tuple(x.shape) for x in decode_crops(result, task.views)[0]]}"
            except ValueError as e:
                outcome = f"a malformed result ({e})"
        out.append((name, seconds, outcome))
    return out


def serve_stage(ordinary: list[Path], bad: list[Path]) -> dict:
    """Uploads decoded as `serve` decodes them (capped processes) against in-process threads; hostile statuses."""
    from concurrent.futures import ThreadPoolExecutor

    from deepfake_moe.data.image_io import ImageReader
    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.serve.limits import ServeLimits
    from deepfake_moe.serve.uploads import DecodeUpload, refusal

    _, config = load_weights(None)
    limits = ServeLimits()
    task = DecodeUpload(ImageReader(config.image_backend, limits.image_limits()), tuple(config.views()[0]))
    decoders = SharedDecoders(task, limits.decode_threads, limits.decode)
    uploads = [(p.read_bytes(), True) for p in ordinary]
    rates = {}
    with ThreadPoolExecutor(limits.decode_threads) as pool:
        for label, fn in (("threads", lambda item: run_one(task, item)), ("capped", decoders)):
            list(pool.map(fn, uploads[: 2 * limits.decode_threads]))  # warm: workers started, caches filled
            start = time.perf_counter()
            list(pool.map(fn, uploads))
            rates[label] = len(uploads) / (time.perf_counter() - start)
        mem = TreeMemory(os.getpid())
        base = sum(TreeMemory._mib(pid, "smaps_rollup", "Pss:") for pid in mem._tree())
        start = time.perf_counter()
        results = list(pool.map(decoders, ((p.read_bytes(), True) for p in bad)))
        hostile_s = time.perf_counter() - start
        mem.stop()
    decoders.close()
    statuses = Counter((refusal(r).status, re.sub(r"\d[\d,.]*", "N", r.reason)[:60]) if isinstance(r, DecodeFailure)
                       else (200, "scored") for r in results)
    return {"threads": limits.decode_threads, "rates": rates, "statuses": statuses, "hostile_s": hostile_s,
            "pss_growth": mem.peak_pss - base, "files": len(bad)}


def print_serve(r: dict) -> None:
    threads, capped = r["rates"]["threads"], r["rates"]["capped"]
    print(f"\nserve's upload decoding ({r['threads']} at once, decode + preprocess of the default model):")
    print(f"  ordinary: {threads:.0f} img/s in threads of this process (no cap), {capped:.0f} img/s in capped "
          f"processes: capped / threads {capped / threads:.2f}x")
    print(f"  hostile: {r['files']} uploads in {r['hostile_s']:.1f} s; peak PSS of this process and its decoders "
          f"{r['pss_growth']:.0f} MiB above their start; statuses:")
    for (code, reason), n in sorted(r["statuses"].items()):
        print(f"    {code} {n:>6}  {reason}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000, help="files in each set (hostile, ordinary)")
    ap.add_argument("--workers", type=int, default=None, help="predict --workers (default: predict's default)")
    args = ap.parse_args()
    print(describe_cpu())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ordinary").mkdir()
        (tmp / "hostile").mkdir()
        kinds = hostile_kinds()
        ordinary = make_ordinary(tmp / "ordinary", args.files)
        bad = make_hostile(tmp / "hostile", args.files, kinds)
        size_mb = sum(p.stat().st_size for p in bad) / 2**20
        print(f"hostile set: {len(bad)} files, {size_mb:.1f} MiB on disk, {len(kinds)} kinds "
              f"(~{len(bad) // len(kinds)} each)")
        runs = [run_predict(ordinary[:1], tmp, "one_image", args.workers),
                run_predict(ordinary, tmp, "ordinary", args.workers),
                run_predict(bad, tmp, "hostile", args.workers),
                run_predict(ordinary, tmp, "ordinary_w0", 0)]
        base = runs[0]
        print(f"\n{'run':<10} {'files':>6} {'rows':>6} {'errors':>6} {'exit':>4} {'wall s':>8} {'ms/file':>8} "
              f"{'peak RSS MiB':>13} {'peak PSS MiB':>13} {'PSS - model':>12} {'procs':>5}")
        for r in runs:
            print(f"{r['label']:<10} {r['files']:>6} {r['rows']:>6} {r['errors']:>6} {r['exit']:>4} "
                  f"{r['wall_s']:>8.1f} {1000 * r['wall_s'] / r['files']:>8.1f} {r['rss']:>13.0f} {r['pss']:>13.0f} "
                  f"{r['pss'] - base['pss']:>12.0f} {r['procs']:>5}")
        ordinary_run, hostile_run, uncapped = runs[1], runs[2], runs[3]
        print(f"\nordinary, capped decoding processes / --workers 0 (this process, no cap): wall "
              f"{ordinary_run['wall_s'] / uncapped['wall_s']:.2f}x")
        print(f"\nhostile / ordinary: wall {hostile_run['wall_s'] / ordinary_run['wall_s']:.2f}x, "
              f"peak PSS {hostile_run['pss'] / ordinary_run['pss']:.2f}x, "
              f"peak RSS {hostile_run['rss'] / ordinary_run['rss']:.2f}x")
        print(f"hostile run above the model's own footprint (one-image run): "
              f"{(hostile_run['pss'] - base['pss']) / 1024:.2f} GiB PSS, "
              f"{(hostile_run['rss'] - base['rss']) / 1024:.2f} GiB RSS")
        print("\nerror rows of the hostile run:")
        for reason, count in hostile_run["reasons"].most_common():
            print(f"  {count:>6}  {reason}")
        print("\nslowest single files (predict's decode task, alone in a worker with predict's default cap):")
        for name, seconds, outcome in sorted(slowest_single_files(kinds, tmp), key=lambda t: -t[1]):
            print(f"  {seconds:6.2f} s  {name:<20} {outcome[:90]}")
        print_serve(serve_stage(ordinary, bad))


if __name__ == "__main__":
    main()
