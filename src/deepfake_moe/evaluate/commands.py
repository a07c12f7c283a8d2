"""`deepfake-moe evaluate` and `deepfake-moe calibrate` (and `experiment`, when present)."""

from __future__ import annotations

import argparse
import importlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepfake_moe.errors import EXIT_OK, EXIT_PARTIAL, ConfigError, InputError
from deepfake_moe.infer.options import add_face_options, add_video_options, media_kwargs
from deepfake_moe.infer.plan import JPEG_DECODERS, RUNTIME_CHOICES
from deepfake_moe.model.uncertainty import DEFAULT_COMPONENTS

FIT_BATCH = 32  # images per call where calibrate and fit-uncertainty run the PyTorch model

if TYPE_CHECKING:
    import pandas as pd

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics, report and plots for labelled images",
        description="Score labelled images (or read a predictions file) and write metrics.json, report.md, "
        "roc.png, pr.png, score_hist.png and predictions.csv: AUC, AP, EER, accuracy/F1 at the threshold, "
        "TPR at FPR 1% and 0.1%, with bootstrap 95% intervals, overall, per fake source and per cluster. "
        "Scoring runs like `predict` (--runtime auto on the CPU: OpenVINO, else ONNX Runtime for fp32 and PyTorch for bf16). "
        "For a model with fitted uncertainty: coverage (share answered real or fake), accuracy on the covered "
        "images and the share answered uncertain, overall and per source, and risk_coverage.png.",
    )
    p.add_argument("labels", help="manifest (Parquet/CSV with path,label[,source,cluster]) or challenge label "
                   "file (img_name,target)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--predictions", help="CSV with img_name,y_pred (challenge) or path,probability; "
                     "matched to the labels by file name / relative path")
    src.add_argument("--weights", help="model to score the images with (our checkpoint folder or the published "
                     "weights folder); default: the built-in model")
    p.add_argument("--root", help="folder the label file's image paths are relative to")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model's; for a "
                   "predictions file, its threshold or verdict column, else 0.5)")
    p.add_argument("--uncertainty-threshold", type=float, help="answer uncertain at or above this uncertainty "
                   "(default: the model's; a predictions file needs it to use its uncertainty column)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals "
                   "(0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--robustness", action="store_true", help="also re-score under JPEG/WebP re-encoding, "
                   "down-scaling, blur and noise (needs a model, not --predictions)")
    p.add_argument("--perturbations", help="comma-separated subset for --robustness (default: all)")
    _model_options(p)
    add_face_options(p)
    add_video_options(p)
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="as for predict: auto runs the cached export on the CPU with OpenVINO (else ONNX Runtime for "
                   "fp32, PyTorch for bf16)")
    p.set_defaults(func=run_evaluate)
    _register_calibrate(subparsers)
    _register_fit_uncertainty(subparsers)

    try:
        experiment = importlib.import_module("deepfake_moe.evaluate.experiment")
    except ModuleNotFoundError as e:
        if e.name != "deepfake_moe.evaluate.experiment":
            raise
    else:
        experiment.register(subparsers)


def _register_calibrate(subparsers) -> None:
    c = subparsers.add_parser(
        "calibrate",
        help="fit the decision threshold (and temperature) on a validation manifest",
        description="Fit the threshold on labelled validation images and write it (and the temperature, with "
        "--temperature) into the checkpoint's model.yaml, so `predict` verdicts follow it. Images are scored as "
        "predict scores them: through their face crops (the most fake face) with --faces, the default for a model "
        "trained on face crops.",
    )
    c.add_argument("manifest", help="labelled validation manifest or challenge label file")
    c.add_argument("--weights", required=True, help="our checkpoint folder (its model.yaml is updated)")
    c.add_argument("--root", help="folder the manifest's image paths are relative to")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--target-fpr", type=float, default=0.01, help="highest recall with at most this false "
                     "positive rate on the validation reals (default 0.01)")
    how.add_argument("--max-f1", action="store_true", help="threshold with the best F1")
    how.add_argument("--eer", action="store_true", help="threshold at the equal error rate")
    c.add_argument("--temperature", action="store_true", help="also fit temperature scaling (minimum NLL) "
                   "before choosing the threshold")
    c.add_argument("--target-coverage", type=float, default=0.95, help="for a model with fitted uncertainty "
                   "statistics: the uncertainty threshold answers at least this share of the validation images "
                   "real or fake, the rest uncertain (default 0.95)")
    c.add_argument("--uncertainty-only", action="store_true", help="fit only the uncertainty threshold; keep "
                   "the decision threshold and temperature")
    c.add_argument("--keep-threshold", action="store_true", help="for a model of expert groups (combine --groups) "
                   "whose first group was calibrated before: keep the decision threshold and temperature, and fit "
                   "each later group's floor at --target-fpr, shifted onto the kept threshold")
    c.add_argument("--fpr-per-source", action="store_true", help="for a model of expert groups: fit each later "
                   "group's floor so that the reals of every `source` of the manifest (each benign path, each "
                   "camera) stay within --target-fpr, not only all reals together")
    c.add_argument("--out", help="folder for reliability.png and calibration.json (default: "
                   "<checkpoint>/calibration)")
    _model_options(c, precision=False)  # calibration reads logits in fp32
    add_face_options(c)
    c.set_defaults(func=run_calibrate)


