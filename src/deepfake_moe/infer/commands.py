"""`predict`, `import-published`, `convert`, `explain` and `export-onnx` subcommands."""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, InputError
from deepfake_moe.infer.options import add_face_options, add_video_options, media_kwargs, side_outputs

# Exporting to ONNX traces the whole model in memory: the published 7-expert mixture (about 200M
# parameters at 512 px) needed over 20 GB, so `--runtime auto` keeps large models in PyTorch.
AUTO_ONNX_MAX_PARAMS = 50_000_000


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="score images and videos: files, folders, globs, or challenge label/list files",
        description="Write one CSV row per input image or video: its fake probability, the verdict at the model's "
        "threshold, or the error that kept it from being scored. Exit code 0: all scored; 1: some inputs "
        "failed (their rows are still written); 2: usage error.",
    )
    p.add_argument("paths", nargs="*", help="image or video (mp4, mov, avi, mkv, webm) files, folders (recursive), "
                   "globs, or .txt/.csv list files")
    p.add_argument("--weights", help="our checkpoint folder, or a published folder (weight.pth + ema.state); "
                   "default: the built-in model")
    p.add_argument("--root", help="folder that img_name entries of label files are relative to")
    p.add_argument("--out", help="CSV file to write (atomically); default: stdout")
    p.add_argument("--format", choices=("full", "challenge"), default="full",
                   help="full: path,probability,verdict,error; challenge: img_name,y_pred")
    p.add_argument("--per-expert", action="store_true", help="add one probability column per expert")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="auto: ONNX Runtime for fp32 on the CPU (several times faster for depthwise "
                   "convolutions; the export is cached), else PyTorch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: min(4, cores))")
    p.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (decompression bombs)")
    p.add_argument("--resume", action="store_true",
                   help="with --out: keep rows already scored by an interrupted run (OUT.partial)")
    p.add_argument("--no-progress", action="store_true")
    add_face_options(p)
    p.add_argument("--faces-out", help="CSV file with one row per face scored (box, detector score, probability)")
    add_video_options(p)
    p.add_argument("--frames-out", help="CSV file with one row per video frame scored")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("import-published", help="convert the winners' weight.pth + ema.state to our format")
    p.add_argument("folder", help="folder with weight.pth (and ema.state)")
    p.add_argument("out", help="output checkpoint folder")
    p.add_argument("--no-ema", action="store_true", help="keep the raw weights instead of the EMA ones")
    p.set_defaults(func=run_import)

    p = sub.add_parser("convert", help="write any loadable weights as our checkpoint format (optionally fp16)")
    p.add_argument("weights", help="our checkpoint or a published folder")
    p.add_argument("out", help="output checkpoint folder")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size; upcast at load)")
    p.set_defaults(func=run_convert)

    p = sub.add_parser("explain", help="Grad-CAM heatmaps of where the experts see fake evidence (PNG per image; "
                       "for a video, its most fake sampled frame)")
    p.add_argument("paths", nargs="+", help="image or video files, folders, globs or list files")
    p.add_argument("--weights", help="checkpoint or published folder (default: built-in model)")
    p.add_argument("--root", help="folder that img_name entries of label files are relative to")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    add_face_options(p)
    add_video_options(p)
    p.set_defaults(func=run_explain)

    p = sub.add_parser("export-onnx", help="export a mixture to ONNX (input: preprocessed batch; output: P(fake))")
    p.add_argument("--weights", help="checkpoint or published folder (default: built-in model)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run_export)


def _columns(fmt: str, n_experts: int, per_expert: bool, faces: bool = False) -> list[str]:
    if fmt == "challenge":
        return ["img_name", "y_pred"]
    cols = ["path", "probability", "verdict", "error"] + (["faces"] if faces else [])
    return cols + [f"expert_{i}" for i in range(n_experts)] if per_expert else cols


def _record(item, row, fmt: str, per_expert: bool, n_experts: int, faces: bool = False) -> list[str]:
    prob = "" if math.isnan(row.probability) else f"{row.probability:.6f}"
    if fmt == "challenge":
        return [item.name, prob]
    rec = [item.path, prob, row.verdict, row.error]
    if faces:  # faces scored (in all sampled frames of a video); 0: the whole image was scored
        rec.append(str(row.face_count) if not row.error else "")
    if per_expert:
        rec += [f"{v:.6f}" for v in row.expert_probabilities] or [""] * n_experts
    return rec


def run_predict(args: argparse.Namespace) -> int:
    from deepfake_moe.infer.inputs import expand_inputs

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out")
    if args.resume and (args.faces_out or args.frames_out):
        raise ConfigError("--faces-out and --frames-out list the inputs of one run: they cannot --resume")
    paths = args.paths
    if not paths:
        if sys.stdin is not None and sys.stdin.isatty():
            return _interactive(args)
        paths = [ln.strip() for ln in sys.stdin if ln.strip()] if sys.stdin is not None else []
        if not paths:
            raise InputError("no images given: pass files, folders, globs or a label file (see --help)")
    items = expand_inputs(paths, root=args.root)
    if not items:
        raise InputError(f"no images found in {paths}")

    predictor = _predictor(args, progress=not args.no_progress)
    n_experts = len(predictor.config.experts)
    columns = _columns(args.format, n_experts, args.per_expert, predictor.faces)
    failed = 0
    with side_outputs(args.faces_out, args.frames_out) as write_side:
        if args.out:
            failed = _predict_to_file(predictor, items, args, columns, n_experts, write_side)
        else:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            for item, row in zip(items, predictor.iter_predict([it.path for it in items])):
                writer.writerow(_record(item, row, args.format, args.per_expert, n_experts, predictor.faces))
                write_side(item.path, row)
                failed += bool(row.error)
                sys.stdout.flush()
    if failed:
        print(f"{failed} of {len(items)} input(s) could not be scored; see the error column", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def _predictor(args, progress: bool):
    from deepfake_moe.data.image_io import DEFAULT_MAX_PIXELS
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.runtime import set_threads

    set_threads()  # this process's share of the cores, for PyTorch and ONNX Runtime alike
    model, config = load_weights(args.weights)
    model = _choose_runtime(model, config, args)
    return Predictor(
        model, config, device=args.device, precision=args.precision, batch_size=args.batch_size,
        num_workers=args.workers, progress=progress, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        **media_kwargs(args),
    )


def _choose_runtime(model, config, args):
    import torch

    from deepfake_moe.runtime import resolve_device

    if not isinstance(model, torch.nn.Module) or args.runtime == "torch":
        return model
    on_cpu_fp32 = resolve_device(args.device).type == "cpu" and args.precision == "fp32"
    n_params = sum(p.numel() for p in model.parameters())
    if args.runtime == "auto" and (not on_cpu_fp32 or n_params > AUTO_ONNX_MAX_PARAMS):
        return model
    if args.runtime == "onnxruntime" and not on_cpu_fp32:
        raise ConfigError("--runtime onnxruntime runs fp32 on the CPU: drop --device/--precision or use --runtime torch")
    try:
        from deepfake_moe.infer.export import cached_onnx

        return cached_onnx(model, config, threads=torch.get_num_threads())
    except Exception as e:
        if args.runtime == "onnxruntime":
            raise
        print(f"note: ONNX Runtime unavailable ({type(e).__name__}: {e}); using PyTorch", file=sys.stderr)
        return model


def _predict_to_file(predictor, items, args, columns, n_experts, write_side) -> int:
    """Rows go to OUT.partial as they come (a crash keeps them); OUT appears atomically at the end."""
    from deepfake_moe.io import atomic_write

    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    done: dict[str, list[str]] = {}
    if args.resume and partial.is_file():
        with open(partial, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header == ["key"] + columns:
                done = {r[0]: r[1:] for r in reader if len(r) == len(columns) + 1}
        print(f"resuming: {len(done)} row(s) already scored in {partial}", file=sys.stderr)
    todo = [it for it in items if it.path not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["key"] + columns)
        for key, rec in done.items():
            writer.writerow([key] + rec)
        for item, row in zip(todo, predictor.iter_predict([it.path for it in todo])):
            rec = _record(item, row, args.format, args.per_expert, n_experts, predictor.faces)
            write_side(item.path, row)
            done[item.path] = rec
            writer.writerow([item.path] + rec)
            f.flush()
    failed = 0
    err_col = None if args.format == "challenge" else columns.index("error")
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for item in items:
            rec = done[item.path]
            writer.writerow(rec)
            failed += bool(rec[err_col]) if err_col is not None else rec[1] == ""
    partial.unlink()
    return failed


def _interactive(args) -> int:
    """Like the published script: ask for one path at a time until an empty line or EOF."""
    predictor = _predictor(args, progress=False)
    print(f"model: {predictor.config.name} ({len(predictor.config.experts)} experts, threshold "
          f"{predictor.config.threshold:.3f}). Empty line or Ctrl-D quits.", file=sys.stderr)
    failed = 0
    while True:
        try:
            line = input("image path: ").strip()
        except EOFError:
            break
        if not line:
            break
        row = predictor.predict([os.path.expanduser(line)])[0]
        if row.error:
            failed += 1
            print(f"{line}: error: {row.error}")
        else:
            print(f"{line}: {row.probability:.6f} {row.verdict}")
    return EXIT_PARTIAL if failed else EXIT_OK


def run_import(args: argparse.Namespace) -> int:
    from deepfake_moe.model.checkpoint import save_checkpoint
    from deepfake_moe.model.published import load_published

    model, config = load_published(args.folder, use_ema=not args.no_ema)
    out = save_checkpoint(model, config, args.out)
    print(f"wrote {out} ({len(config.experts)} experts, EMA: {config.info.get('ema')})", file=sys.stderr)
    return EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.model.checkpoint import save_checkpoint

    model, config = load_weights(args.weights)
    if not isinstance(model, torch.nn.Module):
        raise InputError("convert needs PyTorch weights (a checkpoint or published folder), not an ONNX file")
    out = save_checkpoint(model, config, args.out, weights_dtype=torch.float16 if args.fp16 else None)
    size = (out / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {out} ({len(config.experts)} experts, {size:.1f} MiB)", file=sys.stderr)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from deepfake_moe.infer.export import export_onnx
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(args.weights)
    report = export_onnx(model, config, args.out, opset=args.opset)
    print(f"wrote {args.out}: max |dp| vs PyTorch {report['max_abs_diff']:.2e} on {report['checked']} random inputs",
          file=sys.stderr)
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    import torch

    from deepfake_moe.data.video_io import is_video_path
    from deepfake_moe.infer.explain import explain_image, explain_video
    from deepfake_moe.infer.inputs import expand_inputs
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(args.weights)
    if not isinstance(model, torch.nn.Module):
        raise InputError("explain needs PyTorch weights (a checkpoint or published folder), not an ONNX file")
    media = media_kwargs(args)
    media["faces"] = config.face_crops if media["faces"] is None else media["faces"]
    items = expand_inputs(args.paths, root=args.root)
    out = Path(args.out)
    failed = 0
    for i, item in enumerate(items):
        png = out / f"{i:05d}_{Path(item.name).stem}.png"
        try:
            if is_video_path(item.path):
                p = explain_video(model, config, item.path, png, **media)
            else:
                p = explain_image(model, config, item.path, png, media["faces"], media["max_faces"])
            print(f"{item.path}: P(fake)={p:.4f} -> {png}")
        except InputError as e:
            failed += 1
            print(f"{item.path}: error: {getattr(e, 'reason', e)}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK
