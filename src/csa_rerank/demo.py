"""A built-in, deterministic demo benchmark in exactly the on-disk formats of the real data sets.

So that the whole pipeline runs offline on a laptop, this module paints small stand-ins for

- Revisited Oxford / Paris (:func:`generate_test_set`): ``jpg/<name>.jpg`` and ``gnd_<name>.pkl`` with
  ``imlist``, ``qimlist`` and one ``gnd`` dict per query (``bbx``, ``easy``, ``hard``, ``junk``), as
  revisitop's;
- the R1M distractors (:func:`generate_distractors`): ``jpg/<sub>/<name>.jpg`` and ``revisitop1m.txt``;
- retrieval-SfM-120k (:func:`generate_training_set`): ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>`` (JPEG
  without extension) and ``retrieval-SfM-120k.pkl`` with cirtorch's ``train``/``val`` splits.

A landmark is a procedurally drawn building facade with its own outline, palette, stone courses, window grid,
window shape and ornament, standing in its own street (a "site": sky, ground, neighbouring buildings, trees,
some of them in front of it).  Its photos are perspective views of the site from a few popular viewpoints per
difficulty, each photo a small variation of one of them (tourists' photos cluster so), with passers-by
(people, cars, poles, trees, a nearer building) hiding part of the landmark, and relighting (colour cast,
exposure, gamma, shadow, sensor noise).

The revisitop labels follow from what is actually visible in each painted photo, so they mean what they mean
there: easy = the landmark large, almost unhidden, mildly changed; hard = smaller, off-centre, turned, partly
hidden or relit, but with a good part of it visible; junk = barely visible (tiny, mostly hidden or cut off by
the frame), neither counted nor penalised.  Negatives are the other landmarks and streets without a landmark.

The sizes were tuned for the demo's descriptors, randomly initialised ResNets with GeM.  Their output depends
far more on the input's size than on its content, and on where things are in the frame; hence every photo has
one size, a query's ``bbx`` spans nearly its whole photo (:func:`_query_box`) and landmarks are framed
consistently.

Determinism: every facade, site and photo draws from its own ``numpy.random.Generator`` seeded with ``[seed,
stream, index...]``, so equal arguments give byte-identical files (PIL's JPEG encoder is deterministic) and
different data sets, seeds or streams give unrelated landmarks.  Each file is written under a temporary name
and renamed, and the ground-truth / list file is written last, so a killed run never leaves a half-written
file.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import safe_pickle
from .atomic import atomic_path, write_text
from .datasets import cid_path

# Independent random streams, so the test sets, the distractors and the training set never share a landmark.
_STREAM_TEST, _STREAM_DISTRACTORS, _STREAM_TRAIN = 1, 2, 3
# Sub-streams inside one data set.
_SUB_LANDMARK, _SUB_VIEW, _SUB_QUERY, _SUB_BACKGROUND, _SUB_LAYOUT, _SUB_SITE = 0, 1, 2, 3, 4, 5

FACADE_LONG_SIDE = 120  # facades are painted once at this width (in site pixels) and warped into each photo
FACADE_ASPECT = (1.0, 1.8)  # width / height: landscape, like the photos, so that close views fill the frame
SITE_SIZE = (768, 512)  # the street painted around a landmark, wide enough for zoomed-out views
SCENE_VARIETY = 0.6  # 0 = the same plain street everywhere, 1 = skies, grounds and clutter of all kinds
# Photos of a landmark come from a few popular viewpoints per difficulty (junk ones from anywhere), each photo
# a small variation of one of them: a log-normal spread of the scale, normal spreads of the rest (see _POSES).
VIEWPOINTS_PER_SITE = {"easy": 2, "hard": 4}
HARD_VIEWPOINT_REACH = (0.35, 1.0)  # how far a hard viewpoint lies from an easy one towards a far pose
VIEWPOINT_JITTER = {"scale": 0.06, "offset": 0.15, "yaw": 0.05, "pitch": 0.02, "roll": 1.5}
OCCLUSION_OVERSHOOT = 0.1  # a passer-by may hide at most this share of the landmark beyond the photo's target
PHOTOS_PER_EMPTY_SITE = 2  # photos of each place without a test landmark (test backgrounds, distractors)
DISTRACTOR_SITE_KINDS = (0.3, 0.35, 0.35)  # shares of distractor places: other buildings, streets, parks
QUERY_BOX_MIN_SHARE = 0.97  # a query's bbx spans at least this share of its photo's width and height
JPEG_QUALITY = 90

# Camera poses by difficulty: the landmark's size relative to the largest that fits the photo, how far off the
# centre it may be (as a share of the room left), and perspective (yaw shortens one side, pitch narrows the
# top, roll in degrees).
_POSES = {
    "easy": dict(scale=(0.85, 1.0), centre=0.1, yaw=0.15, pitch=0.1, roll=4.0),
    "hard": dict(scale=(0.55, 0.85), centre=0.4, yaw=0.5, pitch=0.25, roll=10.0),
    "junk": dict(scale=(0.15, 0.35), centre=1.0, yaw=0.7, pitch=0.3, roll=15.0),
}
# Conditions of a photo by kind: its pose, the share of the landmark that passers-by hide, the relighting
# strength and how far the landmark may stick out of the frame (as a share of its size).  Queries are taken
# from the easy viewpoints.
_CONDITIONS = {
    "query": dict(pose="easy", occlusion=(0.0, 0.05), light=0.15, cut=0.0),
    "easy": dict(pose="easy", occlusion=(0.0, 0.1), light=0.3, cut=0.1),
    "hard": dict(pose="hard", occlusion=(0.15, 0.4), light=0.8, cut=0.1),
    "junk": dict(pose="junk", occlusion=(0.55, 0.85), light=0.8, cut=0.5),
}
# Shares of intended easy / hard / junk photos: among a test landmark's database photos, a training cluster's.
_TEST_VIEW_MIX = (("easy", 0.5), ("hard", 0.35), ("junk", 0.15))
_TRAIN_VIEW_MIX = (("easy", 0.7), ("hard", 0.25), ("junk", 0.05))
# Label thresholds on the painted photo: "visible" = visible landmark pixels / pixels it would cover unhidden
# and uncut; "area" = visible landmark pixels / photo pixels.
_JUNK_MAX_VISIBLE, _JUNK_MAX_AREA = 0.4, 0.04
_EASY_MIN_VISIBLE, _EASY_MIN_AREA = 0.8, 0.15


# ------------------------------------------------------------------------------------------------------------
# small helpers


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV (hue wraps, saturation and value clipped to 0..1) -> 8-bit RGB."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(255 * r), round(255 * g), round(255 * b)


def _photo_size(image_size: int) -> tuple[int, int]:
    """(width, height) of every photo: 4:3 landscape with longest side ``image_size``.

    One size for all: descriptors of randomly initialised CNNs depend far more on the input's size (through
    the zero padding of every layer) than on its content, so photos of mixed sizes would be ranked by their
    size.
    """
    return image_size, max(1, round(image_size * 3 / 4))


def _query_box(landmark_box, photo_size, min_share: float = QUERY_BOX_MIN_SHARE) -> list[float]:
    """revisitop ``bbx`` [x1, y1, x2, y2] of a query: the landmark's box, grown about its centre (inside the
    photo) to at least ``min_share`` of the photo's width and height.

    The box still encloses the landmark with a little surrounding, as revisitop's do; the margin keeps the
    cropped query within a few pixels of the database photos' size, for the reason given in
    :func:`_photo_size`.
    """
    sides = []
    for lo, hi, full in (
        (landmark_box[0], landmark_box[2], photo_size[0]),
        (landmark_box[1], landmark_box[3], photo_size[1]),
    ):
        half = max(hi - lo, min_share * full) / 2
        centre = min(max((lo + hi) / 2, half), full - half)
        sides.append((max(0.0, centre - half), min(float(full), centre + half)))
    (x1, x2), (y1, y2) = sides
    return [round(float(v), 1) for v in (x1, y1, x2, y2)]


def _atomic_save_jpeg(pixels: np.ndarray, path: Path) -> None:
    """Write uint8 RGB ``pixels`` as a JPEG at ``path`` (any extension or none) via a temporary name."""
    with atomic_path(path) as temporary:
        Image.fromarray(pixels, "RGB").save(temporary, format="JPEG", quality=JPEG_QUALITY)


def _unique_serials(rng: np.random.Generator, n: int) -> list[int]:
    """``n`` distinct six-digit numbers, for file names like revisitop's ``all_souls_000013``."""
    return [int(s) for s in rng.choice(1_000_000, size=n, replace=False)]


