"""`serve` subcommand: the HTTP API and web page on uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from deepfake_moe.errors import EXIT_OK
from deepfake_moe.infer.options import add_face_options, media_kwargs
from deepfake_moe.infer.plan import RUNTIME_CHOICES
from deepfake_moe.serve.limits import DEFAULT_FORMATS, MB, ServeLimits

EXTRA_HINT = 'deepfake-moe serve needs the serve extra: pip install "deepfake-moe[serve]"'


def register(sub) -> None:
    from deepfake_moe.data.commands import add_decode_options

    d = argparse.Namespace(**{f.name: f.default for f in dataclasses.fields(ServeLimits)})
    p = sub.add_parser(
        "serve",
        help="HTTP API (/v1/predict, /v1/explain, /v1/model, /docs) and a web page at /",
        description="Serve the model over HTTP: a JSON API with OpenAPI docs at /docs, and a web page at / "
        "to drop images on. Images from concurrent requests are scored together (micro-batching). "
        "Uploads stay in memory. Binds 127.0.0.1 unless --host says otherwise. --faces scores each face's crop "
        "(as predict --faces does) and lists the faces in each result.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--weights", help="checkpoint folder, .onnx file or published folder (default: built-in model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="as for predict: auto runs the cached export on the CPU with OpenVINO (else ONNX Runtime for "
                   "fp32, PyTorch for bf16)")
    add_face_options(p)
    g = p.add_argument_group("limits")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / MB, help="per file (413 above)")
    g.add_argument("--max-request-mb", type=float, default=d.max_request_bytes / MB, help="whole request (413 above)")
    g.add_argument("--max-files", type=int, default=d.max_files, help="files per request")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="per image, checked before decoding (413); None: the reader's default (100 MP)")
    g.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                   help="accepted image formats, sniffed from the bytes (415 for others): JPEG,PNG for exactly "
                   "those, +ICO,TGA for the defaults and those, all for every format Pillow opens")
    g.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request (503 after)")
    g.add_argument("--queue-length", type=int, default=d.queue_length,
                   help="images in flight at most; more get 503")
    g.add_argument("--max-connections", type=int, default=512, help="open connections at most (uvicorn; 503)")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="images scored together")
    g.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, help="how long an image waits to be batched")
    g.add_argument("--decode-threads", type=int, default=d.decode_threads, metavar="N",
                   help="uploads decoded at once, each in its own capped process; None: min(4, usable cores)")
    add_decode_options(p, formats=False)  # --max-side, --max-aspect, --max-frames, --decode-memory, --decode-timeout
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--no-access-log", action="store_true", help="no line per request")
    p.set_defaults(func=run_serve)


def limits_from_args(args: argparse.Namespace) -> ServeLimits:
    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.data.image_io import parse_formats

    image, budget = decode_options(argparse.Namespace(**{**vars(args), "formats": None, "max_pixels": None}))
    return ServeLimits(image=image, decode=budget,
        max_upload_bytes=int(args.max_upload_mb * MB), max_request_bytes=int(args.max_request_mb * MB),
        max_files=args.max_files, max_pixels=args.max_pixels,
        formats=parse_formats(args.formats),
        timeout_s=args.timeout, queue_length=args.queue_length, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, decode_threads=args.decode_threads,
    )


def build_service(args: argparse.Namespace, limits: ServeLimits):
    """The model as `predict` would run it (same runtime choice), plus the PyTorch mixture for Grad-CAM."""
    import torch

    from deepfake_moe.infer.plan import planned_model
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.runtime import set_threads
    from deepfake_moe.serve.service import Service

    set_threads()  # this process's share of the cores, for PyTorch and ONNX Runtime alike
    model, config = load_weights(args.weights)
    explainer = model if isinstance(model, torch.nn.Module) else None
    runner, plan = planned_model(model, config, args.device, args.precision, args.runtime, args.weights)
    media = media_kwargs(args)
    predictor = Predictor(runner, config, device=args.device, precision=plan.predictor_precision,
                          batch_size=min(limits.max_batch, plan.batch_size),
                          num_workers=0, max_pixels=limits.max_pixels, faces=media["faces"],
                          max_faces=media["max_faces"])
    return Service(predictor, limits, explainer=explainer)


def run_serve(args: argparse.Namespace) -> int:
    from deepfake_moe.errors import UserError

    try:
        import uvicorn

        from deepfake_moe.serve.app import create_app
    except ImportError as e:
        raise UserError(f"{EXTRA_HINT} ({e})") from None
    limits = limits_from_args(args)
    service = build_service(args, limits)
    # A malformed body is answered 400 with its reason; python-multipart's own warning per such body is noise.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    print(f"deepfake-moe serve: {service.config.name} on http://{args.host}:{args.port}/ "
          f"(API docs: /docs)", file=sys.stderr)
    if service.predictor.faces:
        print(f"face mode: each image's faces (at most {service.predictor.max_faces}) are scored, the most fake one "
              "decides; an image without a face is scored whole", file=sys.stderr)
    uvicorn.run(
        create_app(service), host=args.host, port=args.port, log_level=args.log_level,
        access_log=not args.no_access_log, limit_concurrency=args.max_connections,
    )
    return EXIT_OK
