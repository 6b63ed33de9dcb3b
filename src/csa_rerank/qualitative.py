"""What re-ranking changed, as pictures: the paper's Figure 3 and a gallery of every query.

Figure 3 of the paper ("Selected qualitative examples of our re-ranking method") shows groups of two rows of
thumbnails for one ROxf query each: the query with its box, then the top-10 of the first round (upper row) and of
CSA (lower row), true positives framed green and false positives red.  :func:`select_queries` picks the groups by
a fixed rule, :func:`draw_groups` draws them; the gallery (:func:`write_gallery`) draws every query the same way.

Frames: green for a positive, red for a negative and grey for a junk image under the stated protocol
(:func:`csa_rerank.evaluate.protocol_lists`); the query's box (``bbx`` of the ground truth) is drawn in orange.
Every position in the picture comes from :class:`Layout`, so a reader (or a test) can find each frame.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import write_text
from .evaluate import protocol_lists

COLOURS = {
    "query_box": (255, 140, 0),
    "positive": (0, 170, 0),
    "negative": (220, 0, 0),
    "junk": (150, 150, 150),
}
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def image_label(image: int, gnd_entry: dict, protocol: str) -> str:
    """ "positive", "junk" or "negative": what database image ``image`` is for the query under ``protocol``."""
    ok, junk = protocol_lists(gnd_entry, protocol)
    if image in set(ok):
        return "positive"
    return "junk" if image in set(junk) else "negative"


def select_queries(before: list, after: list, n_success: int, n_failure: int) -> list[tuple[int, str]]:
    """The queries to show: the ``n_success`` largest AP gains, then the ``n_failure`` largest losses (the
    smallest gains when fewer queries lost), ties broken by query index; queries without positives (AP None) are
    never chosen.  Returns ``[(query index, "success" | "failure"), ...]``."""
    gains = [(a - b, q) for q, (b, a) in enumerate(zip(before, after, strict=True)) if b is not None and a is not None]
    successes = sorted(gains, key=lambda gain: (-gain[0], gain[1]))[:n_success]
    chosen = {q for _, q in successes}
    failures = [g for g in sorted(gains, key=lambda gain: (gain[0], gain[1])) if g[1] not in chosen][:n_failure]
    return [(q, "success") for _, q in successes] + [(q, "failure") for _, q in failures]


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a picture of groups: per group a title line, then two rows (first round, re-ranked) of a
    label column, the query and ``shown`` thumbnails of ``thumb`` pixels with a frame of ``frame`` pixels."""

    shown: int = 10
    thumb: int = 96
    frame: int = 5
    gap: int = 4
    label_width: int = 120
    query_gap: int = 14
    title: int = 22
    group_gap: int = 16
    pad: int = 8

    def cell(self, group: int, row: int, column: int) -> tuple[int, int]:
        """Top-left pixel of the cell in ``column`` (0 = the query, 1.. = rank 1..) of ``row`` of ``group``."""
        x = self.pad + self.label_width + column * (self.thumb + self.gap) + (self.query_gap if column else 0)
        y = self.pad + group * self.group_height + self.title + row * (self.thumb + self.gap)
        return x, y

    @property
    def group_height(self) -> int:
        return self.title + 2 * (self.thumb + self.gap) + self.group_gap

    def size(self, groups: int) -> tuple[int, int]:
        width = self.cell(0, 0, self.shown)[0] + self.thumb + self.pad
        return width, 2 * self.pad + groups * self.group_height - self.group_gap


def _fit(path: Path, box: int) -> tuple[Image.Image, float]:
    """The image scaled to fit a square of ``box`` pixels, and the scale."""
    with Image.open(path) as image:
        full = image.size
        image.draft("RGB", (box, box))  # JPEG: decode at a reduced size when possible (much faster)
        image = image.convert("RGB")
        scale = min(box / image.width, box / image.height)
        resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return resized, resized.width / full[0]


def _paste(canvas: Image.Image, path: Path, origin: tuple[int, int], inner: int) -> tuple[int, int, float]:
    thumb, scale = _fit(path, inner)
    x = origin[0] + (inner - thumb.width) // 2
    y = origin[1] + (inner - thumb.height) // 2
    canvas.paste(thumb, (x, y))
    return x, y, scale


