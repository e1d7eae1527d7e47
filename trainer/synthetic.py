"""``python -m trainer.synthetic OUT``: a small labelled street-scene data set drawn from
scratch (KITTI layout: ``train|val/images/*.jpg`` + ``labels/*.txt``), so training, the demo
and tests run on a machine with no data. The scenes are crude on purpose (road, sky, cars as
bodies with windows and wheels, vans as taller boxes, clutter) but the boxes are exact.
Real data goes through ``carmesh ingest dataset`` (see README.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def _scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    horizon = int(height * rng.uniform(0.35, 0.5))
    image = np.empty((height, width, 3), np.uint8)
    sky = np.linspace(rng.uniform(170, 230), rng.uniform(120, 170), horizon)[:, None, None]
    image[:horizon] = np.clip(sky * np.array([1.0, 0.95, 0.85]), 0, 255).astype(np.uint8)
    road = rng.uniform(70, 110)
    image[horizon:] = np.array([road, road, road * 1.02], np.uint8)
    for _ in range(int(rng.integers(2, 6))):  # buildings / clutter on the horizon
        x = int(rng.integers(0, width))
        w, h = int(rng.integers(30, 160)), int(rng.integers(20, horizon))
        color = rng.integers(60, 200, 3).tolist()
        cv2.rectangle(image, (x, horizon - h), (x + w, horizon), color, -1)
    for i in range(4):  # lane marks
        x = int(width * (0.2 + 0.2 * i))
        cv2.line(image, (x, height), (width // 2, horizon), (220, 220, 220), 2)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def _vehicle(image: np.ndarray, rng: np.random.Generator, x1: int, y1: int, w: int, h: int, van: bool) -> None:
    color = rng.integers(20, 235, 3).tolist()
    x2, y2 = x1 + w, y1 + h
    wheel_r = max(2, h // 6)
    body_top = y1 if van else y1 + h // 3
    cv2.rectangle(image, (x1, body_top), (x2, y2 - wheel_r), color, -1)
    if not van:  # cabin with windows
        cv2.rectangle(image, (x1 + w // 5, y1), (x2 - w // 5, body_top), color, -1)
        cv2.rectangle(image, (x1 + w // 4, y1 + h // 12), (x2 - w // 4, body_top), (60, 40, 30), -1)
    else:
        cv2.rectangle(image, (x1 + w // 8, y1 + h // 10), (x2 - w // 8, y1 + h // 3), (60, 40, 30), -1)
    for cx in (x1 + w // 5, x2 - w // 5):
        cv2.circle(image, (cx, y2 - wheel_r), wheel_r, (15, 15, 15), -1)
    cv2.rectangle(image, (x1, body_top), (x1 + max(2, w // 12), body_top + max(2, h // 8)), (40, 200, 255), -1)


def make_image(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[str]]:
    image = _scene(rng, width, height)
    labels: list[str] = []
    horizon = int(height * 0.45)
    for _ in range(int(rng.integers(1, 7))):
        # Perspective: lower in the frame is nearer, hence bigger.
        bottom = int(rng.uniform(horizon + 10, height - 2))
        scale = (bottom - horizon) / (height - horizon)
        h = max(8, int(scale * height * rng.uniform(0.25, 0.4)))
        van = bool(rng.random() < 0.2)
        w = int(h * (rng.uniform(1.0, 1.3) if van else rng.uniform(1.3, 1.9)))
        x1 = int(rng.integers(0, max(1, width - w)))
        y1 = bottom - h
        _vehicle(image, rng, x1, y1, w, h, van)
        name = "van" if van else "car"
        labels.append(f"{name} 0.00 0 0.00 {x1:.2f} {y1:.2f} {x1 + w:.2f} {bottom:.2f} 0 0 0 0 0 0 0")
    return image, labels


def write_dataset(
    out: Path, train_images: int, val_images: int, width: int = 640, height: int = 360, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_images), ("val", val_images)):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "labels").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, labels = make_image(rng, width, height)
            cv2.imwrite(str(out / split / "images" / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            (out / split / "labels" / f"{i:06d}.txt").write_text("\n".join(labels) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.synthetic", description=__doc__)
    parser.add_argument("out", type=Path, help="folder to write (KITTI layout)")
    parser.add_argument("--train", type=int, default=96, help="training images (default 96)")
    parser.add_argument("--val", type=int, default=32, help="validation images (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_dataset(args.out, args.train, args.val, seed=args.seed)
    print(f"wrote {args.train} train and {args.val} val images with KITTI labels to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
