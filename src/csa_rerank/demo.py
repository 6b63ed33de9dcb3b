"""A built-in, deterministic demo benchmark in exactly the on-disk formats of the real data sets.

So the whole pipeline can run offline on a laptop, this module paints small stand-ins for

- Revisited Oxford / Paris (:func:`generate_test_set`): ``jpg/<name>.jpg`` and ``gnd_<name>.pkl`` with ``imlist``,
  ``qimlist`` and one ``gnd`` dict per query (``bbx``, ``easy``, ``hard``, ``junk``), as revisitop's files;
- the R1M distractors (:func:`generate_distractors`): ``jpg/<sub>/<name>.jpg`` and ``revisitop1m.txt``;
- retrieval-SfM-120k (:func:`generate_training_set`): ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>`` (JPEG
  without extension) and ``retrieval-SfM-120k.pkl`` with cirtorch's ``train``/``val`` splits.

Every "landmark" is a procedurally drawn building facade with its own shape, palette, stone stripes, window grid,
window shape and ornament.  A photo of it is the facade warped by a random perspective (yaw, pitch, roll, scale,
position) onto a street scene (sky, ground, generic buildings, trees), partly hidden by occluders (trees, people,
cars, poles, a nearer building) and relit (colour cast, brightness, gamma, a shadow gradient, sensor noise).

The revisitop labels follow from what is actually visible in the painted photo, so they mean what they mean there:
easy = the landmark is large, almost unoccluded and mildly changed; hard = strongly warped, occluded, small or
relit but still a good part of it is visible; junk = barely visible (tiny, mostly hidden or cut off by the image
border), which revisitop neither counts nor penalises.  Negatives are the other landmarks and background scenes.

Determinism: every facade and every photo draws from its own ``numpy.random.Generator`` seeded with
``[seed, stream, index...]``, so equal arguments give byte-identical files (PIL's JPEG encoder is deterministic)
and different data sets, seeds or streams give unrelated landmarks.  Each file is written under a temporary name
and renamed, and the ground-truth / list file is written last, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import colorsys
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import safe_pickle

# Independent random streams, so the test sets, the distractors and the training set never share a landmark.
_STREAM_TEST, _STREAM_DISTRACTORS, _STREAM_TRAIN = 1, 2, 3
# Sub-streams inside one data set.
_SUB_LANDMARK, _SUB_VIEW, _SUB_QUERY, _SUB_BACKGROUND, _SUB_LAYOUT = 0, 1, 2, 3, 4

FACADE_LONG_SIDE = 160  # facades are painted once at this size and warped into each photo
JPEG_QUALITY = 90

# What a view of a landmark looks like, by intended difficulty: the landmark's size as a fraction of the largest
# size that fits the photo, perspective strengths (yaw = one side shorter, pitch = keystone, roll in degrees),
# the fraction of the landmark that occluders should hide, relighting strength, and how far the landmark may be
# pushed past the image border (as a fraction of its own size).
_VIEW_PRESETS = {
    "query": dict(scale=(0.92, 1.0), yaw=0.15, pitch=0.08, roll=3.0, centre=0.1, occlusion=(0.0, 0.05), light=0.15,
                  cut=0.0),
    "easy": dict(scale=(0.8, 1.05), yaw=0.25, pitch=0.1, roll=4.0, centre=0.2, occlusion=(0.0, 0.1), light=0.3,
                 cut=0.05),
    "hard": dict(scale=(0.45, 0.8), yaw=0.5, pitch=0.25, roll=10.0, centre=0.6, occlusion=(0.15, 0.4), light=0.8,
                 cut=0.1),
    "junk": dict(scale=(0.15, 0.35), yaw=0.7, pitch=0.3, roll=15.0, centre=1.0, occlusion=(0.55, 0.85), light=0.8,
                 cut=0.5),
}
# Shares of easy / hard / junk among the database views of one landmark, and among a training cluster's images.
_TEST_VIEW_MIX = (("easy", 0.45), ("hard", 0.4), ("junk", 0.15))
_TRAIN_VIEW_MIX = (("easy", 0.5), ("hard", 0.4), ("junk", 0.1))
# Labels from the painted photo: visible landmark pixels / pixels it would cover unoccluded and uncut, and
# visible landmark pixels / image pixels.
_JUNK_MAX_VISIBLE, _JUNK_MAX_AREA = 0.4, 0.04
_EASY_MIN_VISIBLE, _EASY_MIN_AREA = 0.8, 0.15


def demo_defaults() -> dict:
    """The demo benchmark's sizes (the ``demo`` section of ``configs/demo.yaml``)."""
    return {
        "seed": 0,
        "image_size": 128,
        "testsets": {"n_landmarks": 11, "db_views_per_landmark": 24, "queries_per_landmark": 3, "n_background": 40},
        "distractors": {"n_images": 600},
        "training": {"n_clusters": 56, "n_val_clusters": 8, "images_per_cluster": 22},
    }