def _hex_ids(rng: np.random.Generator, n: int, n_chars: int) -> list[str]:
    """``n`` distinct lowercase hex strings of ``n_chars`` characters (image ids like rSfM120k's)."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        candidate = rng.bytes((n_chars + 1) // 2).hex()[:n_chars]
        if candidate not in seen:
            seen.add(candidate)
            ids.append(candidate)
    return ids


# ------------------------------------------------------------------------------------------------------------
# landmarks: one painted facade each


def _draw_window(draw: ImageDraw.ImageDraw, box, shape: str, fill, frame) -> None:
    x0, y0, x1, y1 = box
    head = min((x1 - x0) / 2, (y1 - y0) / 2)  # height of an arched or pointed top, at most half the window
    if shape == "rect":
        draw.rectangle(box, fill=fill, outline=frame)
    elif shape == "arch":
        draw.rectangle((x0, y0 + head, x1, y1), fill=fill, outline=frame)
        draw.pieslice((x0, y0, x1, y0 + 2 * head), 180, 360, fill=fill, outline=frame)
    elif shape == "gothic":
        draw.rectangle((x0, y0 + head, x1, y1), fill=fill, outline=frame)
        draw.polygon([(x0, y0 + head), ((x0 + x1) / 2, y0), (x1, y0 + head)], fill=fill, outline=frame)
    else:  # round (oculus)
        r = min(x1 - x0, y1 - y0) / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=frame)


def _draw_facade(rng: np.random.Generator) -> Image.Image:
    """A landmark: an RGBA facade (transparent around its outline), with its own shape, palette, ornament."""
    aspect = float(np.exp(rng.uniform(np.log(FACADE_ASPECT[0]), np.log(FACADE_ASPECT[1]))))
    fw, fh = FACADE_LONG_SIDE, round(FACADE_LONG_SIDE / aspect)
    hue = rng.random()
    wall = _rgb(hue, rng.uniform(0.3, 0.85), rng.uniform(0.45, 0.95))
    stripe_hue = hue + rng.choice([-1, 1]) * rng.uniform(0.1, 0.5)
    stripe = _rgb(stripe_hue, rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))
    trim = _rgb(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.3, 1.0))
    glass = _rgb(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.05, 0.4))
    roof_colour = _rgb(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.15, 0.7))
    accent = _rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))

    img = Image.new("RGBA", (fw, fh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    roof_type = ["flat", "gable", "dome", "towers", "crenel", "spire"][rng.integers(6)]
    roof_h = 0 if roof_type == "flat" else round(fh * rng.uniform(0.18, 0.35))
    draw.rectangle((0, roof_h, fw - 1, fh - 1), fill=wall)
    # the painting steps draw from ``rng`` in this order, which fixes every demo image
    _paint_courses(draw, rng, fw, fh, roof_h, stripe)
    _paint_windows(draw, rng, fw, fh, roof_h, glass, trim)
    _paint_ornament(draw, rng, fw, fh, roof_h, accent, glass, trim)
    _paint_roof(draw, rng, roof_type, fw, roof_h, wall, roof_colour, trim)
    return _weathered(img, rng)


def _paint_courses(draw: ImageDraw.ImageDraw, rng: np.random.Generator, fw, fh, roof_h, stripe) -> None:
    """Stone courses: horizontal bands, vertical bands or a checker, with the landmark's own period."""
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


