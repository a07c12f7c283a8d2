"""What the routes call: decode uploads off the event loop in capped processes, score them through the
micro-batcher, explain them.

Uploads are decoded by `SharedDecoders` (data/decode_pool.py): each in a process under its share of the
decode memory cap and the per-file timeout, so a hostile upload costs its own answer, never the server's
memory. Threads wait on those processes so the event loop never does.

One Service per server, built once at start-up around a Predictor (its model, preprocessing and
verdict rule are the CLI's, so the API and `predict` give the same numbers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from deepfake_moe.data.decode_pool import DecodeFailure, SharedDecoders
from deepfake_moe.data.image_io import ImageReader
from deepfake_moe.infer.faces import decode_crops
from deepfake_moe.infer.predictor import PredictionRow, Predictor
from deepfake_moe.model.mixture import Mixture
from deepfake_moe.serve.batcher import Capacity, MicroBatcher
from deepfake_moe.serve.limits import ServeLimits
from deepfake_moe.serve.uploads import DecodeUpload, Upload, UploadError, refusal


class Service:
    def __init__(self, predictor: Predictor, limits: ServeLimits | None = None, explainer: Mixture | None = None):
        """`explainer`: the PyTorch mixture for Grad-CAM (None when the weights are an ONNX file)."""
        self.predictor = predictor
        self.config = predictor.config
        self.limits = limits or ServeLimits()
        self.explainer = explainer
        self.views, self.view_index = self.config.views()  # an image is preprocessed once per view
        self.batcher = MicroBatcher(self._score, self.limits.max_batch, self.limits.max_wait_ms / 1000)
        self.capacity = Capacity(self.limits.queue_length)
        if predictor.faces:
            from deepfake_moe.augment.faces import load_detector

            load_detector()  # now, not in the first request's decoding process: the forked ones share it
        reader = ImageReader(self.config.image_backend, self.limits.image_limits())
        task = DecodeUpload(reader, tuple(self.views), predictor.faces, predictor.max_faces)
        self._decode = SharedDecoders(task, self.limits.decode_threads, self.limits.decode)
        self._decoders = ThreadPoolExecutor(self.limits.decode_threads, thread_name_prefix="deepfake-moe-decode")
        self._explainers = ThreadPoolExecutor(1, thread_name_prefix="deepfake-moe-explain")  # one Grad-CAM at a time

    def close(self) -> None:
        self.batcher.close()
        self._decoders.shutdown(wait=True, cancel_futures=True)
        self._explainers.shutdown(wait=False, cancel_futures=True)
        self._decode.close()

    def decode(self, upload: Upload, preprocess: bool = False):
        """An upload's RGB array (or, with `preprocess`, one batch per view over its crops, its faces and its
        shape: `decode_crops`), or UploadError with its status (runs in a waiting thread; the decode itself in
        a capped process)."""
        if upload.error is not None:
            raise upload.error
        result = self._decode((bytes(upload.data), preprocess))
        if isinstance(result, DecodeFailure):
            raise refusal(result)
        try:
            if preprocess:
                return decode_crops(result, self.views)
            if not (isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.ndim == 3
                    and result.shape[2] == 3):
                raise ValueError(f"an array of {getattr(result, 'shape', type(result))} instead of RGB uint8")
        except (ValueError, TypeError) as e:
            raise UploadError(422, f"the decoder returned a malformed result ({e})") from None
        return result

    def _score(self, *views: torch.Tensor) -> np.ndarray:
        """(B, n_experts + 1): each image's expert probabilities, then its uncertainty (nan without statistics).
        The micro-batch goes to the model in slices of the predictor's batch (the plan's: memory per call)."""
        step = self.predictor.batch_size
        parts = [self.predictor.score_batch(*(v[i : i + step] for v in views)) for i in range(0, len(views[0]), step)]
        return np.concatenate([np.concatenate([probs, unc[:, None]], axis=1) for probs, unc in parts])

    def _prepare(self, upload: Upload) -> tuple[list[tuple[torch.Tensor, ...]], list, tuple[int, ...]]:
        """The model inputs of each crop to score (each face's in face mode, else the whole image's), the faces
        found and the image's shape, from the upload's capped decoding process."""
        views, faces, shape = self.decode(upload, preprocess=True)
        return list(zip(*views)), faces, shape

    async def predict(self, uploads: list[Upload]) -> list[dict[str, Any]]:
        """One result per upload, in order; bad files get an error row, the others are still scored."""
        with self.capacity.hold(len(uploads)):
            return list(await asyncio.gather(*(self._predict_one(u) for u in uploads)))

    async def _predict_one(self, upload: Upload) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            inputs, faces, shape = await loop.run_in_executor(self._decoders, self._prepare, upload)
        except UploadError as e:
            return self.result(PredictionRow(upload.name, math.nan, "", e.reason), e.status)
        # each crop is batched with other requests' images; the image takes its most fake crop, as predict does
        scored = np.stack(await asyncio.gather(*(asyncio.wrap_future(self.batcher.submit(x)) for x in inputs)))
        row = self.predictor.image_row(upload.name, scored[:, :-1], scored[:, -1], faces, shape)
        return self.result(row, 200)

    def result(self, row: PredictionRow, status: int) -> dict[str, Any]:
        """The row as JSON: every field the predictor's row has (new ones pass through), `path` named `name`."""
        fields = dataclasses.asdict(row)
        out = {"name": fields.pop("path")}
        out.update((key, _json_number(value)) for key, value in fields.items())
        out.update(threshold=self.config.threshold, status=status)
        return out

    async def explain(self, upload: Upload) -> tuple[bytes, float]:
        from deepfake_moe.infer.explain import explanation_png

        if self.explainer is None:
            raise UploadError(501, "explanations need PyTorch weights; this server runs an ONNX file")
        loop = asyncio.get_running_loop()
        with self.capacity.hold(1):
            rgb = await loop.run_in_executor(self._decoders, self.decode, upload)
            return await loop.run_in_executor(
                self._explainers, explanation_png, self.explainer, self.config, rgb, upload.name,
                self.predictor.faces, self.predictor.max_faces,
            )

    def model_info(self) -> dict[str, Any]:
        cfg, limits = self.config, self.limits
        runtime = "torch" if isinstance(self.predictor.model, torch.nn.Module) else self.predictor.model.runtime
        return {
            "name": cfg.name,
            "experts": [{"backbone": e.backbone, "note": e.note, "input_size": self.views[v].input_size,
                         "preprocess": self.views[v].mode} for e, v in zip(cfg.experts, self.view_index)],
            "input_size": cfg.preprocess.input_size,
            "preprocess": cfg.preprocess.mode,
            "threshold": cfg.threshold,
            "temperature": cfg.temperature,
            "runtime": runtime,
            "device": str(self.predictor.device),
            "explain": self.explainer is not None,
            "faces": self.predictor.faces,
            "max_faces": self.predictor.max_faces,
            "info": json.loads(json.dumps(cfg.info, default=str)),  # what it was trained and calibrated on
            "limits": {**dataclasses.asdict(limits), "formats": list(limits.formats)},
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.batcher.alive else "down",
            "in_flight": self.capacity.used,
            "queue_length": self.capacity.limit,
            "batches": len(self.batcher.batch_sizes),
            "images_scored": self.batcher.images_scored,
        }


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    return value