# ---------------------------------------------------------------------------------------------------------------
# colours and small helpers


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(round(255 * r)), int(round(255 * g)), int(round(255 * b))


def _jitter(rng: np.random.Generator, color: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """``color`` with each channel moved by up to ``amount`` (0..1) of the full range."""
    return tuple(int(np.clip(c + rng.uniform(-amount, amount) * 255, 0, 255)) for c in color)


def _photo_size(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """(width, height) with longest side ``image_size``: 4:3 landscape mostly, portrait sometimes, as on Flickr."""
    short = max(1, round(image_size * 3 / 4))
    return (image_size, short) if rng.random() < 0.7 else (short, image_size)


def _atomic_save_jpeg(pixels: np.ndarray, path: Path) -> None:
    """Write uint8 RGB ``pixels`` as a JPEG at ``path`` (any extension or none) via a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    Image.fromarray(pixels, "RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unique_serials(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` distinct six-digit numbers, for file names like revisitop's ``all_souls_000013``."""
    return [int(s) for s in rng.choice(1_000_000, size=n, replace=False)]


def _hex_ids(rng: np.random.Generator, n: int, n_chars: int) -> list[str]:
    """``n`` distinct lowercase hex strings of ``n_chars`` characters (rSfM120k-like image ids)."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        candidate = rng.bytes((n_chars + 1) // 2).hex()[:n_chars]
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


# ---------------------------------------------------------------------------------------------------------------
# landmarks: one painted facade each


def _draw_window(draw: ImageDraw.ImageDraw, box, shape: str, fill, frame) -> None:
    x0, y0, x1, y1 = box
    w = x1 - x0
    head = min(w / 2, (y1 - y0) / 2)  # height of an arched or pointed top, at most half the window
    if shape == "rect":
        draw.rectangle(box, fill=fill, outline=frame)
    elif shape == "arch":
        draw.rectangle((x0, y0 + head, x1, y1), fill=fill, outline=frame)
        draw.pieslice((x0, y0, x1, y0 + 2 * head), 180, 360, fill=fill, outline=frame)
    elif shape == "gothic":
        draw.rectangle((x0, y0 + head, x1, y1), fill=fill, outline=frame)
        draw.polygon([(x0, y0 + head), ((x0 + x1) / 2, y0), (x1, y0 + head)], fill=fill, outline=frame)
    else:  # round (oculus)
        r = min(w, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=frame)


def _draw_facade(rng: np.random.Generator) -> Image.Image:
    """A landmark: an RGBA facade (transparent around its silhouette) with its own shape, palette and ornament."""
    aspect = float(np.exp(rng.uniform(np.log(0.55), np.log(1.8))))  # width / height
    fw, fh = (FACADE_LONG_SIDE, round(FACADE_LONG_SIDE / aspect)) if aspect >= 1 else (
        round(FACADE_LONG_SIDE * aspect), FACADE_LONG_SIDE)
    hue = rng.random()
    wall = _rgb(hue, rng.uniform(0.08, 0.6), rng.uniform(0.45, 0.92))
    stripe = _rgb(hue + rng.uniform(-0.15, 0.15), rng.uniform(0.05, 0.7), rng.uniform(0.25, 0.95))
    trim = _rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.3, 1.0))
    glass = _rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.05, 0.4))
    roof_colour = _rgb(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.15, 0.7))
    accent = _rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))

    img = Image.new("RGBA", (fw, fh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    roof_type = ["flat", "gable", "dome", "towers", "crenel", "spire"][rng.integers(6)]
    roof_h = 0 if roof_type == "flat" else round(fh * rng.uniform(0.18, 0.35))
    body = (0, roof_h, fw - 1, fh - 1)
    draw.rectangle(body, fill=wall)

    # stone courses: horizontal bands, vertical bands or a checker, each landmark with its own period
    period = int(rng.integers(4, 14))
    pattern = ["hbands", "vbands", "checker", "plain"][rng.integers(4)]
    if pattern == "hbands":
        for y in range(roof_h, fh, 2 * period):
            draw.rectangle((0, y, fw - 1, y + period - 1), fill=stripe)
    elif pattern == "vbands":
        for x in range(0, fw, 2 * period):
            draw.rectangle((x, roof_h, x + period - 1, fh - 1), fill=stripe)
    elif pattern == "checker":
        for row, y in enumerate(range(roof_h, fh, period)):
            for x in range((row % 2) * period, fw, 2 * period):
                draw.rectangle((x, y, x + period - 1, y + period - 1), fill=stripe)

    # window grid with cornices between storeys and optional pilasters
    n_cols, n_rows = int(rng.integers(2, 10)), int(rng.integers(1, 7))
    shape = ["rect", "arch", "gothic", "round"][rng.integers(4)]
    cell_w, cell_h = fw / n_cols, (fh - roof_h) / n_rows
    fill_w, fill_h = rng.uniform(0.35, 0.7), rng.uniform(0.4, 0.75)
    cornice = rng.random() < 0.6
    pilasters = rng.random() < 0.5
    for c in range(n_cols):
        if pilasters:
            draw.rectangle((c * cell_w, roof_h, c * cell_w + cell_w * 0.12, fh - 1), fill=trim)
        for r in range(n_rows):
            cx, cy = (c + 0.5) * cell_w, roof_h + (r + 0.5) * cell_h
            box = (cx - fill_w * cell_w / 2, cy - fill_h * cell_h / 2, cx + fill_w * cell_w / 2, cy + fill_h * cell_h / 2)
            _draw_window(draw, box, shape, glass, trim)
    if cornice:
        thickness = max(1, round(cell_h * 0.08))
        for r in range(n_rows + 1):
            y = roof_h + r * cell_h
            draw.rectangle((0, y - thickness, fw - 1, y + thickness), fill=trim)

    # one central ornament: a rose window, a clock or a great door
    ornament = ["none", "rose", "clock", "door"][rng.integers(4)]
    cx = fw / 2
    if ornament in ("rose", "clock"):
        r = min(fw, fh - roof_h) * rng.uniform(0.12, 0.22)
        cy = roof_h + (fh - roof_h) * 0.3
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent if ornament == "rose" else trim, outline=glass)
        spokes = int(rng.integers(6, 13)) if ornament == "rose" else 12
        for k in range(spokes):
            a = 2 * math.pi * k / spokes
            draw.line((cx, cy, cx + r * math.cos(a), cy + r * math.sin(a)), fill=glass, width=1)
    elif ornament == "door":
        dw, dh = fw * rng.uniform(0.15, 0.3), (fh - roof_h) * rng.uniform(0.3, 0.5)
        _draw_window(draw, (cx - dw / 2, fh - dh, cx + dw / 2, fh - 1), "arch", accent, trim)

    # the roof line gives the silhouette
    if roof_type == "gable":
        draw.polygon([(0, roof_h), (fw / 2, 0), (fw - 1, roof_h)], fill=roof_colour)
    elif roof_type == "dome":
        dw = fw * rng.uniform(0.35, 0.8)
        draw.pieslice((cx - dw / 2, 0, cx + dw / 2, 2 * roof_h), 180, 360, fill=roof_colour)
    elif roof_type == "towers":
        tw = fw * rng.uniform(0.12, 0.25)
        for x0 in (0, fw - tw):
            draw.rectangle((x0, 0, x0 + tw, roof_h), fill=wall)
            draw.polygon([(x0, roof_h * 0.3), (x0 + tw / 2, 0), (x0 + tw, roof_h * 0.3)], fill=roof_colour)
    elif roof_type == "crenel":
        merlon = max(2, round(fw / rng.integers(6, 14)))
        for x in range(0, fw, 2 * merlon):
            draw.rectangle((x, roof_h // 2, x + merlon - 1, roof_h), fill=wall)
        draw.rectangle((0, roof_h * 0.85, fw - 1, roof_h), fill=trim)
    elif roof_type == "spire":
        sw = fw * rng.uniform(0.1, 0.2)
        draw.polygon([(cx - sw / 2, roof_h), (cx, 0), (cx + sw / 2, roof_h)], fill=roof_colour)

    # weathering: a fixed per-landmark stain pattern, part of the landmark's appearance in every photo
    pixels = np.asarray(img, dtype=np.float32)
    coarse = rng.normal(0.0, 1.0, size=(max(2, fh // 16), max(2, fw // 16)))
    stain = np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize((fw, fh), Image.Resampling.BILINEAR))
    pixels[..., :3] *= (1.0 + 0.12 * stain)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGBA")


# ---------------------------------------------------------------------------------------------------------------
# photos: scene, warped landmark, occluders, lighting


def _draw_generic_building(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box) -> None:
    """A plain block with a regular window grid: street clutter, the same kind of thing in every photo."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.85)))
    glass = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.1, 0.45))
    step = rng.uniform(4, 9)
    for wx in np.arange(x0 + step / 2, x1 - step / 2, step):
        for wy in np.arange(y0 + step / 2, y1 - step / 2, step):
            draw.rectangle((wx, wy, wx + step / 2, wy + step / 2), fill=glass)


