"""The demo's page: one panel per example workflow (images the workflow's own nodes made, their scores, a caption)
and one per learned-world experiment (a column per seed, with the mean over the seeds), written as
output/index.html and as one PNG per panel. The learned worlds come first, the tiny random-weight models after."""
from __future__ import annotations

import html
import json
import os
import sys
import textwrap
from dataclasses import asdict, dataclass, field

from testbed.demo_roles import (GUIDED_SCORE, GUIDED_VIEW, LOSS_PLOT, NO_DRAG_VIEW, REFERENCE_IMAGE, REFERENCE_VIEW,
                                TARGET_MAP, UNGUIDED_SCORE, UNGUIDED_VIEW)

NOISE = ("The pictures themselves are noise: the demo's tiny models have random weights. What guidance did is "
         "visible in the readout space, as the heads read the sampled latents (read as sampled: the tiny random VAE's "
         "decode and encode would scramble them).")
FITTED = "Fitted for a CPU: 64 px canvas and at most 10 steps (testbed/tiny_names.py fit_for_cpu)."
DRAG_ARROW_AND_SCORES = ("Black arrow: the drag, from the object's centroid to where it should go. Scores from the "
                         "pixel detector: moved, the share of the requested displacement the object's centroid moved "
                         "(1: all the way), and ghost, the share of its old place it still covers (lower is better).")
START_GOAL_AND_SCORE = ("Black cross: the object's centroid unguided (the start); black ring: the goal, on the "
                        "opposite side of the canvas. Score: closed, the share of the distance to the goal the "
                        "detected centroid closed (1: at the goal).")
WHAT_TO_LOOK_FOR = {
    "spatial": "Left: the target map. Middle: what the head reads in the latent sampled from the same seed "
               "without guidance. Right: what it reads in the guided latent. The guided readout should be closer to the "
               "target: its loss (lower is better) is below the unguided one.",
    "drag": "The correspondence head's features as colours (their principal components): left the reference, "
            "right the edited image, in the reference's colours. Red dot: the source point, green ring: where it "
            "should go. The similarity of the reference's feature at the source with the image's feature at the "
            "target (higher is better) rises from before (the reference sampled from the same seed; for a photo, its "
            "reconstruction from the inversion without the drag) to after (the edit).",
    "appearance": "The appearance head's readout of the reference, of the same seed without guidance and of the "
                  "guided image, in the reference's colours. The distance to the reference's readout (lower is "
                  "better) shows how much closer guidance brought the new image to the reference's appearance.",
    "identity": "The same as appearance, measured on the face region (the mask's bounding box): the identity "
                "distance to the reference portrait's readout, without and with guidance (lower is better).",
    "self_guidance": "The cross-attention map of the word (yellow = most, blue = least) in the latent from the same "
                     "seed without guidance and in the guided one. White cross: its centroid; green ring: the goal (the unguided "
                     "centroid moved right by a quarter of the width). Guided, the centroid is nearer the goal: the "
                     "Self-Guidance loss (lower is better) falls.",
    "baseline": "Plain text-to-image with no guidance: the baseline every other panel is compared with.",
    "world_spatial": "A column per seed: the target map (a depth or edge map rendered from a scene), then the "
                     "scene's caption sampled from another seed without guidance and with the world's head guiding "
                     "toward the map. Black outlines: the scene's objects, where the map asks for them; guided, the "
                     "objects should fill them. Score: the IoU of the objects a colour-blob detector finds in the "
                     "decoded pixels with the scene's objects (higher is better; no head is involved).",
    "world_flux_spatial": "A column per seed: the target depth map, then the scene's caption sampled from another "
                          "seed without guidance and with the world Flux's depth head guiding toward the map. Black "
                          "outlines: the scene's objects; guided, the objects should fill them. Score: the IoU of the "
                          "detected objects with the scene's (higher is better; no head is involved).",
    "world_zimage_spatial": "A column per seed: the target depth or edge map, then the scene's caption sampled from "
                            "another seed in 8 steps at CFG 1 without guidance and with the world Z-Image's head "
                            "guiding toward the map. Black outlines: the scene's objects; guided, the objects should "
                            "fill them. Score: the IoU of the detected objects with the scene's (higher is better; no "
                            "head is involved).",
    "world_drag": "A column per seed: the object of a one-object picture (top: the same seed unguided, or an inverted "
                  "rendered scene's reconstruction with the drag at weight 0) dragged 24-40 px by the correspondence "
                  "and appearance heads (bottom). " + DRAG_ARROW_AND_SCORES,
    "world_zimage_drag": "A column per seed: the object of a one-object picture that the world Z-Image sampled in 8 "
                         "steps at CFG 1 (top: the same seed unguided) dragged 24-40 px by its correspondence and "
                         "appearance heads (bottom). " + DRAG_ARROW_AND_SCORES,
    "world_qwen_image_edit_drag": "A column per seed: a rendered one-object scene (top), the reference image of an "
                                  "edit that the world Qwen-Image-Edit samples in 8 steps at CFG 1 with the scene's "
                                  "caption (which keeps it): the same seed without the drag (middle) and with its "
                                  "object dragged 24-40 px by the correspondence and appearance heads (bottom). "
                                  + DRAG_ARROW_AND_SCORES,
    "world_self_guidance": "A column per seed: Self-Guidance move_to on the words of a one-object prompt, no head "
                           "involved, the same seed unguided (top) and guided (bottom). " + START_GOAL_AND_SCORE,
    "world_zimage_self_guidance": "A column per seed: Self-Guidance move_to on the words of a one-object prompt, read "
                                  "from the world Z-Image's joint attention, no head involved, the same seed sampled "
                                  "in 8 steps at CFG 1 unguided (top) and guided (bottom). " + START_GOAL_AND_SCORE,
}
WORLD_NOTE = ("The mean is over the seeds shown; docs/measurements.md (Measured on a learned model) has the means over "
              "16 seeds.")