def _paint_windows(draw: ImageDraw.ImageDraw, rng: np.random.Generator, fw, fh, roof_h, glass, trim) -> None:
    """Window grid, with pilasters between the columns and cornices between the storeys on some facades."""
    n_cols, n_rows = int(rng.integers(2, 10)), int(rng.integers(1, 7))
    shape = ["rect", "arch", "gothic", "round"][rng.integers(4)]
    cell_w, cell_h = fw / n_cols, (fh - roof_h) / n_rows
    half_w, half_h = rng.uniform(0.35, 0.7) * cell_w / 2, rng.uniform(0.4, 0.75) * cell_h / 2
    cornices = rng.random() < 0.6
    pilasters = rng.random() < 0.5
    for c in range(n_cols):
        if pilasters:
            draw.rectangle((c * cell_w, roof_h, c * cell_w + cell_w * 0.12, fh - 1), fill=trim)
        for r in range(n_rows):
            cx, cy = (c + 0.5) * cell_w, roof_h + (r + 0.5) * cell_h
            _draw_window(draw, (cx - half_w, cy - half_h, cx + half_w, cy + half_h), shape, glass, trim)
    if cornices:
        thickness = max(1, round(cell_h * 0.08))
        for r in range(n_rows + 1):
            y = roof_h + r * cell_h
            draw.rectangle((0, y - thickness, fw - 1, y + thickness), fill=trim)


def _paint_ornament(draw: ImageDraw.ImageDraw, rng: np.random.Generator, fw, fh, roof_h, accent, glass, trim) -> None:
    """At most one central ornament: a rose window, a clock or a great door."""
    ornament = ["none", "rose", "clock", "door"][rng.integers(4)]
    cx = fw / 2
    if ornament in ("rose", "clock"):
        r = min(fw, fh - roof_h) * rng.uniform(0.12, 0.22)
        cy = roof_h + (fh - roof_h) * 0.3
        disc = accent if ornament == "rose" else trim
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=disc, outline=glass)
        spokes = int(rng.integers(6, 13)) if ornament == "rose" else 12
        for k in range(spokes):
            a = 2 * math.pi * k / spokes
            draw.line((cx, cy, cx + r * math.cos(a), cy + r * math.sin(a)), fill=glass, width=1)
    elif ornament == "door":
        dw, dh = fw * rng.uniform(0.15, 0.3), (fh - roof_h) * rng.uniform(0.3, 0.5)
        _draw_window(draw, (cx - dw / 2, fh - dh, cx + dw / 2, fh - 1), "arch", accent, trim)