def _draw_query(canvas, draw, layout, group, row, query) -> None:
    x0, y0 = layout.cell(group, row, 0)
    x, y, scale = _paste(canvas, Path(query["image"]), (x0, y0), layout.thumb)
    if query.get("bbx") is not None:
        x1, y1, x2, y2 = (float(v) * scale for v in query["bbx"])
        draw.rectangle([x + x1, y + y1, x + x2, y + y2], outline=COLOURS["query_box"], width=3)


def _draw_ranked(canvas, draw, layout, group, row, ranked) -> None:
    inner = layout.thumb - 2 * layout.frame
    for column, (path, label) in enumerate(ranked[: layout.shown], start=1):
        x0, y0 = layout.cell(group, row, column)
        draw.rectangle([x0, y0, x0 + layout.thumb - 1, y0 + layout.thumb - 1], fill=COLOURS[label])
        draw.rectangle(
            [x0 + layout.frame, y0 + layout.frame, x0 + layout.thumb - layout.frame - 1,
             y0 + layout.thumb - layout.frame - 1],
            fill=BACKGROUND,
        )  # fmt: skip
        _paste(canvas, Path(path), (x0 + layout.frame, y0 + layout.frame), inner)


def draw_groups(groups: list[dict], layout: Layout = Layout()) -> Image.Image:
    """One picture of query groups.

    Args:
        groups: per group ``{"title": str, "query": {"image": path, "bbx": [x1, y1, x2, y2] or None},
            "rows": [{"label": str, "ranked": [(image path, "positive" | "negative" | "junk"), ...]}] * 2}``.
    """
    canvas = Image.new("RGB", layout.size(len(groups)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for g, group in enumerate(groups):
        draw.text((layout.pad, layout.pad + g * layout.group_height + 4), group["title"], fill=TEXT)
        for r, row in enumerate(group["rows"]):
            x, y = layout.cell(g, r, 0)
            for i, line in enumerate(row["label"].split("\n")):
                draw.text((layout.pad, y + 4 + 14 * i), line, fill=TEXT)
            _draw_query(canvas, draw, layout, g, r, group["query"])
            _draw_ranked(canvas, draw, layout, g, r, row["ranked"])
    return canvas


def landmark_of(query_name: str) -> str:
    """The landmark a query name belongs to, for grouping: the name without its trailing image number
    (``all_souls_000013`` -> ``all_souls``)."""
    return re.sub(r"[_-]?\d+$", "", query_name) or query_name


def gallery_html(title: str, entries: list[dict]) -> str:
    """The gallery: the queries grouped by landmark, each with its AP before and after and its picture;
    ``entries`` are ``{"name", "picture" (an image's URL), "before", "after"}`` (AP in %, or None)."""

    def ap(value):
        return "–" if value is None else f"{value:.2f}"

    groups: dict[str, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: e["name"]):
        groups.setdefault(landmark_of(entry["name"]), []).append(entry)
    contents = " · ".join(f'<a href="#{html.escape(g)}">{html.escape(g)}</a> ({len(e)})' for g, e in groups.items())
    sections = []
    for group, members in groups.items():
        items = "".join(
            f'<figure id="{html.escape(e["name"])}"><figcaption><b>{html.escape(e["name"])}</b>: AP {ap(e["before"])}'
            f' &rarr; {ap(e["after"])}</figcaption><img src="{e["picture"]}" loading="lazy"'
            f' alt="{html.escape(e["name"])}"></figure>'
            for e in members
        )
        sections.append(f'<section><h2 id="{html.escape(group)}">{html.escape(group)}</h2>{items}</section>')
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}figure{margin:0 0 1em 0}img{max-width:100%}"
        "figcaption{margin-bottom:.2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>Frames: green positive, red negative, grey junk; orange: the "
        f"query's box.</p><p>{contents}</p>{''.join(sections)}</body></html>\n"
    )


def embedded_jpeg(picture: Image.Image) -> str:
    """A picture as a ``data:`` URL, so that the gallery is one file (Snakemake's report embeds files, not
    folders)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_gallery(path: str | Path, title: str, groups: list[dict], entries: list[dict]) -> None:
    """One HTML file: every query (``groups[i]`` drawn alone, for ``entries[i]``), pictures embedded."""
    pictures = [
        {**entry, "picture": embedded_jpeg(draw_groups([group]))} for group, entry in zip(groups, entries, strict=True)
    ]
    write_text(path, gallery_html(title, pictures))