ASSERTED_KINDS = ("spatial", "drag", "self_guidance")


@dataclass(frozen=True)
class Part:
    """A part of the page: its heading and the paragraph that introduces it."""

    heading: str
    intro: str


TINY_PART = ""
PARTS = {
    "world_": Part("The learned world model (SD1.5 architecture)",
                   "A small model of the SD1.5 architecture trained on rendered scenes of coloured shapes (world/), "
                   "loaded by Load Checkpoint and guided through the pack's nodes with heads trained for it (128 px, "
                   "12 ddim steps, cfg 4). Each experiment runs several seeds, each guided against the same seed "
                   "unguided; the marks drawn over the pictures show what was asked. " + WORLD_NOTE),
    "world_flux_": Part("The world's Flux",
                        "The same world learned by a Flux (ComfyUI's own Flux module, 128 wide, 12 euler steps, cfg 4; "
                        "ComfyUI 0.33 and newer load it), guided by its depth head. " + WORLD_NOTE),
    "world_zimage_": Part("The world's Z-Image",
                          "The same world learned by ComfyUI's NextDiT in Z-Image's configuration (3840 wide, so "
                          "ComfyUI loads it as Z-Image), distilled to sample as Z-Image Turbo does: 8 euler steps at "
                          "cfg 1, guided by its depth, edge and drag heads, and by Self-Guidance (no head). " + WORLD_NOTE),
    "world_qwen_image_": Part("The world's Qwen-Image-Edit",
                              "The same world learned by ComfyUI's Qwen-Image MMDiT (3072 wide with 3584-wide text, "
                              "so ComfyUI loads it as Qwen-Image), trained to keep a reference image as an edit model "
                              "does and to sample in 8 euler steps at cfg 1 as the edit models' Lightning LoRAs do; a "
                              "rendered scene is the edit's reference image and its drag heads move its object. "
                              + WORLD_NOTE),
    TINY_PART: Part("Every example workflow runs",
                    "The check that every workflow in example_workflows/ runs: each on a real ComfyUI server with "
                    "tiny models in place of the real ones, its panel made from the workflow's own comparison nodes. "
                    + NOISE),
}
"""The page's parts in reading order, by the kind prefix of their panels (a panel goes where the longest matches)."""


