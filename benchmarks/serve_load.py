"""`deepfake-moe serve` under load from concurrent clients on 127.0.0.1, against `predict` on the same images.

In one run:
  0. `predict`'s images/s on the JPEGs (the predictor as the CLI builds it, warm; the baseline);
  1. the server (its own process, built-in model, default settings) under N keep-alive clients, each
     posting one JPEG per request, for a bounded time and number of requests;
  2. the same load with malformed uploads mixed in (truncated, random bytes, empty, text, too large,
     pixel bomb, broken multipart, not multipart, huge declared body, client hanging up mid-body),
     then a check that the server still answers.
Prints requests/s, images/s, p50/p95/p99 latency, answers by status, the server's peak RSS, the mean
batch size, and the server's images/s as a share of predict's. The load generator writes raw HTTP/1.1
on asyncio sockets so that it costs the 2 shared cores as little as possible.

    python benchmarks/serve_load.py [--clients 16] [--seconds 15] [--images 256]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from deepfake_moe.runtime import describe_cpu
from predict_default import make_jpegs

BOUNDARY = b"deepfake-moe-load"
HOST = "127.0.0.1"


def multipart(name: str, data: bytes, boundary: bytes = BOUNDARY) -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode()
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n--" + boundary + b"--\r\n")


def http_post(body: bytes, content_type: bytes = b"multipart/form-data; boundary=" + BOUNDARY,
              length: int | None = None, path: bytes = b"/v1/predict") -> bytes:
    length = len(body) if length is None else length
    return (b"POST " + path + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n" + body)


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


def malformed_requests(jpeg: bytes, max_upload: int) -> list[tuple[str, bytes, str]]:
    """(label, raw request, how it ends): 'answer' waits for a reply; 'close' reads one, then reconnects;
    'hangup' sends half the request and closes the socket."""
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        ("truncated JPEG", http_post(multipart("cut.jpg", jpeg[: len(jpeg) * 2 // 5])), "answer"),
        ("random bytes", http_post(multipart("noise.jpg", noise)), "answer"),
        ("empty file", http_post(multipart("empty.jpg", b"")), "answer"),
        ("text as .jpg", http_post(multipart("notes.jpg", b"not an image\n" * 50)), "answer"),
        ("upload over the limit", http_post(multipart("big.jpg", jpeg * (max_upload // len(jpeg) + 2))), "answer"),
        ("pixel bomb header", http_post(multipart("bomb.png", png_header_only(60_000, 60_000))), "answer"),
        ("zero-size PNG", http_post(multipart("zero.png", png_header_only(0, 0))), "answer"),
        ("broken multipart", http_post(b"--" + BOUNDARY + b"\r\nno headers, no end"), "answer"),
        ("not multipart", http_post(jpeg, content_type=b"image/jpeg"), "answer"),
        ("huge declared body", http_post(b"", length=10**10), "close"),
        ("hang-up mid-body", http_post(multipart("half.jpg", jpeg))[: len(jpeg) // 2], "hangup"),
    ]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return status, body, headers.get("connection", "").lower() == "close"


class Tally:
    def __init__(self, max_requests: int):
        self.left = max_requests
        self.latency: list[float] = []
        self.status: Counter = Counter()
        self.by_kind: dict[str, Counter] = {}
        self.images = 0

    def record(self, kind: str, status: int | str, seconds: float | None) -> None:
        self.status[status] += 1
        self.by_kind.setdefault(kind, Counter())[status] += 1
        if seconds is not None:
            self.latency.append(seconds)
        if kind == "valid" and status == 200:
            self.images += 1


async def client(port: int, requests, tally: Tally, stop_at: float) -> None:
    reader = writer = None
    while time.monotonic() < stop_at and tally.left > 0:
        tally.left -= 1
        kind, raw, ending = next(requests)
        if writer is None:
            reader, writer = await asyncio.open_connection(HOST, port)
        start = time.perf_counter()
        try:
            writer.write(raw)
            await writer.drain()
            if ending == "hangup":
                tally.record(kind, "hung up", None)
                status, must_close = None, True
            else:
                status, _, must_close = await read_response(reader)
                tally.record(kind, status, time.perf_counter() - start)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            tally.record(kind, f"connection lost ({type(e).__name__})", None)
            must_close = True
        if must_close or ending != "answer":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def load(port: int, clients: int, seconds: float, max_requests: int, mix) -> tuple[Tally, float]:
    tally = Tally(max_requests)
    start = time.monotonic()
    streams = [itertools.islice(itertools.cycle(mix), i * 7, None) for i in range(clients)]
    await asyncio.gather(*(client(port, s, tally, start + seconds) for s in streams))
    return tally, time.monotonic() - start


class RssPeak(threading.Thread):
    """Samples the server's resident memory every 50 ms (Linux /proc)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self._done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.05):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
            self.peak_kb = max(self.peak_kb, rss)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak_kb / 1024


def get(port: int, path: str) -> tuple[int, dict]:
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body or b"{}")


def post_once(port: int, raw: bytes) -> int:
    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(raw)
        status, _, _ = await read_response(reader)
        writer.close()
        return status

    return asyncio.run(go())


