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
from deepfake_moe.infer.plan import JPEG_DECODERS, PRECISION_CHOICES, RUNTIME_CHOICES


def register(sub) -> None:
    from deepfake_moe.data.commands import add_decode_options

    p = sub.add_parser(
        "predict",
        help="score images and videos: files, folders, globs, or challenge label/list files",
        description="Write one CSV row per input image or video: its fake probability, the verdict (fake at or "
        "above the model's threshold, else real; uncertain when the model's uncertainty, from its experts' "
        "disagreement and the image's distance to the training data, reaches the calibrated limit), the "
        "threshold it was decided at, the uncertainty in [0, 1] (empty for models without fitted statistics), or the error that kept it from "
        "being scored. Exit code 0: all scored; 1: some inputs failed (their rows are still written); "
        "2: usage error.",
    )
    p.add_argument("paths", nargs="*", help="image or video (mp4, mov, avi, mkv, webm) files, folders (recursive), "
                   "globs, .txt/.csv list files, or a .parquet manifest")
    p.add_argument("--weights", help="our checkpoint folder, or a published folder (weight.pth + ema.state); "
                   "default: the built-in model")
    p.add_argument("--root", help="folder that img_name entries of label files are relative to")
    p.add_argument("--out", help="CSV file to write (atomically); default: stdout")
    p.add_argument("--format", choices=("full", "challenge"), default="full",
                   help="full: path,probability,verdict,threshold,uncertainty,error; challenge: img_name,y_pred")
    p.add_argument("--per-expert", action="store_true", help="add one probability column per expert")
    _add_runtime_options(p)
    p.add_argument("--shard", metavar="K/N", help="score only part K of N of the inputs (job arrays); needs --out")
    p.add_argument("--merge", action="store_true",
                   help="join part CSVs written with --shard (given as the paths) into --out")
    add_decode_options(p)
    p.add_argument("--resume", action="store_true",
                   help="with --out: keep rows already scored by an interrupted run (OUT.partial)")
    p.add_argument("--no-progress", action="store_true")
    add_face_options(p)
    p.add_argument("--faces-out", help="CSV file with one row per face scored (box, detector score, probability)")
    add_video_options(p)
    p.add_argument("--frames-out", help="CSV file with one row per video frame scored")
    p.set_defaults(func=run_predict, resume_options=_resume_options(p))

    _register_weight_tools(sub)

    p = sub.add_parser(
        "explain", help="Grad-CAM heatmaps of where the experts see fake evidence (PNG per image; "
        "for a video, its most fake sampled frame)",
        description="For each input image, write OUT/<n>_<name>.png: the image with a Grad-CAM heatmap of where "
        "the experts' evidence for 'fake' lies (averaged over the experts), and print its P(fake). Needs "
        "PyTorch weights (a checkpoint or published folder), not an ONNX file. Exit code 1 if some images "
        "could not be read.",
    )
    p.add_argument("paths", nargs="+", help="image or video files, folders, globs or list files")
    p.add_argument("--weights", help="checkpoint or published folder (default: built-in model)")
    p.add_argument("--root", help="folder that img_name entries of label files are relative to")
    p.add_argument("--out", required=True, help="output folder for the PNGs")
    add_face_options(p)
    add_video_options(p)
    add_decode_options(p)
    p.set_defaults(func=run_explain)

    p = sub.add_parser(
        "export-onnx", help="export a mixture to ONNX (input: preprocessed batch; output: P(fake))",
        description="Export a mixture to one ONNX file (dynamic batch; input `image`, or `image_0`, `image_1`, ... "
        "with one preprocessed batch per expert view; outputs `p_fake`, `p_experts` and, when the model has "
        "fitted uncertainty statistics, `d_experts`), with the model's YAML (preprocessing, "
        "threshold) in its metadata so `predict --weights model.onnx` needs nothing else. The file is "
        "checked against PyTorch with ONNX Runtime and written only if they agree.",
    )
    p.add_argument("--weights", help="checkpoint or published folder (default: built-in model)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=run_export)


def _register_weight_tools(sub) -> None:
    """The commands that write weights in our format: import, convert, combine."""
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

    p = sub.add_parser(
        "combine", help="one mixture from the experts of several models (the mean of their P(fake), or groups)",
        description="Join the experts of one or more models into one mixture, whose P(fake) is the mean of all "
        "the experts chosen (each keeps its own preprocessing). MODEL:0,2 takes only those experts. With "
        "--groups each model is a group (experts that know other fakes: edits, generators): P(fake) is then the "
        "most fake group's mean, each group aligned to the first on the validation reals by `calibrate`. Threshold, "
        "temperature and uncertainty statistics were fitted on each model's own output and do not carry over: "
        "the combined model starts at threshold 0.5 and temperature 1; fit it with `fit-uncertainty` and "
        "`calibrate --temperature`. The models must read images alike (published folders read with OpenCV, "
        "our checkpoints as their model.yaml's image_backend says).",
    )
    p.add_argument("models", nargs="+", help="checkpoint or published folders, `default` for the built-in model, "
                   "each optionally `:I,J` to take only those experts")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--name", help="the combined model's name (default: the models' names joined by ' + ')")
    p.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size; upcast at load); "
                   "without it, float32 whatever the sources' storage")
    p.add_argument("--groups", action="store_true", help="each model's experts form a group (a grouped model keeps "
                   "its groups): an image is as fake as its most fake group says, so that experts of one kind of "
                   "fake do not outvote another's")
    p.add_argument("--keep-calibration", action="store_true", help="with --groups, when the first model is "
                   "taken whole: keep its threshold and temperature (its experts answer as they did in it); "
                   "then `calibrate --keep-threshold` fits the other groups")
    p.set_defaults(func=run_combine)