@dataclass
class Panel:
    """One workflow's result: titled images (file names in the output folder), scores by title, a kind; a world
    experiment's panel has a panel per seed and the seeds' means as its scores."""

    workflow: str
    kind: str
    images: list[tuple[str, str]] = field(default_factory=list)
    scores: dict[str, list[dict]] = field(default_factory=dict)
    seeds: list["Panel"] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "Panel":
        """A panel as panels.json holds it."""
        return cls(**{**data, "images": [tuple(i) for i in data["images"]],
                      "seeds": [cls.from_dict(s) for s in data.get("seeds", [])]})

    def score_line(self, title: str) -> str:
        return "; ".join(f"{s['label']} {s['value']:.4f}" for s in self.scores.get(title, []))

    def score_title(self, view_title: str) -> str:
        """The score node that goes with an image: the guided view's, and the unguided one's (a drag of a generated
        image has no unguided view: there the reference is the same seed unguided)."""
        titles = [title for title, _ in self.images]
        before = UNGUIDED_VIEW if UNGUIDED_VIEW in titles or self.kind != "drag" else REFERENCE_VIEW
        return {GUIDED_VIEW: GUIDED_SCORE, before: UNGUIDED_SCORE}.get(view_title, "")

    def guided_is_better(self) -> bool | None:
        """Whether every guided score beats its unguided twin (None: this panel has no such pair)."""
        before, after = self.scores.get(UNGUIDED_SCORE), self.scores.get(GUIDED_SCORE)
        if not before or not after:
            return None
        return all((a["value"] > b["value"]) if a["higher_is_better"] else (a["value"] < b["value"])
                   for b, a in zip(before, after))

    def score_summary(self) -> str:
        """The scores in one line: 'unguided ...; guided ...'."""
        return "; ".join(f"{label} {self.score_line(title)}" for label, title in
                         (("unguided", UNGUIDED_SCORE), ("guided", GUIDED_SCORE)) if title in self.scores)

    def mean_line(self) -> str:
        """A world experiment's means: 'Mean over N seeds: unguided ...; guided ...'."""
        shown = sum(bool(seed.scores) for seed in self.seeds)
        return f"Mean over {shown} seed{'s' if shown != 1 else ''}: {self.score_summary()}"

    def caption(self) -> str:
        """What to look for, then the scores (a world experiment's means show above its seeds) and notes."""
        if self.kind.startswith("world_"):
            parts = [WHAT_TO_LOOK_FOR[self.kind], WORLD_NOTE]
        else:
            scores = [f"{label}: {self.score_line(title)}" for label, title in
                      (("before" if self.kind == "drag" else "unguided", UNGUIDED_SCORE), ("after" if self.kind == "drag" else "guided", GUIDED_SCORE))
                      if title in self.scores]
            parts = [WHAT_TO_LOOK_FOR[self.kind], *scores, NOISE, FITTED]
        return " ".join(p if p.endswith(".") else p + "." for p in parts)

    def cells(self) -> list[tuple[str, str, str]]:
        """The panel's images in reading order, each as (title, file name, its score line)."""
        return [(title, name, self.score_line(self.score_title(title))) for title, name in ordered(self.images)]


PANEL_ORDER = (TARGET_MAP, REFERENCE_IMAGE, REFERENCE_VIEW, NO_DRAG_VIEW, UNGUIDED_VIEW, GUIDED_VIEW, LOSS_PLOT)