def _register_fit_uncertainty(subparsers) -> None:
    f = subparsers.add_parser(
        "fit-uncertainty",
        help="fit the feature statistics behind the uncertainty signal on the training manifest",
        description="Run the labelled training images through every expert once and store, per expert, the "
        "mean pooled feature of the reals and of the fakes and a shared low-rank covariance "
        "(uncertainty.safetensors beside the weights, which stay unchanged; model.yaml records what was "
        "fitted on what). `train` does this itself; run `calibrate` afterwards to fit the threshold.",
    )
    f.add_argument("manifest", help="the manifest the model was trained on")
    f.add_argument("--weights", required=True, help="our checkpoint folder (statistics are written into it)")
    f.add_argument("--root", help="folder the manifest's image paths are relative to")
    f.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help="principal axes of the "
                   f"feature covariance kept per expert (default {DEFAULT_COMPONENTS})")
    f.add_argument("--max-images", type=int, help="fit on at most this many images, the same share of every "
                   "label and source (seeded); a few thousand pin down the statistics (default: all)")
    _model_options(f, precision=False)
    f.set_defaults(func=run_fit_uncertainty)


def _model_options(p: argparse.ArgumentParser, precision: bool = True) -> None:
    from deepfake_moe.data.commands import add_decode_options

    add_decode_options(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per model call (default: as predict picks, from the input size, device and runtime; "
                   f"{FIT_BATCH} for calibrate and fit-uncertainty)")
    if precision:
        p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
        p.add_argument("--jpeg-decoder", choices=JPEG_DECODERS, default="cpu",
                       help="where JPEGs are decoded, as for predict: cpu (the decoding workers) or device (nvJPEG on "
                       "CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _read_labels(path: str, root: str | None) -> pd.DataFrame:
    from deepfake_moe.data.manifest import read_manifest

    return read_manifest(path, root=root)


def _predictor(args, model, config, precision: str):
    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.infer.predictor import Predictor

    media = media_kwargs(args) if hasattr(args, "faces") else {}
    limits, budget = decode_options(args)
    return Predictor(model, config, device=args.device, precision=precision, batch_size=args.batch_size,
                     progress=not args.no_progress, limits=limits, decode_budget=budget,
                     jpeg_decoder=args.jpeg_decoder, **media)


def run_evaluate(args) -> int:
    from deepfake_moe.evaluate.predictions import match_predictions, read_predictions
    from deepfake_moe.evaluate.run import evaluate_table

    for name in ("threshold", "uncertainty_threshold"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.bootstrap < 0:
        raise ConfigError("--bootstrap must be >= 0")
    if args.robustness and args.predictions:
        raise ConfigError("--robustness re-scores perturbed images, so it needs a model (--weights), "
                         "not --predictions")
    labels = _read_labels(args.labels, args.root)
    meta: dict = {"labels": str(args.labels), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    predictor = None
    if args.predictions:
        predictions = read_predictions(args.predictions)
        table, unmatched = match_predictions(labels, predictions)
        threshold = args.threshold if args.threshold is not None else _predictions_threshold(predictions)
        unc_threshold = args.uncertainty_threshold
        meta.update(scores_from=str(args.predictions), unmatched_predictions=unmatched)
        if unmatched:
            print(f"warning: {len(unmatched)} prediction(s) match no labelled image (listed in metrics.json)",
                  file=sys.stderr)
    else:
        from deepfake_moe.infer.plan import planned_model
        from deepfake_moe.infer.weights import load_weights

        model, config = load_weights(args.weights)
        runner, plan = planned_model(model, config, args.device, args.precision, args.runtime, args.weights)
        predictor = _predictor(args, runner, config, plan.predictor_precision)
        rows = predictor.predict(labels["path"].tolist())
        table = labels.copy()
        table["probability"] = [r.probability for r in rows]
        table["error"] = [r.error for r in rows]
        if predictor.has_uncertainty:
            table["uncertainty"] = [r.uncertainty for r in rows]
        threshold = config.threshold if args.threshold is None else args.threshold
        unc_threshold = config.uncertainty_threshold if args.uncertainty_threshold is None else args.uncertainty_threshold
        meta.update(scores_from=f"model {args.weights or 'built-in default'} ({config.name}, "
                    f"{len(config.experts)} expert(s))", face_crops=predictor.faces)
    result = evaluate_table(table, args.out, threshold, args.bootstrap, args.seed, meta, unc_threshold)
    if predictor is not None and args.robustness:
        _robustness(args, predictor, table, threshold)
    _print_summary(result, args.out)
    return EXIT_PARTIAL if result["counts"]["failed"] else EXIT_OK


def _predictions_threshold(predictions: pd.DataFrame) -> float:
    from deepfake_moe.evaluate.predictions import decided_threshold

    found = decided_threshold(predictions)
    if found is None:
        print("note: the predictions file has no threshold or verdict column; using threshold 0.5 "
              "(give the model's with --threshold)", file=sys.stderr)
        return 0.5
    threshold, where = found
    print(f"threshold {threshold:.6g} from {where}", file=sys.stderr)
    return threshold


def _robustness(args, predictor, table: pd.DataFrame, threshold: float) -> None:
    from deepfake_moe.evaluate import plots, robustness
    from deepfake_moe.evaluate.report import write_markdown
    from deepfake_moe.io import atomic_path

    names = [n.strip() for n in args.perturbations.split(",")] if args.perturbations else None
    labelled = table[table["label"].isin([0, 1])]
    try:
        scores, _ = robustness.sweep_scores(predictor, labelled["path"].tolist(), names,
                                            progress=not args.no_progress)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rob = robustness.robustness_table(labelled["label"].to_numpy(), scores, threshold,
                                      n_bootstrap=min(args.bootstrap, 200), seed=args.seed)
    out = Path(args.out)
    with atomic_path(out / "robustness.csv") as tmp:
        rob.to_csv(tmp, index=False)
    write_markdown("# Robustness: AUC per perturbation\n\n" + robustness.robustness_markdown(rob),
                   out / "robustness.md")
    if "auc" in rob:
        plots.plot_metric_bars(rob["perturbation"].tolist(), rob["auc"].to_numpy(float),
                               rob["auc_low"].to_numpy(float), rob["auc_high"].to_numpy(float),
                               out / "robustness.png", title="AUC under perturbations")
    print(robustness.robustness_markdown(rob))


def _print_summary(result: dict, out) -> None:
    from deepfake_moe.evaluate.report import metrics_table

    c = result["counts"]
    print(f"scored {c['scored']} of {c['listed']} image(s) ({c['real']} real, {c['fake']} fake); "
          f"failed or missing: {c['failed']}")
    print("\n".join(metrics_table({"all": result["overall"], **result["per_source"]}, "source")))
    if "selective" in result:
        from deepfake_moe.evaluate.report import selective_table

        print("\n".join(selective_table(result["selective"])))
    print(f"written to {out}")


def run_calibrate(args) -> int:
    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.evaluate import report, threshold
    from deepfake_moe.evaluate.uncertainty import calibrate_uncertainty
    from deepfake_moe.model.checkpoint import load_checkpoint, resolve, save_uncertainty

    if not 0.0 < args.target_coverage <= 1.0:
        raise ConfigError(f"--target-coverage must be in (0, 1], got {args.target_coverage}")
    folder = resolve(args.weights)
    model, config = load_checkpoint(folder)
    with_unc = model.distances is not None
    if args.keep_threshold and (args.temperature or args.uncertainty_only or args.max_f1 or args.eer):
        raise ConfigError("--keep-threshold keeps the threshold and temperature: it goes with --target-fpr only")
    if args.keep_threshold and not config.groups:
        raise ConfigError(f"{folder} has no expert groups for --keep-threshold to fit (see combine --groups)")
    if args.fpr_per_source and (args.uncertainty_only or not config.groups):
        raise ConfigError("--fpr-per-source fits the floors of expert groups: it needs a model of groups "
                          "(combine --groups) and goes without --uncertainty-only")
    if args.uncertainty_only and not with_unc:
        raise ConfigError(f"{folder} has no uncertainty statistics: run `deepfake-moe fit-uncertainty "
                         "TRAINING_MANIFEST --weights MODEL` first")
    labels = _read_labels(args.manifest, args.root)
    labels = labels[labels["label"].isin([0, 1])].reset_index(drop=True)
    limits, budget = decode_options(args)
    faces = config.scores_faces(media_kwargs(args)["faces"])  # scored as predict scores them
    margins, feats, errors = threshold.collect_outputs(model, config, labels["path"].tolist(), args.batch_size or FIT_BATCH,
                                                       args.device, progress=not args.no_progress, features=with_unc,
                                                       limits=limits, decode_budget=budget, faces=faces,
                                                       max_faces=args.max_faces)
    ok = np.array([e == "" for e in errors], dtype=bool)
    failed = [(p, e) for p, e in zip(labels["path"], errors) if e]
    for p, e in failed[:20]:
        print(f"not scored: {p}: {e}", file=sys.stderr)
    y, z = labels["label"].to_numpy()[ok], margins[ok]
    out = Path(args.out) if args.out else folder / "calibration"
    strata = labels["source"].astype(str).to_numpy()[ok] if args.fpr_per_source else None
    record = (dict(config.info.get("calibration", {})) if args.uncertainty_only
              else _calibrate_decision(args, config, y, z, out, strata))
    if not args.uncertainty_only:
        record.update(n_failed=len(failed), face_crops=faces)
    if with_unc:
        try:
            record["uncertainty"] = {"fitted": _now(), "manifest": str(args.manifest), "n_images": int(ok.sum()),
                                     **calibrate_uncertainty(model, config, y, z, [f[ok] for f in feats],
                                                             args.target_coverage, str(args.manifest))}
        except ValueError as e:
            raise InputError(f"cannot calibrate the uncertainty on {args.manifest}: {e}") from None
        u = record["uncertainty"]
        print(f"uncertainty threshold {u['uncertainty_threshold']:.6g} (target coverage {args.target_coverage:g}; "
              f"on the validation set coverage {u['coverage']:.4f}, accuracy on covered "
              f"{u['accuracy_covered']:.4f} vs {u['accuracy_all']:.4f} on all; feature distance of experts "
              f"{u['distance_experts']})")
    report.write_json({**record, "failed": [{"path": p, "error": e} for p, e in failed]}, out / "calibration.json")
    config.info = {**config.info, "calibration": record}
    save_uncertainty(model, config, folder)
    print(f"written to {folder / 'model.yaml'}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _calibrate_decision(args, config, y: np.ndarray, z: np.ndarray, out: Path, strata=None) -> dict:
    """Fit the temperature (with --temperature) and the decision threshold; update `config`, plot, return the record."""
    from scipy.special import logit

    from deepfake_moe.evaluate import plots, threshold
    from deepfake_moe.evaluate.metrics import MetricError

    before_t = config.temperature
    kept = float(logit(config.threshold)) if args.keep_threshold else None
    # "before" is the same rule at the old temperature, so that the figures show what the temperature bought
    before_groups = config.groups and threshold.align_groups(z, y, before_t, config.groups, args.target_fpr, kept,
                                                             strata)
    fitted_t = (threshold.fit_temperature(z, y, groups=config.groups, target_fpr=args.target_fpr, strata=strata)
                if args.temperature else before_t)
    if config.groups:  # each group's floor and shift on the validation reals, at the model's temperature
        config.groups = threshold.align_groups(z, y, fitted_t, config.groups, args.target_fpr, kept, strata)
    at_bound = args.temperature and min(abs(fitted_t / b - 1) for b in threshold.TEMPERATURE_BOUNDS) < 1e-3
    if at_bound:
        print(f"warning: the fitted temperature {fitted_t:.3g} sits at the search bound "
              f"{threshold.TEMPERATURE_BOUNDS}: the validation set is (nearly) separable or too small to "
              "calibrate on", file=sys.stderr)
    p_before = threshold.mixture_probability(z, before_t, before_groups)
    p_after = threshold.mixture_probability(z, fitted_t, config.groups)
    method = "max-f1" if args.max_f1 else "eer" if args.eer else "target-fpr"
    try:
        choice = (threshold.kept_threshold(y, p_after, config.threshold, args.target_fpr) if args.keep_threshold
                  else threshold.choose_threshold(y, p_after, method, args.target_fpr))
    except MetricError as e:
        raise InputError(f"cannot calibrate on {args.manifest}: {e}") from None
    record = {
        "fitted": _now(),
        "manifest": str(args.manifest),
        "n_images": len(y),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "n_failed": 0,
        "fpr_per_source": bool(args.fpr_per_source),
        **choice.to_dict(),
        "previous_threshold": config.threshold,
        "temperature": fitted_t,
        "temperature_fitted": bool(args.temperature),
        "temperature_at_search_bound": bool(at_bound),
        "previous_temperature": before_t,
        "nll_before": threshold.mixture_nll(z, y, before_t, before_groups),
        "nll_after": threshold.mixture_nll(z, y, fitted_t, config.groups),
        "ece_before": plots.expected_calibration_error(y, p_before),
        "ece_after": plots.expected_calibration_error(y, p_after),
    }
    if config.groups:
        record["groups"] = [{"name": g.name, "floor": g.floor, "shift": g.shift} for g in config.groups]
    curves = {f"before (T={before_t:.3g})": p_before}
    if args.temperature:
        curves[f"after (T={fitted_t:.3g})"] = p_after
    plots.plot_reliability(y, curves, out / "reliability.png")
    config.threshold = choice.threshold
    config.temperature = fitted_t
    print(f"threshold {choice.threshold:.6g} ({choice.method}; on the validation set FPR {choice.fpr:.4f}, "
          f"TPR {choice.tpr:.4f}, F1 {choice.f1:.4f}); temperature {fitted_t:.4g} "
          f"(NLL {record['nll_before']:.4f} -> {record['nll_after']:.4f}, "
          f"ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}); reliability diagram in "
          f"{out / 'reliability.png'}")
    return record


def run_fit_uncertainty(args) -> int:
    from deepfake_moe.data.commands import decode_options
    from deepfake_moe.evaluate.uncertainty import fit_statistics
    from deepfake_moe.model.checkpoint import STATS_FILE, load_checkpoint, resolve, save_uncertainty

    if args.components < 1:
        raise ConfigError("--components must be >= 1")
    if args.max_images is not None and args.max_images < 4:
        raise ConfigError("--max-images must be >= 4 (two reals and two fakes at least)")
    folder = resolve(args.weights)
    model, config = load_checkpoint(folder)
    labels = _read_labels(args.manifest, args.root)
    limits, budget = decode_options(args)
    try:
        record = fit_statistics(model, config, labels, str(args.manifest), args.components, args.batch_size or FIT_BATCH,
                                args.device, progress=not args.no_progress, max_images=args.max_images, limits=limits,
                                decode_budget=budget)
    except ValueError as e:
        raise InputError(f"cannot fit uncertainty statistics on {args.manifest}: {e}") from None
    for p, e in record["failed"][:20]:
        print(f"not scored: {p}: {e}", file=sys.stderr)
    save_uncertainty(model, config, folder)
    size = (folder / STATS_FILE).stat().st_size / 1024
    print(f"fitted on {record['n_images']} of {record['sampled_from']} images ({record['n_real']} real, "
          f"{record['n_fake']} fake): "
          f"{folder / STATS_FILE} ({size:.0f} KiB). Fit the uncertainty threshold next: deepfake-moe calibrate "
          f"VALIDATION_MANIFEST --weights {args.weights} --uncertainty-only")
    return EXIT_PARTIAL if record["failed"] else EXIT_OK