def _add_runtime_options(p) -> None:
    """Where and how the model runs (default: chosen from the machine, infer/plan.py)."""
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="fp32: exact; int8 (CPU): ONNX Runtime static quantisation, calibrated on "
                   "--calibration-images; bf16: AMX/AVX512-BF16 CPUs and GPUs only; fp16: GPUs; auto: "
                   "bf16 where the hardware has it natively, else fp32")
    p.add_argument("--calibration-images", metavar="DIR",
                   help="int8: images like those you will score, to calibrate activation ranges "
                   "(default: the shipped examples/)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="auto, on the CPU: OpenVINO for fp32 and bf16 (bf16 on AMX/AVX512-BF16 CPUs) where installed, "
                   "else ONNX Runtime for fp32 and PyTorch for bf16; ONNX Runtime for int8 (--runtime openvino runs "
                   "the same int8 files, faster, with a larger AUC change); each expert is exported once to the "
                   "cache, any model size; PyTorch on GPUs")
    p.add_argument("--batch-size", type=int, default=None, help="default: from the input size, device and runtime")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes, each under the memory cap and timeout (default: from the cores, "
                   "at least 1; 0: decode in this process, without the cap and timeout)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the cores left to the model)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: torch.compile the experts with CUDA graphs; its warm-up is long for big models (for the 7 "
                   "published experts on an H100 it outlasted a 200 s benchmark run), so it pays only on long jobs")
    p.add_argument("--jpeg-decoder", choices=JPEG_DECODERS, default="cpu",
                   help="cpu (default): every file is decoded in the capped decoding workers; device: ordinary JPEGs "
                   "are decoded on the model's device, a batch at a time (nvJPEG on CUDA), after the workers checked "
                   "each file's headers, for a small model on a GPU that the workers cannot keep busy. Not with face "
                   "mode or native-crop experts")


def _columns(fmt: str, n_experts: int, per_expert: bool, faces: bool = False) -> list[str]:
    if fmt == "challenge":
        return ["img_name", "y_pred"]
    cols = ["path", "probability", "verdict", "threshold", "uncertainty", "error"] + (["faces"] if faces else [])
    return cols + [f"expert_{i}" for i in range(n_experts)] if per_expert else cols


def _record(item, row, fmt: str, per_expert: bool, n_experts: int, threshold: float, faces: bool = False) -> list[str]:
    scored = not math.isnan(row.probability)
    prob = f"{row.probability:.6f}" if scored else ""
    if fmt == "challenge":
        return [item.name, prob]
    unc = "" if math.isnan(row.uncertainty) else f"{row.uncertainty:.6f}"
    rec = [item.path, prob, row.verdict, f"{threshold:.6f}" if scored else "", unc, row.error]
    if faces:  # faces scored (in all sampled frames of a video); 0: the whole image was scored
        rec.append(str(row.face_count) if not row.error else "")
    if per_expert:
        rec += [f"{v:.6f}" for v in row.expert_probabilities] or [""] * n_experts
    return rec