def ordered(images: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Images in reading order: target or reference, unguided, guided, the loss plot; others after."""
    rank = {title: i for i, title in enumerate(PANEL_ORDER)}
    return sorted(images, key=lambda item: rank.get(item[0], len(PANEL_ORDER)))


def part_of(panel: Panel) -> str:
    """The page part a panel belongs to (a key of PARTS)."""
    return max((prefix for prefix in PARTS if panel.kind.startswith(prefix)), key=len)


def columns(panel: Panel) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The panel's layout as (heading, cells) columns: a seed per column for a world experiment, else an image."""
    if panel.seeds:
        return [(seed.workflow, seed.cells()) for seed in panel.seeds]
    return [("", [cell]) for cell in panel.cells()]


def panel_png(panel: Panel, folder: str, cell: int = 192) -> str:
    """The panel as one PNG (its columns side by side, images `cell` high with their titles and scores; a world
    experiment's means on top); its file name."""
    from PIL import Image, ImageDraw

    def fitted(name: str) -> Image.Image:
        picture = Image.open(os.path.join(folder, name)).convert("RGB")
        size = (round(picture.width * cell / picture.height), cell)
        return picture.resize(size, Image.NEAREST if picture.height < cell else Image.BILINEAR)

    layout = [(heading, [(title, fitted(name), score) for title, name, score in cells])
              for heading, cells in columns(panel)]
    header = [panel.workflow, *([panel.mean_line()] if panel.seeds else [])]
    top, block = 8 + 16 * len(header) + (16 if panel.seeds else 0), cell + 66
    widths = [max((p.width for _, p, _ in cells), default=cell) for _, cells in layout]
    rows = max((len(cells) for _, cells in layout), default=0)
    sheet = Image.new("RGB", (8 + sum(w + 8 for w in widths), top + rows * block), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    for row, line in enumerate(header):
        draw.text((8, 6 + 16 * row), line, fill=(240, 240, 240) if row == 0 else (160, 220, 160))
    x = 8
    for (heading, cells), width in zip(layout, widths):
        for row, line in enumerate(textwrap.wrap(heading, max(12, width // 6))):
            draw.text((x, top - 16 + 14 * row), line, fill=(240, 240, 240))
        for index, (title, picture, score) in enumerate(cells):
            y = top + index * block
            sheet.paste(picture, (x, y))
            draw.text((x, y + cell + 4), title, fill=(220, 220, 220))
            for row, line in enumerate(textwrap.wrap(score, max(12, width // 6))[:2]):
                draw.text((x, y + cell + 20 + 14 * row), line, fill=(160, 220, 160))
        x += width + 8
    name = f"panel_{os.path.splitext(panel.workflow)[0]}.png"
    sheet.save(os.path.join(folder, name))
    return name


def figures(panel: Panel) -> str:
    """A panel's images as HTML figures, each with its title and score line."""
    return "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(title)}"><figcaption>'
                   f"{html.escape(title)}<br><b>{html.escape(score)}</b></figcaption></figure>"
                   for title, name, score in panel.cells())


def section(panel: Panel) -> str:
    """A panel's HTML: its title, images (a column per seed for a world experiment, with the means) and caption."""
    if panel.seeds:
        seeds = "".join(f'<div class="seed"><h3>{html.escape(seed.workflow)}</h3><div class="images">{figures(seed)}'
                        "</div></div>" for seed in panel.seeds)
        body = f'<p class="mean">{html.escape(panel.mean_line())}</p><div class="seeds">{seeds}</div>'
    else:
        body = f'<div class="images">{figures(panel)}</div>'
    return (f'<section class="panel"><h2>{html.escape(panel.workflow)}</h2>{body}'
            f'<p class="caption">{html.escape(panel.caption())}</p></section>')


def write_page(panels: list[Panel], folder: str) -> str:
    """output/index.html: the panels by part (the learned worlds first), each with its images, titles and caption;
    and panels.json, the panels it shows."""
    groups = {prefix: [p for p in panels if part_of(p) == prefix] for prefix in PARTS}
    blocks = []
    for prefix, part in PARTS.items():
        if groups[prefix]:
            sheet = "<p><a href='contact_sheet.png'>All images</a></p>" if prefix == TINY_PART else ""
            blocks.append(f'<h2 class="part">{html.escape(part.heading)}</h2><p class="intro">{html.escape(part.intro)}'
                          f"</p>{sheet}" + "".join(section(p) for p in groups[prefix]))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Readout Guidance demo</title><style>"
            "body{font-family:sans-serif;background:#18181c;color:#ddd;margin:24px}"
            ".images{display:flex;gap:12px;flex-wrap:wrap}figure{margin:0}"
            ".seeds{display:flex;gap:20px;flex-wrap:wrap}.seed{max-width:192px}.seed .images{flex-direction:column}"
            ".seed h3{margin:4px 0}.seed img{image-rendering:auto}"
            "img{height:192px;width:auto;image-rendering:pixelated;background:#000}"
            "img[alt='" + LOSS_PLOT + "']{image-rendering:auto}figcaption{max-width:192px}b,.mean{color:#9d9}"
            ".caption,.intro{max-width:60em}h2.part{font-size:1.6em;border-bottom:1px solid #555;margin-top:40px}"
            "</style></head><body><h1>Readout Guidance demo: what guidance did</h1>"
            + "".join(blocks) + "</body></html>")
    path = os.path.join(folder, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    with open(os.path.join(folder, "panels.json"), "w", encoding="utf-8") as f:
        json.dump([asdict(panel) for shown in groups.values() for panel in shown], f, indent=1)
    return path


def load_panels(folder: str) -> list[Panel]:
    """The panels of a demo folder's panels.json (none when there is none)."""
    listing = os.path.join(folder, "panels.json")
    if not os.path.exists(listing):
        return []
    with open(listing, encoding="utf-8") as f:
        return [Panel.from_dict(item) for item in json.load(f)]


def write_part(panels: list[Panel], folder: str, prefix: str) -> str:
    """The page with these panels in place of one part's panels from earlier runs (the other parts kept); its path."""
    return write_page([p for p in load_panels(folder) if part_of(p) != prefix] + panels, folder)


def main(folder: str) -> None:
    """Rebuild the panels and the page from a demo folder's panels.json (after editing captions or layout)."""
    panels = load_panels(folder)
    for panel in panels:
        print(panel_png(panel, folder))
    print(write_page(panels, folder))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.dirname(__file__)), "output"))
