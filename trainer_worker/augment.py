"""The training sample pipeline (numpy + OpenCV); the inference letterbox is kit/letterbox.py.

A training sample is a fixed-size crop (``crop_w`` x ``crop_h``) of the source image scaled by
``image_scale`` times a random zoom, placed so that it usually contains an object (small distant
cars survive the crop at full detail, which a whole-frame downscale would lose), then flipped and
HSV-jittered. A crop centred on an object too large for it may zoom out until the object fits whole
(``fit_p``), so near objects are not learnt only as cut boxes. Boxes follow the crop exactly; boxes
cut to less than ``min_visible`` of their area or shorter/narrower than ``min_box_px`` are dropped.
Ignore regions are painted grey (114, the letterbox pad value) outside target boxes, so the loss
sees neither positives nor hard negatives there.
With probability ``mosaic_p`` a sample is instead a 2x2 mosaic of four such crops of four images.

Batches are RGB float32 0..1 NHWC plus padded targets for kyolo's loss: ``boxes`` [B, M, 4] xyxy in
input pixels, ``labels`` [B, M] int32, ``mask`` [B, M] float32.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kit.letterbox import PAD_VALUE
from trainer.data import LabelledImage

UInt8Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AugmentConfig:
    crop_w: int = 384
    crop_h: int = 384
    image_scale: float = 2 / 3  # source pixels -> training pixels (matches the export size / source size)
    zoom_min: float = 0.75  # random extra zoom around image_scale
    zoom_max: float = 1.35
    object_bias: float = 0.85  # probability that the crop is centred near a random target box
    flip_p: float = 0.5
    hsv_h: float = 0.015  # fractions as in Ultralytics' hsv_h/s/v
    hsv_s: float = 0.6
    hsv_v: float = 0.35
    min_visible: float = 0.4
    min_box_px: float = 3.0
    max_boxes: int = 64
    paint_ignore: bool = True
    mosaic_p: float = 0.0  # probability that a sample is a 2x2 mosaic of four crops (four images)
    mosaic_zoom: float = 1.0  # extra zoom of a mosaic's quadrants (< 1: smaller quadrants still hold large cars)
    # Probability that a crop centred on a target too large for it zooms out until the target fits whole
    # (at most ``fit_fraction`` of the crop's width and height): near cars are otherwise seen mostly cut.
    fit_p: float = 0.0
    fit_fraction: float = 0.9
    # The crop's target box is drawn with weights height ** target_size_power (0: uniform over boxes).
    target_size_power: float = 0.0


@dataclass(frozen=True)
class Batch:
    images: FloatArray  # [B, H, W, 3] RGB 0..1
    boxes: FloatArray  # [B, M, 4] xyxy input pixels
    labels: npt.NDArray[np.int32]  # [B, M]
    mask: FloatArray  # [B, M]


class ImageCache:
    """Decoded RGB images at ``base_scale`` of the source, kept in memory (the data sets here are small)."""

    def __init__(self, base_scale: float) -> None:
        self.base_scale = base_scale
        self._images: dict[Path, UInt8Image] = {}
        self._lock = threading.Lock()

    def get(self, path: Path) -> UInt8Image:
        with self._lock:
            cached = self._images.get(path)
        if cached is not None:
            return cached
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode image {path}")
        if self.base_scale != 1.0:
            h, w = bgr.shape[:2]
            size = (max(1, round(w * self.base_scale)), max(1, round(h * self.base_scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)
        with self._lock:
            self._images[path] = rgb
        return rgb


def pick_target(rng: np.random.Generator, boxes: FloatArray, bias: float, size_power: float = 0.0) -> int | None:
    """Index of the box a crop is centred near (probability ``bias``; weights height ** ``size_power``)."""
    if not len(boxes) or rng.random() >= bias:
        return None
    if size_power == 0:
        return int(rng.integers(len(boxes)))
    weights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0) ** size_power
    return int(rng.choice(len(boxes), p=weights / weights.sum()))


def crop_window(
    rng: np.random.Generator,
    image_wh: tuple[float, float],
    win_wh: tuple[float, float],
    target: FloatArray | None,
    whole: bool = False,
) -> tuple[float, float]:
    """Top-left of a ``win_wh`` window in an ``image_wh`` image: near the ``target`` box (xyxy; anywhere if
    None); with ``whole`` the window holds that box entirely where it can."""
    img_w, img_h = image_wh
    win_w, win_h = win_wh
    if target is not None:
        x1, y1, x2, y2 = target
        if whole and x2 - x1 <= win_w and y2 - y1 <= win_h:
            left = rng.uniform(x2 - win_w, x1)
            top = rng.uniform(y2 - win_h, y1)
        else:
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            # The box centre lands anywhere in the central 80% of the window.
            left = cx - win_w * rng.uniform(0.1, 0.9)
            top = cy - win_h * rng.uniform(0.1, 0.9)
    else:
        left = rng.uniform(0, max(0.0, img_w - win_w))
        top = rng.uniform(0, max(0.0, img_h - win_h))
    # Keep the window on the image where it fits (no needless padding).
    left = float(np.clip(left, min(0.0, img_w - win_w), max(0.0, img_w - win_w)))
    top = float(np.clip(top, min(0.0, img_h - win_h), max(0.0, img_h - win_h)))
    return left, top


def transform_boxes(
    boxes: FloatArray, left: float, top: float, zoom: float, out_wh: tuple[int, int], flip: bool
) -> tuple[FloatArray, FloatArray]:
    """Maps boxes into the output crop, clips them; returns (clipped boxes, visible fraction of each)."""
    out_w, out_h = out_wh
    b = (boxes.astype(np.float32) - np.array([left, top, left, top], np.float32)) * np.float32(zoom)
    if flip:
        b = np.stack([out_w - b[:, 2], b[:, 1], out_w - b[:, 0], b[:, 3]], axis=1)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    clipped = np.clip(b, 0, np.array([out_w, out_h, out_w, out_h], np.float32)).astype(np.float32)
    clipped_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    visible = np.where(area > 0, clipped_area / np.maximum(area, 1e-9), 0.0).astype(np.float32)
    return clipped.reshape(-1, 4), visible.reshape(-1)


def hsv_jitter(rng: np.random.Generator, rgb: UInt8Image, h: float, s: float, v: float) -> UInt8Image:
    if h == 0 and s == 0 and v == 0:
        return rgb
    gains = rng.uniform(-1, 1, 3) * np.array([h, s, v]) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), np.uint8)


def make_sample(
    rng: np.random.Generator, item: LabelledImage, cache: ImageCache, cfg: AugmentConfig
) -> tuple[UInt8Image, FloatArray, npt.NDArray[np.int32]]:
    """One augmented crop: RGB uint8 [crop_h, crop_w, 3], boxes [K, 4] xyxy crop pixels, classes [K]."""
    base = cache.get(item.path)
    base_scale = cache.base_scale
    zoom = cfg.image_scale * float(np.exp(rng.uniform(np.log(cfg.zoom_min), np.log(cfg.zoom_max))))
    rel = zoom / base_scale  # base-image pixels -> crop pixels
    img_h, img_w = base.shape[:2]
    boxes = item.boxes * np.float32(base_scale)
    index = pick_target(rng, boxes, cfg.object_bias, cfg.target_size_power)
    target = None if index is None else boxes[index]
    whole = target is not None and cfg.fit_p > 0 and rng.random() < cfg.fit_p
    if target is not None and whole:
        x1, y1, x2, y2 = target
        # Zoom out (never in) so that the target takes at most fit_fraction of the crop.
        rel = min(rel, cfg.fit_fraction * min(cfg.crop_w / max(x2 - x1, 1.0), cfg.crop_h / max(y2 - y1, 1.0)))
    win_w, win_h = cfg.crop_w / rel, cfg.crop_h / rel
    left, top = crop_window(rng, (img_w, img_h), (win_w, win_h), target, whole)
    # Affine warp does crop + scale + out-of-image padding in one pass.
    matrix = np.array([[rel, 0, -left * rel], [0, rel, -top * rel]], np.float64)
    interp = cv2.INTER_AREA if rel < 1 else cv2.INTER_LINEAR
    crop: UInt8Image = np.asarray(
        cv2.warpAffine(
            base,
            matrix,
            (cfg.crop_w, cfg.crop_h),
            flags=interp,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
        ),
        np.uint8,
    )
    flip = bool(rng.random() < cfg.flip_p)
    out_wh = (cfg.crop_w, cfg.crop_h)
    # Flip is applied to the boxes in transform_boxes and to the pixels below.
    tb, visible = transform_boxes(boxes, left, top, rel, out_wh, flip)
    keep = (
        (visible >= cfg.min_visible) & (tb[:, 2] - tb[:, 0] >= cfg.min_box_px) & (tb[:, 3] - tb[:, 1] >= cfg.min_box_px)
    )
    if flip:
        crop = np.ascontiguousarray(crop[:, ::-1])
    if cfg.paint_ignore and len(item.ignore):
        ig, ig_vis = transform_boxes(item.ignore * np.float32(base_scale), left, top, rel, out_wh, flip)
        paint = np.zeros((cfg.crop_h, cfg.crop_w), bool)
        for x1, y1, x2, y2 in np.round(ig[ig_vis > 0]).astype(int):
            paint[y1:y2, x1:x2] = True
        # Targets stay visible even when an ignore region overlaps them.
        for x1, y1, x2, y2 in np.round(tb[keep]).astype(int):
            paint[y1:y2, x1:x2] = False
        # Cut-off targets that are dropped become don't-care as well.
        for x1, y1, x2, y2 in np.round(tb[~keep & (visible > 0)]).astype(int):
            paint[y1:y2, x1:x2] = True
        crop[paint] = PAD_VALUE
    crop = hsv_jitter(rng, crop, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
    return crop, tb[keep], item.classes[keep].astype(np.int32)


def make_mosaic(
    rng: np.random.Generator, items: Sequence[LabelledImage], cache: ImageCache, cfg: AugmentConfig
) -> tuple[UInt8Image, FloatArray, npt.NDArray[np.int32]]:
    """A 2x2 mosaic of four crops (of ``items``, usually four images) around a random centre, each quadrant a
    :func:`make_sample` of its own size: more images, contexts and objects per step at the same pixel cost."""
    if len(items) != 4:
        raise ValueError(f"a mosaic needs 4 images, got {len(items)}")
    min_w, min_h = min(32, cfg.crop_w // 2), min(32, cfg.crop_h // 2)
    cx = int(rng.uniform(0.3, 0.7) * cfg.crop_w)
    cy = int(rng.uniform(0.3, 0.7) * cfg.crop_h)
    cx, cy = int(np.clip(cx, min_w, cfg.crop_w - min_w)), int(np.clip(cy, min_h, cfg.crop_h - min_h))
    canvas = np.empty((cfg.crop_h, cfg.crop_w, 3), np.uint8)
    all_boxes, all_classes = [], []
    regions = ((0, 0, cx, cy), (cx, 0, cfg.crop_w, cy), (0, cy, cx, cfg.crop_h), (cx, cy, cfg.crop_w, cfg.crop_h))
    for item, (x1, y1, x2, y2) in zip(items, regions, strict=True):
        quadrant = replace(cfg, crop_w=x2 - x1, crop_h=y2 - y1, image_scale=cfg.image_scale * cfg.mosaic_zoom)
        part, boxes, classes = make_sample(rng, item, cache, quadrant)
        canvas[y1:y2, x1:x2] = part
        all_boxes.append(boxes + np.array([x1, y1, x1, y1], np.float32))
        all_classes.append(classes)
    return canvas, np.concatenate(all_boxes).reshape(-1, 4), np.concatenate(all_classes).astype(np.int32)


def pad_targets(
    boxes: Sequence[FloatArray], classes: Sequence[npt.NDArray[np.int32]], max_boxes: int
) -> tuple[FloatArray, npt.NDArray[np.int32], FloatArray]:
    n = len(boxes)
    out_boxes = np.zeros((n, max_boxes, 4), np.float32)
    out_labels = np.zeros((n, max_boxes), np.int32)
    out_mask = np.zeros((n, max_boxes), np.float32)
    for i, (b, c) in enumerate(zip(boxes, classes, strict=True)):
        if len(b) > max_boxes:
            # Keep the largest boxes: the rare crowded crop loses its tiniest, least certain targets.
            order = np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[:max_boxes]
            b, c = b[order], c[order]
        out_boxes[i, : len(b)] = b
        out_labels[i, : len(b)] = c
        out_mask[i, : len(b)] = 1.0
    return out_boxes, out_labels, out_mask


class BatchIterator:
    """Deterministic, sharded batches: epoch ``e`` shuffles ``samples_per_epoch`` draws of the images with
    ``(seed, e)``; worker ``k`` of ``n`` takes every n-th sample, so workers see disjoint samples and all
    run the same number of steps (a requirement of synchronous multi-worker training)."""

    def __init__(
        self,
        images: Sequence[LabelledImage],
        cfg: AugmentConfig,
        batch_size: int,
        seed: int = 0,
        worker_index: int = 0,
        num_workers: int = 1,
        samples_per_epoch: int | None = None,
        threads: int = 2,
    ) -> None:
        if not images:
            raise ValueError("no training images")
        if not 0 <= worker_index < num_workers:
            raise ValueError(f"worker_index {worker_index} outside 0..{num_workers - 1}")
        self.images = list(images)
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch or len(self.images)
        base = min(1.0, cfg.image_scale * cfg.zoom_max)
        self.cache = ImageCache(base)
        self.threads = threads

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.samples_per_epoch // (self.batch_size * self.num_workers))

    def _order(self, epoch: int) -> npt.NDArray[np.int64]:
        rng = np.random.default_rng([self.seed, epoch])
        reps = -(-self.samples_per_epoch // len(self.images))
        order = np.concatenate([rng.permutation(len(self.images)) for _ in range(reps)])
        return order[: self.samples_per_epoch]

    def sample(
        self, epoch: int, position: int, image_index: int, mosaic: bool = True
    ) -> tuple[UInt8Image, FloatArray, npt.NDArray[np.int32]]:
        # Seeded by the global sample position, so a sample is the same whichever worker draws it.
        rng = np.random.default_rng([self.seed, epoch, position, 7])
        if mosaic and self.cfg.mosaic_p > 0 and rng.random() < self.cfg.mosaic_p:
            others = rng.integers(len(self.images), size=3)
            items = [self.images[image_index]] + [self.images[int(i)] for i in others]
            return make_mosaic(rng, items, self.cache, self.cfg)
        return make_sample(rng, self.images[image_index], self.cache, self.cfg)

    def _batch(self, epoch: int, step: int, order: npt.NDArray[np.int64], mosaic: bool) -> Batch:
        samples = []
        for j in range(self.batch_size):
            position = (step * self.batch_size + j) * self.num_workers + self.worker_index
            position %= len(order)
            samples.append(self.sample(epoch, position, int(order[position]), mosaic))
        images = np.stack([s[0] for s in samples]).astype(np.float32) / 255.0
        boxes, labels, mask = pad_targets([s[1] for s in samples], [s[2] for s in samples], self.cfg.max_boxes)
        return Batch(images, boxes, labels, mask)

    def epoch(self, epoch: int, start_step: int = 0, mosaic: bool = True) -> Iterator[Batch]:
        """Batches of one epoch from ``start_step``, prepared ahead in background threads (OpenCV and numpy
        release the GIL, so this overlaps with the training step). ``mosaic=False`` draws no mosaics."""
        order = self._order(epoch)
        steps = range(start_step, self.steps_per_epoch)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            pending = [pool.submit(self._batch, epoch, s, order, mosaic) for s in steps[: self.threads + 1]]
            next_step = start_step + len(pending)
            while pending:
                batch = pending.pop(0).result()
                if next_step < self.steps_per_epoch:
                    pending.append(pool.submit(self._batch, epoch, next_step, order, mosaic))
                    next_step += 1
                yield batch


def frame_scale(images: Sequence[LabelledImage], input_wh: tuple[int, int]) -> float:
    """The letterbox scale of the median training frame into ``input_wh``: what the served model sees
    of a source pixel. Reads image headers only."""
    from PIL import Image

    if not images:
        raise ValueError("no training images")
    sizes = []
    for item in images:
        with Image.open(item.path) as image:
            sizes.append(image.size)
    width, height = (float(np.median([s[i] for s in sizes])) for i in (0, 1))
    return min(input_wh[0] / width, input_wh[1] / height)