def start_server(port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deepfake_moe.cli", "serve", "--host", HOST, "--port", str(port),
           "--no-access-log", "--log-level", "warning", "--max-upload-mb", str(args.max_upload_mb)]
    if args.weights:
        cmd += ["--weights", args.weights]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if get(port, "/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("server did not start within 300 s")


def predict_meter(paths: list[str], weights: str | None, repeat: int):
    """A function measuring the images/s of the predictor as `predict` builds it (warm), on `paths` x repeat."""
    from deepfake_moe.cli import build_parser
    from deepfake_moe.infer.commands import _predictor

    argv = ["predict", "--no-progress"] + (["--weights", weights] if weights else [])
    predictor = _predictor(build_parser().parse_args(argv), progress=False)
    predictor.predict(paths[: predictor.batch_size])  # warm-up (and the ONNX export, cached for the server)
    todo = paths * repeat

    def measure() -> float:
        start = time.perf_counter()
        predictor.predict(todo)
        return len(todo) / (time.perf_counter() - start)

    return measure


def report(name: str, tally: Tally, seconds: float, rss_mb: float, batches: tuple[int, int]) -> float:
    lat = np.array(tally.latency) * 1000
    n = sum(tally.status.values())
    p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if len(lat) else (float("nan"),) * 3
    print(f"\n{name}: {n} requests in {seconds:.1f} s = {n / seconds:.1f} requests/s, "
          f"{tally.images / seconds:.1f} images/s scored")
    print(f"  latency ms: p50 {p50:.1f}  p95 {p95:.1f}  p99 {p99:.1f}  (max {lat.max() if len(lat) else 0:.1f})")
    print(f"  answers: {dict(sorted(tally.status.items(), key=str))}")
    images, n_batches = batches
    if n_batches:
        print(f"  server: peak RSS {rss_mb:.0f} MiB, {n_batches} batches, mean batch {images / n_batches:.1f} images")
    return tally.images / seconds


def run_phase(port: int, pid: int, args, mix) -> tuple[Tally, float, float, tuple[int, int]]:
    before = get(port, "/healthz")[1]
    sampler = RssPeak(pid)
    sampler.start()
    tally, seconds = asyncio.run(load(port, args.clients, args.seconds, args.max_requests, mix))
    rss = sampler.stop()
    after = get(port, "/healthz")[1]
    scored = (after["images_scored"] - before["images_scored"], after["batches"] - before["batches"])
    return tally, seconds, rss, scored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15.0, help="per phase")
    ap.add_argument("--max-requests", type=int, default=50_000, help="per phase, whatever the time")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--malformed-every", type=int, default=3, help="phase 2: one malformed request in N")
    ap.add_argument("--max-upload-mb", type=float, default=1.0, help="the server's upload limit (phase 2 exceeds it)")
    ap.add_argument("--weights", default=None, help="default: the built-in model")
    args = ap.parse_args()

    print(describe_cpu())
    tmp = tempfile.TemporaryDirectory()
    paths = make_jpegs(Path(tmp.name), args.images)
    payloads = [Path(p).read_bytes() for p in paths]
    predict_rate = predict_meter(paths, args.weights, repeat=4)
    valid = [("valid", http_post(multipart(f"{i}.jpg", data)), "answer") for i, data in enumerate(payloads)]
    bad = malformed_requests(payloads[0], int(args.max_upload_mb * 2**20))
    mixed = [bad[i // args.malformed_every % len(bad)] if i % args.malformed_every == 0 else valid[i % len(valid)]
             for i in range(len(bad) * args.malformed_every * 4)]
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    server = start_server(port, args)
    try:
        post_once(port, valid[0][1])  # warm-up
        # predict is measured just before and just after the server's load (the machine's load may drift).
        before = predict_rate()
        tally, seconds, rss, scored = run_phase(port, server.pid, args, valid)
        after = predict_rate()
        base = (before + after) / 2
        print(f"\npredict (the CLI's predictor, warm, server idle): {before:.1f} images/s before, {after:.1f} after; "
              f"{args.images} JPEGs (150 and 256 px), {os.cpu_count()} cores")
        rate = report(f"serve, {args.clients} clients, one JPEG per request", tally, seconds, rss, scored)
        print(f"  serve / predict: {rate / base:.2f} of predict's images/s")
        tally, seconds, rss, scored = run_phase(port, server.pid, args, mixed)
        report(f"serve, {args.clients} clients, one request in {args.malformed_every} malformed", tally, seconds, rss, scored)
        for kind, counts in sorted(tally.by_kind.items()):
            print(f"    {kind:24s} {dict(counts)}")
        server_errors = {s: n for s, n in tally.status.items() if isinstance(s, int) and s >= 500 and s != 503}
        alive = get(port, "/healthz")[0] == 200 and post_once(port, valid[1][1]) == 200
        print(f"  5xx other than 503: {server_errors or 'none'}; server still answering afterwards: {'yes' if alive else 'NO'}")
    finally:
        server.terminate()
        server.wait(30)
        tmp.cleanup()


if __name__ == "__main__":
    main()