def _scored(predictor, items):
    """(item, row) in input order; inputs that hold no image (empty folders) get their error row."""
    from deepfake_moe.infer.predictor import PredictionRow

    rows = predictor.iter_predict([it.path for it in items if not it.error])
    for item in items:
        yield item, PredictionRow(item.path, math.nan, "", item.error) if item.error else next(rows)


class Outcome:
    """Counts failures and inputs smaller than the model's input while rows are written; reports both on
    stderr at the end (every format)."""

    def __init__(self, fmt: str, input_size: int = 0):
        self.fmt = fmt
        self.input_size = input_size
        self.failed: list[tuple[str, str]] = []
        self.small: list[tuple[str, int]] = []

    def add(self, item, row) -> None:
        name = item.name if self.fmt == "challenge" else item.path
        if row.error:
            self.failed.append((name, row.error))
        elif 0 < row.side < self.input_size:
            self.small.append((name, row.side))

    def report(self, total: int) -> None:
        if self.small:
            print(f"warning: {len(self.small)} of {total} input(s) are smaller than the model's input "
                  f"({self.input_size} px), so the model enlarges them and their scores are less reliable "
                  f"(smaller side of the image, or of the face crop scored):\n  "
                  + _listed(f"{name}: {side} px" for name, side in self.small), file=sys.stderr)
        if not self.failed:
            return
        where = "their y_pred is left empty" if self.fmt == "challenge" else "see the error column"
        print(f"{len(self.failed)} of {total} input(s) could not be scored ({where}):\n  "
              + _listed(f"{name}: {err}" for name, err in self.failed), file=sys.stderr)


def _listed(lines, first: int = 5) -> str:
    lines = list(lines)
    more = f"\n  ... and {len(lines) - first} more" if len(lines) > first else ""
    return "\n  ".join(lines[:first]) + more