def _paint_roof(draw: ImageDraw.ImageDraw, rng: np.random.Generator, roof_type, fw, roof_h, wall, colour, trim) -> None:
    """The roof, which gives the outline."""
    cx = fw / 2
    if roof_type == "gable":
        draw.polygon([(0, roof_h), (fw / 2, 0), (fw - 1, roof_h)], fill=colour)
    elif roof_type == "dome":
        dw = fw * rng.uniform(0.35, 0.8)
        draw.pieslice((cx - dw / 2, 0, cx + dw / 2, 2 * roof_h), 180, 360, fill=colour)
    elif roof_type == "towers":
        tw = fw * rng.uniform(0.12, 0.25)
        for x0 in (0, fw - tw):
            draw.rectangle((x0, 0, x0 + tw, roof_h), fill=wall)
            draw.polygon([(x0, roof_h * 0.3), (x0 + tw / 2, 0), (x0 + tw, roof_h * 0.3)], fill=colour)
    elif roof_type == "crenel":
        merlon = max(2, round(fw / rng.integers(6, 14)))
        for x in range(0, fw, 2 * merlon):
            draw.rectangle((x, roof_h // 2, x + merlon - 1, roof_h), fill=wall)
        draw.rectangle((0, roof_h * 0.85, fw - 1, roof_h), fill=trim)
    elif roof_type == "spire":
        sw = fw * rng.uniform(0.1, 0.2)
        draw.polygon([(cx - sw / 2, roof_h), (cx, 0), (cx + sw / 2, roof_h)], fill=colour)


def _weathered(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Weathering: a fixed stain pattern, part of the landmark's look in every photo."""
    fw, fh = img.size
    pixels = np.asarray(img, dtype=np.float32)
    coarse = rng.normal(0.0, 1.0, size=(max(2, fh // 16), max(2, fw // 16))).astype(np.float32)
    stain = np.asarray(Image.fromarray(coarse, "F").resize((fw, fh), Image.Resampling.BILINEAR))
    pixels[..., :3] *= (1.0 + 0.12 * stain)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGBA")


# ------------------------------------------------------------------------------------------------------------
# sites: the street around a landmark, painted once and photographed many times


def _draw_generic_building(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box) -> None:
    """A plain block with a regular window grid: street clutter, the same kind of thing everywhere."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=_rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.35, 0.85)))
    glass = _rgb(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.1, 0.45))
    step = rng.uniform(4, 9)
    for wx in np.arange(x0 + step / 2, x1 - step / 2, step):
        for wy in np.arange(y0 + step / 2, y1 - step / 2, step):
            draw.rectangle((wx, wy, wx + step / 2, wy + step / 2), fill=glass)


def _draw_tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, ground: float, height: float):
    trunk = max(1.0, height * 0.08)
    draw.rectangle((x - trunk / 2, ground - height * 0.45, x + trunk / 2, ground), fill=_rgb(0.08, 0.5, 0.3))
    for _ in range(int(rng.integers(2, 5))):
        r = height * rng.uniform(0.2, 0.35)
        cx, cy = x + rng.uniform(-0.2, 0.2) * height, ground - height * rng.uniform(0.55, 0.8)
        leaves = _rgb(rng.uniform(0.22, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.6))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=leaves)


@dataclass(frozen=True)
class _Site:
    """A place photographed many times: the street around a landmark (or around nothing), in site pixels.

    ``landmark`` / ``landmark_visible`` are masks (mode "L") of the landmark and of its part that the site's
    own trees leave visible; ``anchor`` is the landmark's rectangle (x, y, width, height), around which views
    are framed (a building-sized empty lot where there is no landmark); ``fill_share`` is the share of the
    anchor the landmark covers; ``sky`` fills whatever a wide view shows beyond the painted street;
    ``viewpoints`` are the popular camera poses by difficulty.
    """

    image: Image.Image
    landmark: Image.Image | None
    landmark_visible: Image.Image | None
    anchor: tuple[float, float, float, float]
    fill_share: float
    sky: tuple[int, int, int]
    viewpoints: dict[str, list[dict]]


def _sample_viewpoint(rng: np.random.Generator, pose: dict) -> dict:
    """A camera pose relative to the anchor, drawn from the ranges of one of :data:`_POSES`."""
    return {
        "scale": rng.uniform(*pose["scale"]),
        "offset": rng.uniform(-1, 1, size=2) * pose["centre"],
        "yaw": rng.uniform(-pose["yaw"], pose["yaw"]),
        "pitch": rng.uniform(0.0, pose["pitch"]),
        "roll": rng.uniform(-pose["roll"], pose["roll"]),
    }


def _jitter_viewpoint(rng: np.random.Generator, viewpoint: dict) -> dict:
    """The same popular viewpoint as one more tourist takes it: a slightly different zoom, aim and tilt."""
    spread = VIEWPOINT_JITTER
    return {
        "scale": viewpoint["scale"] * float(np.exp(rng.normal(0.0, spread["scale"]))),
        "offset": np.clip(viewpoint["offset"] + rng.normal(0.0, spread["offset"], size=2), -1, 1),
        "yaw": viewpoint["yaw"] + rng.normal(0.0, spread["yaw"]),
        "pitch": max(0.0, viewpoint["pitch"] + rng.normal(0.0, spread["pitch"])),
        "roll": viewpoint["roll"] + rng.normal(0.0, spread["roll"]),
    }


def _paint_site(rng: np.random.Generator, facade: Image.Image | None, park: bool = False) -> _Site:
    """A street around ``facade`` (or around an empty lot), or a ``park`` (no buildings, many trees)."""
    site_w, site_h = SITE_SIZE
    v = SCENE_VARIETY
    horizon = site_h * rng.uniform(0.6, 0.68)
    sky_top = _rgb(0.58 + 0.05 * v * rng.normal(), 0.25 + 0.25 * v * rng.normal(), 0.8 + 0.2 * v * rng.normal())
    sky_low = _rgb(0.58 + 0.1 * v * rng.normal(), 0.1 + 0.1 * v * rng.normal(), 0.88 + 0.1 * v * rng.normal())
    t = np.linspace(0.0, 1.0, site_h, dtype=np.float32)[:, None, None]
    sky = np.array(sky_top, np.float32) * (1 - t) + np.array(sky_low, np.float32) * t
    img = Image.fromarray(np.broadcast_to(sky, (site_h, site_w, 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(0 if park else int(rng.integers(round(6 * v), 2 + round(12 * v)))):
        bw, bh = site_w * rng.uniform(0.04, 0.12), FACADE_LONG_SIDE * rng.uniform(0.3, 1.0)
        bx = rng.uniform(-0.05, 1.0) * site_w
        _draw_generic_building(draw, rng, (bx, horizon - bh, bx + bw, horizon))
    ground = _rgb(
        (0.28 if park else 0.1) + 0.1 * v * rng.normal(), 0.15 + 0.15 * v * rng.normal(), 0.45 + 0.2 * v * rng.normal()
    )
    draw.rectangle((0, horizon, site_w, site_h), fill=ground)

    fw, fh = facade.size if facade is not None else (FACADE_LONG_SIDE, round(FACADE_LONG_SIDE * 0.75))
    anchor = ((site_w - fw) / 2, horizon + FACADE_LONG_SIDE * 0.05 - fh, fw, fh)
    n_trees = int(rng.integers(1, 2 + round(4 * v))) * (4 if park else 1)
    trees = [
        (rng.uniform(0.1, 0.9) * site_w, FACADE_LONG_SIDE * rng.uniform(0.4, 0.8), rng.random() < 0.3)
        for _ in range(n_trees)
    ]
    for x, height, in_front in trees:
        if not in_front:
            _draw_tree(draw, rng, x, horizon + 4, height)
    landmark = visible = None
    fill_share = 1.0
    if facade is not None:
        corner = (round(anchor[0]), round(anchor[1]))
        img.paste(facade, corner, facade)
        landmark = Image.new("L", SITE_SIZE, 0)
        landmark.paste(facade.getchannel("A"), corner)
        fill_share = float(np.asarray(facade.getchannel("A"), dtype=np.float32).mean() / 255.0)
    # trees in front of the landmark hide the same part of it in every photo of the site
    front = Image.new("RGBA", SITE_SIZE, (0, 0, 0, 0))
    for x, height, in_front in trees:
        if in_front:
            _draw_tree(ImageDraw.Draw(front), rng, x, horizon + 8, height)
    img.paste(front, (0, 0), front)
    if landmark is not None:
        unhidden = 1.0 - np.asarray(front.getchannel("A"), np.float32) / 255.0
        visible = Image.fromarray((np.asarray(landmark, np.float32) * unhidden).astype(np.uint8), "L")
    return _Site(img, landmark, visible, anchor, fill_share, sky_top, _site_viewpoints(rng))


def _site_viewpoints(rng: np.random.Generator) -> dict[str, list[dict]]:
    """A site's popular viewpoints: easy ones, and hard ones part of the way from an easy one to a far pose.

    Hard viewpoints spread between the easy ones and the extremes of the hard pose, so some hard photos look
    like the easy ones and others only like those: the chains of neighbours that contextual re-ranking follows
    in real collections, where a landmark is photographed from every angle in between.
    """
    easy = [_sample_viewpoint(rng, _POSES["easy"]) for _ in range(VIEWPOINTS_PER_SITE["easy"])]
    hard = []
    for i in range(VIEWPOINTS_PER_SITE["hard"]):
        near, far = easy[i % len(easy)], _sample_viewpoint(rng, _POSES["hard"])
        t = rng.uniform(*HARD_VIEWPOINT_REACH)
        hard.append({key: near[key] + t * (far[key] - near[key]) for key in near})
    return {"easy": easy, "hard": hard}


# ------------------------------------------------------------------------------------------------------------
# photos: a perspective view of a site, passers-by, lighting


def _perspective_coefficients(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output points ``dst`` [4, 2] onto input points ``src`` [4, 2]."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    return tuple(float(c) for c in np.linalg.solve(np.array(rows, float), np.array(rhs, float)))


def _view_quad(viewpoint: dict, anchor_size, photo_size, cut: float) -> np.ndarray:
    """Where the anchor's corners (TL, TR, BR, BL) land in the photo, [4, 2].

    ``scale`` is the anchor's size relative to the largest that fits the photo; ``yaw`` shortens one side,
    ``pitch`` narrows the top (looking up), ``roll`` turns the camera (degrees); ``offset`` moves the anchor
    off the centre, as a share of the room left plus up to ``cut`` of its own size past the border.
    """
    fw, fh = anchor_size
    width, height = photo_size
    s = viewpoint["scale"] * min(width / fw, height / fh)
    yaw, pitch = viewpoint["yaw"], viewpoint["pitch"]
    w, h = fw * s * (1 - 0.4 * abs(yaw)), fh * s
    left_h, right_h = h * (1 - 0.6 * max(-yaw, 0.0)), h * (1 - 0.6 * max(yaw, 0.0))
    corners = np.array(
        [
            [-w / 2 * (1 - pitch), -left_h / 2],
            [w / 2 * (1 - pitch), -right_h / 2],
            [w / 2, right_h / 2],
            [-w / 2, left_h / 2],
        ]
    )
    a = math.radians(viewpoint["roll"])
    corners = corners @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    half = (corners.max(0) - corners.min(0)) / 2
    slack = np.maximum(np.array([width, height]) / 2 - half, 0.0) + cut * 2 * half
    return corners + np.array([width, height]) / 2 + viewpoint["offset"] * slack


def _passer_by(rng: np.random.Generator, photo_size, target_box) -> np.ndarray:
    """One object in front of ``target_box`` (x0, y0, x1, y1), as RGBA [H, W, 4] float in 0..1."""
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
            coat = _rgb(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.15, 0.9))
            draw.rectangle((px - ph * 0.15, y1 - ph * 0.8, px + ph * 0.15, y1), fill=coat)
            draw.ellipse((px - ph * 0.1, y1 - ph, px + ph * 0.1, y1 - ph * 0.8), fill=_rgb(0.07, 0.4, 0.7))
    elif kind == "car":
        cw, ch = bw * rng.uniform(0.3, 0.6), bh * rng.uniform(0.15, 0.3)
        bottom = min(height, y1 + 0.05 * bh)
        paint = _rgb(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.2, 0.95))
        draw.rounded_rectangle((x - cw / 2, bottom - ch, x + cw / 2, bottom), radius=ch * 0.3, fill=paint)
    elif kind == "pole":
        pw = max(1.0, bw * rng.uniform(0.03, 0.08))
        draw.rectangle((x - pw / 2, 0, x + pw / 2, height), fill=_rgb(0.0, 0.0, rng.uniform(0.1, 0.4)))
    else:  # a nearer building hiding one side of the landmark
        cover = bw * rng.uniform(0.25, 0.7)
        if rng.random() < 0.5:
            _draw_generic_building(draw, rng, (x0 - width, y0 - bh, x0 + cover, height))
        else:
            _draw_generic_building(draw, rng, (x1 - cover, y0 - bh, x1 + width, height))
    return np.asarray(layer, dtype=np.float32) / 255.0


def _relight(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Colour cast, exposure, gamma, a shadow gradient and sensor noise of ``strength`` (0 = none); 0..255."""
    height, width, _ = pixels.shape
    x = pixels / 255.0
    gain = np.exp(rng.normal(0.0, 0.08 * strength, size=3)) * np.exp(rng.normal(0.0, 0.25 * strength))
    if rng.random() < 0.3 * strength:  # dusk: dark, and warm or blue
        gain *= np.array([1.0, 0.8, 0.6] if rng.random() < 0.5 else [0.6, 0.7, 1.0]) * rng.uniform(0.4, 0.7)
    gamma = float(np.exp(rng.normal(0.0, 0.2 * strength)))
    a = rng.uniform(0, 2 * math.pi)
    xs, ys = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    shadow = 1.0 - 0.25 * strength * rng.random() * (1 + np.cos(a) * xs + np.sin(a) * ys) / 2
    x = np.clip(x * gain, 0.0, 1.0) ** gamma * shadow[..., None]
    x = x + rng.normal(0.0, 0.01 + 0.01 * strength, size=x.shape)
    return np.clip(x * 255.0, 0.0, 255.0)


def _paint_photo(rng: np.random.Generator, site: _Site, kind: str, image_size: int) -> tuple[np.ndarray, dict]:
    """A photo (uint8 [H, W, 3]) of ``site`` taken under the :data:`_CONDITIONS` of ``kind``.

    Easy and hard photos (and queries, taken like easy ones) come from the site's popular viewpoints of their
    pose; junk photos from anywhere.  Also returns what is visible of the landmark: ``visible`` (the share of
    it neither hidden nor cut off), ``area`` (the share of the photo it covers) and ``bbx`` (see
    :func:`_query_box`).
    """
    conditions = _CONDITIONS[kind]
    width, height = _photo_size(image_size)
    popular = site.viewpoints.get(conditions["pose"])
    if popular:
        viewpoint = _jitter_viewpoint(rng, popular[int(rng.integers(len(popular)))])
    else:
        viewpoint = _sample_viewpoint(rng, _POSES[conditions["pose"]])
    ax, ay, aw, ah = site.anchor
    quad = _view_quad(viewpoint, (aw, ah), (width, height), conditions["cut"])
    corners = np.array([[ax, ay], [ax + aw, ay], [ax + aw, ay + ah], [ax, ay + ah]], float)
    coeffs = _perspective_coefficients(quad, corners)

    def warp(image: Image.Image, fill) -> np.ndarray:
        warped = image.transform(
            (width, height), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill
        )
        return np.asarray(warped, dtype=np.float32)

    pixels = warp(site.image, site.sky)
    info = {"visible": 0.0, "area": 0.0, "bbx": None}
    if site.landmark is not None:
        landmark = warp(site.landmark, 0) / 255.0
        visible = warp(site.landmark_visible, 0) / 255.0
        qx, qy = quad[:, 0], quad[:, 1]
        full_area = 0.5 * abs(np.dot(qx, np.roll(qy, 1)) - np.dot(qy, np.roll(qx, 1))) * site.fill_share
        ys, xs = np.nonzero(landmark > 0.5)
        box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else (0, 0, width, height)
        # passers-by in front of the landmark until the wanted share of it is hidden; one that would hide much
        # more than wanted is left out, so the share stays close to the conditions'
        hidden_target = rng.uniform(*conditions["occlusion"])
        for _ in range(10):
            if visible.sum() <= (1 - hidden_target) * full_area or hidden_target < 0.03:
                break
            layer = _passer_by(rng, (width, height), box)
            alpha = layer[..., 3]
            if (visible * (1 - alpha)).sum() < (1 - hidden_target - OCCLUSION_OVERSHOOT) * full_area:
                continue
            pixels = pixels * (1 - alpha[..., None]) + layer[..., :3] * 255.0 * alpha[..., None]
            visible *= 1 - alpha
        info = {
            "visible": float(min(1.0, visible.sum() / max(full_area, 1.0))),
            "area": float(visible.sum() / (width * height)),
            "bbx": _query_box(box, (width, height)),
        }
    else:
        for _ in range(int(rng.integers(0, 3))):
            area = (rng.uniform(0, width * 0.7), height * 0.4, width, height)
            layer = _passer_by(rng, (width, height), area)
            pixels = pixels * (1 - layer[..., 3:]) + layer[..., :3] * 255.0 * layer[..., 3:]
    pixels = _relight(pixels, rng, rng.uniform(0.5, 1.0) * conditions["light"])
    return pixels.round().astype(np.uint8), info


def _label(intended: str, info: dict) -> str:
    """revisitop label of a database photo from what is visible of the landmark in it."""
    if info["visible"] < _JUNK_MAX_VISIBLE or info["area"] < _JUNK_MAX_AREA:
        return "junk"
    if intended == "easy" and info["visible"] >= _EASY_MIN_VISIBLE and info["area"] >= _EASY_MIN_AREA:
        return "easy"
    return "hard"


def _intended_difficulties(rng: np.random.Generator, n: int, mix: Sequence[tuple[str, float]]) -> list[str]:
    """``n`` difficulties in the proportions of ``mix`` (rounded; at least one easy), in random order."""
    counts = [round(n * share) for _, share in mix]
    counts[0] = max(1, n - sum(counts[1:]))
    names = [name for (name, _), count in zip(mix, counts, strict=True) for _ in range(count)][:n]
    return [names[i] for i in rng.permutation(len(names))]


# ------------------------------------------------------------------------------------------------------------
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

    The database holds ``db_views_per_landmark`` photos of each of ``n_landmarks`` landmarks and
    ``n_background`` photos of streets without any of them, in shuffled order; the queries are
    ``queries_per_landmark`` further photos of each landmark (not in the database), grouped by landmark, each
    with a ``bbx`` around the landmark. Image names look like revisitop's (``landmark_03_004217``,
    ``street_112358``).  ``image_size`` is the photos' longest side.  ``name`` is part of every random key, so
    two sets never share a landmark.

    Returns the ground truth written: {"gnd", "imlist", "qimlist"}.
    """
    out_dir = Path(out_dir)
    jpg = out_dir / "jpg"
    key = (seed, _STREAM_TEST, zlib.crc32(name.encode()))
    layout = _rng(*key, _SUB_LAYOUT)
    n_db = n_landmarks * db_views_per_landmark + n_background
    n_query = n_landmarks * queries_per_landmark
    serials = _unique_serials(layout, n_db + n_query)
    db_position = layout.permutation(n_db)  # where the k-th painted database photo goes in imlist

    imlist: list[str] = [""] * n_db
    qimlist: list[str] = []
    labels: list[dict[str, list[int]]] = [{"easy": [], "hard": [], "junk": []} for _ in range(n_landmarks)]
    query_boxes: list[list[float]] = []
    k = 0
    for lm in range(n_landmarks):
        site = _paint_site(_rng(*key, _SUB_SITE, lm), _draw_facade(_rng(*key, _SUB_LANDMARK, lm)))
        intended = _intended_difficulties(_rng(*key, _SUB_LAYOUT, lm), db_views_per_landmark, _TEST_VIEW_MIX)
        for v, kind in enumerate(intended):
            pixels, info = _paint_photo(_rng(*key, _SUB_VIEW, lm, v), site, kind, image_size)
            image_name = f"landmark_{lm:02d}_{serials[k]:06d}"
            _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
            imlist[db_position[k]] = image_name
            labels[lm][_label(kind, info)].append(int(db_position[k]))
            k += 1
        for q in range(queries_per_landmark):
            pixels, info = _paint_photo(_rng(*key, _SUB_QUERY, lm, q), site, "query", image_size)
            image_name = f"landmark_{lm:02d}_{serials[n_db + len(qimlist)]:06d}"
            _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
            qimlist.append(image_name)
            query_boxes.append(info["bbx"])
    for b in range(n_background):
        if b % PHOTOS_PER_EMPTY_SITE == 0:
            site = _paint_site(_rng(*key, _SUB_BACKGROUND, b // PHOTOS_PER_EMPTY_SITE), None)
        kind = "easy" if layout.random() < 0.5 else "hard"
        pixels, _ = _paint_photo(_rng(*key, _SUB_BACKGROUND, b, 0), site, kind, image_size)
        image_name = f"street_{serials[k]:06d}"
        _atomic_save_jpeg(pixels, jpg / f"{image_name}.jpg")
        imlist[db_position[k]] = image_name
        k += 1

    gnd = []
    for i, bbx in enumerate(query_boxes):
        landmark_labels = labels[i // queries_per_landmark]
        entry = {"bbx": bbx}
        entry.update((label, sorted(landmark_labels[label])) for label in ("easy", "hard", "junk"))
        gnd.append(entry)
    ground_truth = {"gnd": gnd, "imlist": imlist, "qimlist": qimlist}
    safe_pickle.dump(ground_truth, out_dir / f"gnd_{name}.pkl")
    return ground_truth


def generate_distractors(out_dir: str | Path, *, seed: int, n_images: int, image_size: int) -> list[str]:
    """An R1M-style distractor set: ``out_dir/jpg/<sub>/<name>.jpg`` and ``out_dir/revisitop1m.txt``.

    Photos of places without any test landmark, about ``PHOTOS_PER_EMPTY_SITE`` of each: streets around other
    buildings, plain streets and parks (shares ``DISTRACTOR_SITE_KINDS``), as Flickr's R1M holds all sorts.
    Images sit in sub-folders named by the first character of their id; the list file has one path per line,
    relative to ``out_dir/jpg`` and with the extension, as revisitop's.

    Returns the listed paths.
    """
    out_dir = Path(out_dir)
    layout = _rng(seed, _STREAM_DISTRACTORS, _SUB_LAYOUT)
    names = _hex_ids(layout, n_images, 16)
    paths = [f"{image_name[0]}/{image_name}.jpg" for image_name in names]
    n_sites = max(1, -(-n_images // PHOTOS_PER_EMPTY_SITE))
    site_of_image = layout.integers(n_sites, size=n_images)
    site_kind = layout.choice(["building", "street", "park"], size=n_sites, p=DISTRACTOR_SITE_KINDS)
    photo_kind = np.where(layout.random(n_images) < 0.5, "easy", "hard")
    # one site at a time, so that only one painted street is held in memory
    for site_index in range(n_sites):
        images = np.flatnonzero(site_of_image == site_index)
        if len(images) == 0:
            continue
        facade = None
        if site_kind[site_index] == "building":
            facade = _draw_facade(_rng(seed, _STREAM_DISTRACTORS, _SUB_LANDMARK, site_index))
        site = _paint_site(
            _rng(seed, _STREAM_DISTRACTORS, _SUB_SITE, site_index), facade, park=site_kind[site_index] == "park"
        )
        for i in images:
            pixels, _ = _paint_photo(
                _rng(seed, _STREAM_DISTRACTORS, _SUB_VIEW, int(i)), site, str(photo_kind[i]), image_size
            )
            _atomic_save_jpeg(pixels, out_dir / "jpg" / paths[i])
    write_text(out_dir / "revisitop1m.txt", "".join(f"{path}\n" for path in paths))
    return paths


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

    Each cluster is one landmark (from a random stream no test set uses) photographed ``images_per_cluster``
    times, mostly easy.  The first ``n_clusters`` clusters form the ``train`` split, the next
    ``n_val_clusters`` the ``val`` split (a split by cluster, as cirtorch's).  Per split: ``cids``
    (32-character hex image ids; the images are JPEGs without extension at :func:`csa_rerank.datasets.cid_path`),
    ``cluster`` (cluster number per image), ``qidxs`` / ``pidxs`` (query / positive pairs of one cluster,
    indices into the split's ``cids``, as cirtorch's verified matches: every image in which the landmark is
    more than barely visible is a query once, its positive another such image).

    Returns the database dict written.
    """
    if images_per_cluster < 2:
        raise ValueError(f"images_per_cluster={images_per_cluster}: query/positive pairs need at least 2")
    out_dir = Path(out_dir)
    layout = _rng(seed, _STREAM_TRAIN, _SUB_LAYOUT)
    cids = _hex_ids(layout, (n_clusters + n_val_clusters) * images_per_cluster, 32)
    splits = {}
    split_clusters = {"train": range(n_clusters), "val": range(n_clusters, n_clusters + n_val_clusters)}
    for split, clusters in split_clusters.items():
        split_cids, cluster_of, qidxs, pidxs = [], [], [], []
        for c in clusters:
            site = _paint_site(
                _rng(seed, _STREAM_TRAIN, _SUB_SITE, c), _draw_facade(_rng(seed, _STREAM_TRAIN, _SUB_LANDMARK, c))
            )
            intended = _intended_difficulties(
                _rng(seed, _STREAM_TRAIN, _SUB_LAYOUT, c), images_per_cluster, _TRAIN_VIEW_MIX
            )
            members = list(range(len(split_cids), len(split_cids) + images_per_cluster))
            matchable = []
            for v, kind in enumerate(intended):
                rng = _rng(seed, _STREAM_TRAIN, _SUB_VIEW, c, v)
                pixels, info = _paint_photo(rng, site, kind, image_size)
                cid = cids[c * images_per_cluster + v]
                _atomic_save_jpeg(pixels, cid_path(out_dir / "ims", cid))
                if _label(kind, info) != "junk":
                    matchable.append(members[v])
                split_cids.append(cid)
                cluster_of.append(c)
            # a random cyclic derangement of the matchable images (of all, if fewer than two are matchable)
            pool = np.array(matchable if len(matchable) >= 2 else members)
            pool = pool[layout.permutation(len(pool))]
            qidxs.extend(int(i) for i in pool)
            pidxs.extend(int(i) for i in np.roll(pool, 1))
        splits[split] = {"cids": split_cids, "cluster": cluster_of, "qidxs": qidxs, "pidxs": pidxs}
    safe_pickle.dump(splits, out_dir / "retrieval-SfM-120k.pkl")
    return splits