def _draw_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, ground: float, height: float) -> None:
    trunk = max(1.0, height * 0.08)
    draw.rectangle((x - trunk / 2, ground - height * 0.45, x + trunk / 2, ground), fill=_rgb(0.08, 0.5, 0.3))
    for _ in range(int(rng.integers(2, 5))):
        r = height * rng.uniform(0.2, 0.35)
        cx, cy = x + rng.uniform(-0.2, 0.2) * height, ground - height * rng.uniform(0.55, 0.8)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r),
                     fill=_rgb(rng.uniform(0.22, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.6)))


def _paint_scene(rng: np.random.Generator, width: int, height: int, n_buildings: int) -> np.ndarray:
    """Street background [H, W, 3] float in 0..255: sky gradient, far buildings, trees, ground."""
    horizon = height * rng.uniform(0.55, 0.85)
    top = np.array(_rgb(rng.uniform(0.5, 0.65), rng.uniform(0.05, 0.6), rng.uniform(0.55, 1.0)), np.float32)
    low = np.array(_rgb(rng.uniform(0.0, 0.65), rng.uniform(0.0, 0.3), rng.uniform(0.6, 1.0)), np.float32)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = np.broadcast_to(top * (1 - t) + low * t, (height, width, 3))
    img = Image.fromarray(sky.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(n_buildings):
        bw, bh = width * rng.uniform(0.15, 0.45), height * rng.uniform(0.2, 0.6)
        bx = rng.uniform(-0.1, 0.9) * width
        _draw_generic_building(draw, rng, (bx, horizon - bh, bx + bw, horizon))
    draw.rectangle((0, horizon, width, height),
                   fill=_rgb(rng.uniform(0.0, 0.35), rng.uniform(0.0, 0.4), rng.uniform(0.25, 0.6)))
    for _ in range(int(rng.integers(0, 3))):
        _draw_tree(draw, rng, rng.uniform(0, width), horizon + rng.uniform(0, 0.1) * height,
                   height * rng.uniform(0.2, 0.5))
    return np.asarray(img, dtype=np.float32)


def _perspective_coefficients(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` [4, 2] onto input points ``src`` [4, 2]."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return tuple(float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float)))


def _view_quad(rng: np.random.Generator, facade_size, photo_size, preset: dict) -> np.ndarray:
    """Where the facade's corners (TL, TR, BR, BL) land in the photo, [4, 2]."""
    fw, fh = facade_size
    width, height = photo_size
    s = rng.uniform(*preset["scale"]) * min(width / fw, height / fh)
    yaw = rng.uniform(-preset["yaw"], preset["yaw"])
    pitch = rng.uniform(0.0, preset["pitch"])  # looking up at a building narrows its top
    w, h = fw * s * (1 - 0.4 * abs(yaw)), fh * s
    left_h, right_h = h * (1 - 0.6 * max(-yaw, 0.0)), h * (1 - 0.6 * max(yaw, 0.0))
    corners = np.array([[-w / 2 * (1 - pitch), -left_h / 2], [w / 2 * (1 - pitch), -right_h / 2],
                        [w / 2, right_h / 2], [-w / 2, left_h / 2]])
    corners += rng.normal(0.0, 0.02 * h, size=corners.shape)
    a = math.radians(rng.uniform(-preset["roll"], preset["roll"]))
    corners = corners @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    # centre: photographers frame the landmark, so it stays near the middle (`centre` = how far off it may go, as a
    # share of the room left), and is pushed past a border by up to `cut` of its size
    half = (corners.max(0) - corners.min(0)) / 2
    slack = np.maximum(np.array([width, height]) / 2 - half, 0.0) + preset["cut"] * 2 * half
    centre = np.array([width, height]) / 2 + rng.uniform(-1, 1, size=2) * preset["centre"] * slack
    return corners + centre


def _occluder_layer(rng: np.random.Generator, photo_size, target_box, ground: float) -> np.ndarray:
    """One foreground object over ``target_box`` (x0, y0, x1, y1) as RGBA [H, W, 4] float in 0..1."""
    width, height = photo_size
    x0, y0, x1, y1 = target_box
    bw, bh = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    layer = Image.new("RGBA", photo_size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    kind = ["tree", "people", "car", "pole", "building"][rng.integers(5)]
    x = rng.uniform(x0, x1)
    if kind == "tree":
        _draw_tree(draw, rng, x, min(height, y1 + 0.1 * bh), bh * rng.uniform(0.7, 1.4))
    elif kind == "people":
        for _ in range(int(rng.integers(2, 6))):
            px, ph = x + rng.uniform(-0.3, 0.3) * bw, bh * rng.uniform(0.25, 0.45)
            colour = _rgb(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.9))
            draw.rectangle((px - ph * 0.15, y1 - ph * 0.8, px + ph * 0.15, y1), fill=colour)
            draw.ellipse((px - ph * 0.1, y1 - ph, px + ph * 0.1, y1 - ph * 0.8), fill=_rgb(0.07, 0.4, 0.7))
    elif kind == "car":
        cw, ch = bw * rng.uniform(0.3, 0.6), bh * rng.uniform(0.15, 0.3)
        bottom = min(height, max(ground, y1))
        draw.rounded_rectangle((x - cw / 2, bottom - ch, x + cw / 2, bottom), radius=ch * 0.3,
                               fill=_rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.95)))
    elif kind == "pole":
        pw = max(1.0, bw * rng.uniform(0.03, 0.08))
        draw.rectangle((x - pw / 2, 0, x + pw / 2, height), fill=_rgb(0.0, 0.0, rng.uniform(0.1, 0.4)))
    else:  # a nearer building hiding one side of the landmark
        cover = bw * rng.uniform(0.25, 0.7)
        box = (x0 - width, y0 - bh, x0 + cover, height) if rng.random() < 0.5 else (x1 - cover, y0 - bh,
                                                                                      x1 + width, height)
        _draw_generic_building(draw, rng, box)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _relight(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour cast, exposure, gamma and a shadow gradient of random ``strength`` (0 = none); 0..255 float."""
    height, width, _ = pixels.shape
    x = pixels / 255.0
    gain = np.exp(rng.normal(0.0, 0.08 * strength, size=3)) * np.exp(rng.normal(0.0, 0.25 * strength))
    if rng.random() < 0.3 * strength:  # dusk: dark and warm or blue
        gain *= np.array([1.0, 0.8, 0.6] if rng.random() < 0.5 else [0.6, 0.7, 1.0]) * rng.uniform(0.4, 0.7)
    gamma = float(np.exp(rng.normal(0.0, 0.2 * strength)))
    a = rng.uniform(0, 2 * math.pi)
    xs, ys = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    shadow = 1.0 - 0.25 * strength * rng.random() * (1 + np.cos(a) * xs + np.sin(a) * ys) / 2
    x = np.clip(x * gain, 0.0, 1.0) ** gamma * shadow[..., None]
    x = x + rng.normal(0.0, 0.01 + 0.01 * strength, size=x.shape)
    return np.clip(x * 255.0, 0.0, 255.0)


def _paint_photo(
    rng: np.random.Generator, facade: Image.Image | None, image_size: int, preset: dict | None
) -> tuple[np.ndarray, dict]:
    """A photo (uint8 [H, W, 3]) of ``facade`` seen as ``preset`` says, or of the street only (``facade`` None).

    Returns the pixels and what is visible of the landmark: ``visible`` (fraction of its unoccluded, uncut area),
    ``area`` (fraction of the photo), ``bbx`` (its box in the photo, floats) and the relighting ``light``.
    """
    width, height = _photo_size(rng, image_size)
    pixels = _paint_scene(rng, width, height, int(rng.integers(0, 4)))
    info = {"visible": 0.0, "area": 0.0, "bbx": None, "light": 0.0}
    light = rng.uniform(0.0, 0.3)
    if facade is not None:
        quad = _view_quad(rng, facade.size, (width, height), preset)
        fw, fh = facade.size
        coeffs = _perspective_coefficients(quad, np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], float))
        warped = facade.transform((width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        layer = np.asarray(warped, dtype=np.float32)
        alpha = layer[..., 3:] / 255.0
        pixels = pixels * (1 - alpha) + layer[..., :3] * alpha
        # unoccluded, uncut area: the quad's area times the share of the facade rectangle that is building
        qx, qy = quad[:, 0], quad[:, 1]
        full_area = 0.5 * abs(np.dot(qx, np.roll(qy, 1)) - np.dot(qy, np.roll(qx, 1)))
        full_area *= np.asarray(facade, dtype=np.float32)[..., 3].mean() / 255.0
        visible = alpha[..., 0].copy()
        ys, xs = np.nonzero(visible > 0.5)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, width, height)
        # occluders in front of the landmark until the wanted share of it is hidden
        target = rng.uniform(*preset["occlusion"])
        for _ in range(8):
            if visible.sum() <= (1 - target) * full_area or target < 0.03:
                break
            occ = _occluder_layer(rng, (width, height), box, height * 0.8)
            occ_alpha = occ[..., 3:]
            pixels = pixels * (1 - occ_alpha) + occ[..., :3] * 255.0 * occ_alpha
            visible *= 1 - occ_alpha[..., 0]
        light = rng.uniform(0.5, 1.0) * preset["light"]
        info = {
            "visible": float(min(1.0, visible.sum() / max(full_area, 1.0))),
            "area": float(visible.sum() / (width * height)),
            "bbx": [float(v) for v in box],
            "light": float(light),
        }
    else:
        for _ in range(int(rng.integers(0, 3))):
            box = (rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.5), width, height)
            occ = _occluder_layer(rng, (width, height), box, height * 0.8)
            pixels = pixels * (1 - occ[..., 3:]) + occ[..., :3] * 255.0 * occ[..., 3:]
    pixels = _relight(pixels, rng, light)
    return pixels.round().astype(np.uint8), info


def _label(intended: str, info: dict) -> str:
    """revisitop label of a database photo from what is visible of the landmark in it."""
    if info["visible"] < _JUNK_MAX_VISIBLE or info["area"] < _JUNK_MAX_AREA:
        return "junk"
    if intended == "easy" and info["visible"] >= _EASY_MIN_VISIBLE and info["area"] >= _EASY_MIN_AREA:
        return "easy"
    return "hard"


def _intended_difficulties(rng: np.random.Generator, n: int, mix: Sequence[tuple[str, float]]) -> list[str]:
    """``n`` difficulties in the proportions of ``mix`` (rounded, at least one easy view), in random order."""
    counts = [round(n * share) for _, share in mix]
    counts[0] = max(1, n - sum(counts[1:]))
    names = [name for (name, _), c in zip(mix, counts, strict=True) for _ in range(c)][:n]
    return [names[i] for i in rng.permutation(len(names))]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


# ---------------------------------------------------------------------------------------------------------------
# the three data sets


def generate_test_set(
    out_dir: str | Path,
    name: str,
    *,
    seed: int,
    n_landmarks: int,
    db_views_per_landmark: int,
    queries_per_landmark: int,
    n_background: int,
    image_size: int,
) -> dict:
    """A revisitop-style test set: ``out_dir/jpg/<image>.jpg`` and ``out_dir/gnd_<name>.pkl``.

    The database holds ``db_views_per_landmark`` photos of each of ``n_landmarks`` landmarks plus ``n_background``
    street scenes without any of them, in shuffled order; the queries are ``queries_per_landmark`` further photos
    of each landmark (not in the database) whose ``bbx`` encloses the landmark.  Image names look like
    revisitop's (``landmark_03_004217``, ``street_112358``).  ``image_size`` is the photos' longest side.

    Returns the ground truth written: {"imlist", "qimlist", "gnd"}.
    """
    out_dir = Path(out_dir)
    jpg = out_dir / "jpg"
    # the set's name is part of every random key, so two sets never share landmarks even under one seed
    key = (seed, _STREAM_TEST, zlib.crc32(name.encode()))
    layout = _rng(*key, _SUB_LAYOUT)
    n_db = n_landmarks * db_views_per_landmark + n_background
    n_query = n_landmarks * queries_per_landmark
    serials = _unique_serials(layout, n_db + n_query)
    order = layout.permutation(n_db)  # database position of the k-th generated photo

    imlist: list[str] = [""] * n_db
    qimlist: list[str] = []
    labels: list[dict[str, list[int]]] = [{"easy": [], "hard": [], "junk": []} for _ in range(n_landmarks)]
    query_boxes: list[list[float]] = []
    k = 0
    for lm in range(n_landmarks):
        facade = _draw_facade(_rng(*key, _SUB_LANDMARK, lm))
        difficulties = _intended_difficulties(_rng(*key, _SUB_LAYOUT, lm), db_views_per_landmark,
                                              _TEST_VIEW_MIX)
        for v, intended in enumerate(difficulties):
            pixels, info = _paint_photo(_rng(*key, _SUB_VIEW, lm, v), facade, image_size,
                                        _VIEW_PRESETS[intended])
            image_name = f"landmark_{lm:02d}_{serials[k]:06d}"
            _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
            imlist[order[k]] = image_name
            labels[lm][_label(intended, info)].append(int(order[k]))
            k += 1
        for q in range(queries_per_landmark):
            pixels, info = _paint_photo(_rng(*key, _SUB_QUERY, lm, q), facade, image_size,
                                        _VIEW_PRESETS["query"])
            image_name = f"landmark_{lm:02d}_{serials[n_db + len(qimlist)]:06d}"
            _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
            qimlist.append(image_name)
            query_boxes.append(info["bbx"])
    for b in range(n_background):
        pixels, _ = _paint_photo(_rng(*key, _SUB_BACKGROUND, b), None, image_size, None)
        image_name = f"street_{serials[k]:06d}"
        _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
        imlist[order[k]] = image_name
        k += 1

    gnd = []
    for i, bbx in enumerate(query_boxes):
        lm_labels = labels[i // queries_per_landmark]
        gnd.append({"bbx": bbx, **{label: sorted(lm_labels[label]) for label in ("easy", "hard", "junk")}})
    ground_truth = {"gnd": gnd, "imlist": imlist, "qimlist": qimlist}
    safe_pickle.dump(ground_truth, out_dir / f"gnd_{name}.pkl")
    return ground_truth


def generate_distractors(out_dir: str | Path, *, seed: int, n_images: int, image_size: int) -> list[str]:
    """An R1M-style distractor set: ``out_dir/jpg/<sub>/<name>.jpg`` and ``out_dir/revisitop1m.txt``.

    Street scenes without any test landmark: half show buildings that are not landmarks of the test sets (a pool
    of ``n_images // 4`` other facades, each in a few photos, as R1M holds many buildings), half only clutter.
    The list file has one path per line, relative to ``out_dir/jpg`` and with the extension, as revisitop's.

    Returns the listed paths.
    """
    out_dir = Path(out_dir)
    layout = _rng(seed, _STREAM_DISTRACTORS, _SUB_LAYOUT)
    names = _hex_ids(layout, n_images, 16)
    n_other = max(1, n_images // 4)
    other_of_image = layout.integers(n_other, size=n_images)
    shows_building = layout.random(n_images) < 0.5
    facades: dict[int, Image.Image] = {}
    paths = []
    for i, image_name in enumerate(names):
        facade, preset = None, None
        if shows_building[i]:
            other = int(other_of_image[i])
            if other not in facades:
                facades[other] = _draw_facade(_rng(seed, _STREAM_DISTRACTORS, _SUB_LANDMARK, other))
            facade, preset = facades[other], _VIEW_PRESETS["easy" if layout.random() < 0.5 else "hard"]
        pixels, _ = _paint_photo(_rng(seed, _STREAM_DISTRACTORS, _SUB_VIEW, i), facade, image_size, preset)
        # a few sub-folders, named like R1M's by the first characters of the image id
        relative = f"{image_name[0]}/{image_name}.jpg"
        _atomic_save_jpeg(pixels, out_dir / "jpg" / relative)
        paths.append(relative)
    _atomic_write_text("".join(f"{p}\n" for p in paths), out_dir / "revisitop1m.txt")
    return paths


def image_path_for_cid(ims_dir: str | Path, cid: str) -> Path:
    """Where cirtorch keeps the rSfM120k image ``cid``: ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``."""
    if len(cid) < 6:
        raise ValueError(f"image id {cid!r} is shorter than the 6 characters cirtorch's layout needs")
    return Path(ims_dir) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def generate_training_set(
    out_dir: str | Path,
    *,
    seed: int,
    n_clusters: int,
    n_val_clusters: int,
    images_per_cluster: int,
    image_size: int,
) -> dict:
    """A retrieval-SfM-120k-style training set: ``out_dir/ims/...`` and ``out_dir/retrieval-SfM-120k.pkl``.

    Each cluster is one landmark (drawn from a stream no test set uses) photographed ``images_per_cluster`` times
    at mixed difficulty.  The first ``n_clusters`` clusters form the ``train`` split, the next ``n_val_clusters``
    the ``val`` split (a split by cluster, as cirtorch's).  Per split: ``cids`` (32-character hex image ids; images
    stored as JPEG without extension, see :func:`image_path_for_cid`), ``cluster`` (cluster number per image),
    ``qidxs``/``pidxs`` (query/positive pairs of images of one cluster, indices into the split's ``cids``; every
    image is a query once, its positive another image of its cluster).

    Returns the database dict written.
    """
    if images_per_cluster < 2:
        raise ValueError(f"images_per_cluster={images_per_cluster}: query/positive pairs need at least 2")
    out_dir = Path(out_dir)
    layout = _rng(seed, _STREAM_TRAIN, _SUB_LAYOUT)
    cids = _hex_ids(layout, (n_clusters + n_val_clusters) * images_per_cluster, 32)
    splits = {}
    for split, clusters in (("train", range(n_clusters)), ("val", range(n_clusters, n_clusters + n_val_clusters))):
        split_cids, cluster_of, qidxs, pidxs = [], [], [], []
        for c in clusters:
            facade = _draw_facade(_rng(seed, _STREAM_TRAIN, _SUB_LANDMARK, c))
            difficulties = _intended_difficulties(_rng(seed, _STREAM_TRAIN, _SUB_LAYOUT, c), images_per_cluster,
                                                  _TRAIN_VIEW_MIX)
            first = len(split_cids)
            for v, intended in enumerate(difficulties):
                pixels, _ = _paint_photo(_rng(seed, _STREAM_TRAIN, _SUB_VIEW, c, v), facade, image_size,
                                         _VIEW_PRESETS[intended])
                cid = cids[c * images_per_cluster + v]
                _atomic_save_jpeg(pixels, image_path_for_cid(out_dir / "ims", cid))
                split_cids.append(cid)
                cluster_of.append(c)
            # each image is a query once; its positive is another image of the cluster (a random derangement)
            members = first + layout.permutation(images_per_cluster)
            qidxs.extend(int(m) for m in members)
            pidxs.extend(int(m) for m in np.roll(members, 1))
        splits[split] = {"cids": split_cids, "cluster": cluster_of, "qidxs": qidxs, "pidxs": pidxs}
    safe_pickle.dump(splits, out_dir / "retrieval-SfM-120k.pkl")
    return splits