def run_predict(args: argparse.Namespace) -> int:
    from deepfake_moe.infer.inputs import expand_inputs
    from deepfake_moe.infer.plan import input_size

    if args.merge:
        return _merge(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out")
    if args.resume and (args.faces_out or args.frames_out):
        raise ConfigError("--faces-out and --frames-out list the inputs of one run: they cannot --resume")
    if args.shard and not args.out:
        raise ConfigError("--shard needs --out (each part's CSV, joined later with --merge)")
    paths = args.paths
    if not paths:
        if sys.stdin is not None and sys.stdin.isatty():
            return _interactive(args)
        paths = [ln.strip() for ln in sys.stdin if ln.strip()] if sys.stdin is not None else []
        if not paths:
            raise InputError("no images given: pass files, folders, globs or a label file (see --help)")
    items = expand_inputs(paths, root=args.root)
    if all(it.error for it in items):
        raise InputError(f"no images found in {paths}")
    all_items = items
    if args.shard:
        from deepfake_moe.infer.shards import parse_shard

        items = items[parse_shard(args.shard).slice(len(items))]

    predictor = _predictor(args, progress=not args.no_progress)
    outcome = Outcome(args.format, input_size(predictor.config))
    with side_outputs(args.faces_out, args.frames_out) as write_side:
        if args.out:
            failed = _predict_to_file(predictor, items, args, outcome, write_side)
            if args.shard:
                from deepfake_moe.infer.shards import parse_shard, write_sidecar

                write_sidecar(args.out, parse_shard(args.shard), [it.path for it in all_items])
        else:
            n_experts, threshold = len(predictor.config.experts), predictor.config.threshold
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(_columns(args.format, n_experts, args.per_expert, predictor.faces))
            for item, row in _scored(predictor, items):
                writer.writerow(_record(item, row, args.format, args.per_expert, n_experts, threshold,
                                        predictor.faces))
                write_side(item.path, row)
                outcome.add(item, row)
                sys.stdout.flush()
            failed = len(outcome.failed)
    outcome.report(len(items))
    return EXIT_PARTIAL if failed else EXIT_OK


def _merge(args) -> int:
    from deepfake_moe.infer.shards import merge_parts

    if not args.out:
        raise ConfigError("--merge needs --out (the joined CSV)")
    n, header = merge_parts(args.paths, args.out)
    failed = _count_failed(args.out, header)
    print(f"wrote {args.out}: {n} rows from {len(args.paths)} parts", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK


def _count_failed(path, header: list[str]) -> int:
    col = header.index("error") if "error" in header else header.index("y_pred")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return sum(bool(r[col]) for r in rows) if header[col] == "error" else sum(r[col] == "" for r in rows)


def _predictor(args, progress: bool):
    import torch

    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.infer.plan import input_size, make_plan, runtime_model
    from deepfake_moe.infer.predictor import Predictor
    from deepfake_moe.infer.weights import load_weights
    from deepfake_moe.runtime import set_threads

    set_threads()  # this process's share of the cores, for PyTorch and ONNX Runtime alike
    limits, budget = decode_options(args)
    model, config = load_weights(args.weights)
    plan = make_plan(args.device, args.precision, args.runtime, input_size(config), batch_size=args.batch_size,
                     workers=args.workers, compile=args.compile)
    set_threads(args.threads or min(torch.get_num_threads(), plan.threads))
    model, plan = runtime_model(model, config, plan, args.runtime, args.weights, args.calibration_images)
    predictor = Predictor(
        model, config, device=plan.device, precision=plan.predictor_precision,
        batch_size=plan.batch_size, num_workers=plan.workers, progress=progress, limits=limits,
        decode_budget=budget, compile=plan.compile and plan.runtime == "torch", jpeg_decoder=args.jpeg_decoder,
        **media_kwargs(args),
    )
    if progress:
        on = f", ordinary JPEGs decoded on {predictor.jpeg_device}" if predictor.jpeg_device is not None else ""
        print(f"predict: {plan.describe()}{on}", file=sys.stderr)
    return predictor


def _predict_to_file(predictor, items, args, outcome: Outcome, write_side) -> int:
    """Rows go to OUT.partial as they come (a crash keeps them); OUT appears atomically at the end."""
    from deepfake_moe.io import atomic_write

    n_experts, threshold = len(predictor.config.experts), predictor.config.threshold
    columns = _columns(args.format, n_experts, args.per_expert, predictor.faces)
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    done = _resumed_rows(partial, columns, items) if args.resume and partial.is_file() else {}
    todo = [it for it in items if it.path not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(partial, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["key"] + columns)
            for key, rec in done.items():
                writer.writerow([key] + rec)
            for item, row in _scored(predictor, todo):
                rec = _record(item, row, args.format, args.per_expert, n_experts, threshold, predictor.faces)
                write_side(item.path, row)
                done[item.path] = rec
                writer.writerow([item.path] + rec)
                outcome.add(item, row)
                f.flush()
    except KeyboardInterrupt:
        print(f"interrupted: {len(done)} of {len(items)} row(s) are kept in {partial}; to finish, run:\n  "
              f"{_resume_command(args)}", file=sys.stderr)
        raise
    prob_col = columns.index("y_pred" if args.format == "challenge" else "probability")
    with atomic_write(out, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for item in items:
            writer.writerow(done[item.path])
    partial.unlink()
    return sum(done[it.path][prob_col] == "" for it in items)


def _resumed_rows(partial: Path, columns: list[str], items) -> dict[str, list[str]]:
    """The rows an interrupted run left, refused when they were made for other inputs or columns."""
    with open(partial, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = {r[0]: r[1:] for r in reader if len(r) == len(columns) + 1}
    fix = f"rerun with the same inputs and options, or delete {partial} (or drop --resume) to start over"
    if header != ["key"] + columns:
        raise InputError(f"--resume: {partial} has columns {header[1:] if header else []}, this run writes "
                         f"{columns}; {fix}")
    wanted = {it.path for it in items}
    foreign = [k for k in rows if k not in wanted]
    if foreign:
        raise InputError(f"--resume: {len(foreign)} of the {len(rows)} row(s) in {partial} are not among this "
                         f"run's inputs, e.g. {foreign[:3]}; {fix}")
    print(f"resuming: {len(rows)} of {len(items)} row(s) already scored in {partial}", file=sys.stderr)
    return rows


# Options a resumed run does not repeat: written by the command itself, or refused with --resume.
NOT_RESUMED = frozenset({"help", "out", "resume", "merge", "faces_out", "frames_out"})


def _resume_options(parser: argparse.ArgumentParser) -> tuple[tuple[str, str, bool, object], ...]:
    """(dest, flag, takes a value, default) of every predict option a resume command repeats when given:
    any of them may change the rows (--faces, --frames, --shard, --format, ...)."""
    return tuple(
        (a.dest, a.option_strings[0], a.nargs != 0, a.default)
        for a in parser._actions  # argparse has no public list of a parser's options
        if a.option_strings and a.dest not in NOT_RESUMED
    )


def _resume_command(args) -> str:
    """The predict command that continues this run: the same inputs and every option that was given."""
    import shlex

    words = ["deepfake-moe", "predict", *args.paths, "--out", args.out, "--resume"]
    for dest, flag, takes_value, default in args.resume_options:
        value = getattr(args, dest, default)
        if value == default:
            continue
        if takes_value:
            words += [flag, str(value)]
        else:  # a switch: --per-expert, or --faces / --no-faces
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
    return shlex.join(words) + ("" if args.paths else " < the-same-paths.txt")


def _interactive(args) -> int:
    """Like the published script: ask for one path at a time until an empty line or EOF."""
    from deepfake_moe.infer.plan import input_size

    predictor = _predictor(args, progress=False)
    size = input_size(predictor.config)
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
            unc = "" if math.isnan(row.uncertainty) else f" (uncertainty {row.uncertainty:.3f})"
            small = (f" (note: {row.side} px, smaller than the model's input of {size} px: enlarged, less reliable)"
                     if row.side < size else "")
            print(f"{line}: {row.probability:.6f} {row.verdict}{unc}{small}")
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


def run_combine(args: argparse.Namespace) -> int:
    from deepfake_moe.model.combine import combine_folders

    out, config = combine_folders(args.models, args.out, name=args.name, fp16=args.fp16, groups=args.groups,
                                  keep_calibration=args.keep_calibration)
    kinds = f" in {len(config.groups)} groups" if config.groups else ""
    fit = "--keep-threshold" if args.keep_calibration else "--temperature"
    state = (f"threshold {config.threshold:.4g} and temperature {config.temperature:.4g} kept" if args.keep_calibration
             else "uncalibrated: threshold 0.5, temperature 1")
    print(f"wrote {out} ({len(config.experts)} experts{kinds}, {state}). Next: `deepfake-moe fit-uncertainty "
          f"TRAIN_MANIFEST --weights {out}` and `deepfake-moe calibrate VAL_MANIFEST --weights {out} {fit}`",
          file=sys.stderr)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    from deepfake_moe.infer.export import export_onnx
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(args.weights)
    report = export_onnx(model, config, args.out, opset=args.opset)
    print(f"wrote {args.out}: agrees with PyTorch within {report['max_abs_diff']:.2e} in P(fake) on "
          f"{report['checked']} inputs", file=sys.stderr)
    return EXIT_OK


def run_explain(args: argparse.Namespace) -> int:
    import torch

    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.data.video_io import is_video_path
    from deepfake_moe.infer.explain import explain_image, explain_video
    from deepfake_moe.infer.inputs import expand_inputs
    from deepfake_moe.infer.weights import load_weights

    model, config = load_weights(args.weights)
    if not isinstance(model, torch.nn.Module):
        raise InputError("explain needs PyTorch weights (a checkpoint or published folder), not an ONNX file")
    media = media_kwargs(args)
    media["faces"] = config.scores_faces(media["faces"])
    limits, budget = decode_options(args)
    items = expand_inputs(args.paths, root=args.root)
    out = Path(args.out)
    failed = 0
    for i, item in enumerate(items):
        png = out / f"{i:05d}_{Path(item.name).stem}.png"
        try:
            if is_video_path(item.path):
                p = explain_video(model, config, item.path, png, **media, limits=limits, budget=budget)
            else:
                p = explain_image(model, config, item.path, png, media["faces"], media["max_faces"], limits, budget)
            print(f"{item.path}: P(fake)={p:.4f} -> {png}")
        except InputError as e:
            failed += 1
            print(f"{item.path}: error: {getattr(e, 'reason', e)}", file=sys.stderr)
    return EXIT_PARTIAL if failed else EXIT_OK
