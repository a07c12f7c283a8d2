"""Classical face swap, the FaceForensics++ "FaceSwap" kind, between a real and a donor real.

Both faces get dlib's 68 landmarks; the target's landmarks are Delaunay-triangulated and each
donor triangle is affinely warped onto its target triangle; the warped face is colour-matched to
the target (mean and spread in Lab inside the face) and Poisson-blended (`cv2.seamlessClone`)
over the convex hull of the target's landmarks, feathered at its edge.
"""

from __future__ import annotations

import cv2
import numpy as np

from deepfake_moe.augment.faces import FaceError, require_landmarks
from deepfake_moe.augment.registry import AugmentContext, AugmentResult, register

DONOR_TRIES = 12  # donors drawn before giving up when they hold no detectable face


def _triangles(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay

    return Delaunay(points).simplices


def _warp_triangle(src: np.ndarray, dst: np.ndarray, tri_src: np.ndarray, tri_dst: np.ndarray) -> None:
    """Affinely map the src triangle's pixels into dst's triangle, in place."""
    xs, ys, ws, hs = cv2.boundingRect(tri_src.astype(np.float32))
    xd, yd, wd, hd = cv2.boundingRect(tri_dst.astype(np.float32))
    if ws == 0 or hs == 0 or wd == 0 or hd == 0:
        return
    src_local = (tri_src - (xs, ys)).astype(np.float32)
    dst_local = (tri_dst - (xd, yd)).astype(np.float32)
    patch = src[ys : ys + hs, xs : xs + ws]
    matrix = cv2.getAffineTransform(src_local, dst_local)
    warped = cv2.warpAffine(patch, matrix, (wd, hd), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    tri_mask = np.zeros((hd, wd), np.uint8)
    cv2.fillConvexPoly(tri_mask, np.round(dst_local).astype(np.int32), 1, lineType=cv2.LINE_8)
    region = dst[yd : yd + hd, xd : xd + wd]
    h, w = region.shape[:2]  # the rect may overhang the image border
    region[tri_mask[:h, :w] > 0] = warped[:h, :w][tri_mask[:h, :w] > 0]


def _match_colour(face: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give `face` the target's Lab mean and spread inside `mask` (Reinhard colour transfer)."""
    f = cv2.cvtColor(face, cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    inside = mask > 0
    fm, fs = f[inside].mean(0), f[inside].std(0) + 1e-3
    tm, ts = t[inside].mean(0), t[inside].std(0) + 1e-3
    out = (f - fm) * (ts / fs) + tm
    return cv2.cvtColor(out.clip(0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def swap_face(target: np.ndarray, target_pts: np.ndarray, donor: np.ndarray, donor_pts: np.ndarray, shrink: int = 0):
    """The target with the donor's face put in; returns (image, bool mask of the changed area)."""
    h, w = target.shape[:2]
    warped = target.copy()
    for tri in _triangles(target_pts):
        _warp_triangle(donor, warped, donor_pts[tri], target_pts[tri])
    hull = cv2.convexHull(np.round(target_pts).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 255)
    if shrink > 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * shrink + 1, 2 * shrink + 1)))
    # seamlessClone needs the mask off the image border.
    mask[0, :] = mask[-1, :] = 0
    mask[:, 0] = mask[:, -1] = 0
    if mask.sum() == 0:
        raise FaceError("face area is empty after clipping to the image")
    warped = _match_colour(warped, target, mask)
    x, y, bw, bh = cv2.boundingRect(mask)
    center = (x + bw // 2, y + bh // 2)
    cloned = cv2.seamlessClone(warped, target, mask.copy(), center, cv2.NORMAL_CLONE)  # it overwrites its mask
    # seamlessClone also alters the rest of the mask's bounding box: keep only the face area,
    # feathered over a few pixels, so the returned mask is exactly where pixels changed.
    feather = max(3, (bw // 20) | 1)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (feather, feather), 0)[..., None]
    out = (cloned * alpha + target * (1.0 - alpha) + 0.5).astype(np.uint8)
    return out, alpha[..., 0] > 1.0 / 512


@register("faceswap", label=1, kind="generative")
def faceswap(rgb: np.ndarray, rng: np.random.Generator, ctx: AugmentContext) -> AugmentResult:
    """Classical face swap: a donor face Delaunay-warped onto this face and Poisson-blended."""
    if ctx.donor is None:
        raise ValueError("faceswap needs donor images (the engine provides them)")
    box, target_pts = require_landmarks(rgb, "image")
    for _ in range(DONOR_TRIES):
        donor_id, donor = ctx.donor(rng)
        try:
            _, donor_pts = require_landmarks(donor, f"donor {donor_id}")
        except FaceError:
            continue
        shrink = int(rng.integers(0, max(1, box[2] // 25) + 1))
        image, mask = swap_face(rgb, target_pts, donor, donor_pts, shrink=shrink)
        return AugmentResult(image, {"donor": donor_id, "face_box": list(box), "hull_shrink_px": shrink}, mask)
    raise FaceError(f"no face found in {DONOR_TRIES} donor images")
