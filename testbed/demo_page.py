"""The demo's page: one panel per workflow (images the workflow's own nodes made, their scores, a caption),
written as output/index.html and as one PNG per panel."""
from __future__ import annotations

import html
import json
import os
import sys
import textwrap
from dataclasses import asdict, dataclass, field

from testbed.demo_roles import GUIDED_SCORE, GUIDED_VIEW, LOSS_PLOT, NO_DRAG_VIEW, REFERENCE_VIEW, TARGET_MAP, UNGUIDED_SCORE, UNGUIDED_VIEW

NOISE = ("The pictures themselves are noise: the demo's tiny models have random weights. What guidance did is "
         "visible in the readout space, as the heads read the sampled latents (read as sampled: the tiny random VAE's "
         "decode and encode would scramble them).")
FITTED = "Fitted for a CPU: 64 px canvas and at most 10 steps (testbed/tiny_names.py fit_for_cpu)."
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
    "world_spatial": "The learned world model (128 px, 20 ddim steps): left the target map (rendered from a scene), "
                     "then the scene's caption sampled from another seed without guidance and with the world's head "
                     "guiding toward the map. The score is the IoU of the objects a colour-blob detector finds in "
                     "the decoded pixels with the scene's objects (higher is better; no head is involved).",
    "world_flux_spatial": "The world's Flux (a 128-wide Flux trained on the same scenes, 12 euler steps, cfg 4): left the "
                          "target depth map, then the scene's caption sampled from another seed without guidance and "
                          "with the world Flux's depth head guiding toward the map. Score: IoU of the detected objects "
                          "with the scene's (higher is better; no head is involved).",
    "world_drag": "The learned world model: the object of the picture on the left (the same seed unguided, or an "
                  "inverted rendered scene's reconstruction) dragged 24-40 px by the correspondence and appearance "
                  "heads. Scores from the pixel detector: the share of the requested displacement the object's "
                  "centroid moved, and the share of its old place it still covers (ghost, lower is better).",
    "world_self_guidance": "The learned world model: Self-Guidance move_to on the words of a one-object prompt, no "
                           "head involved: the object should move toward the goal on the opposite side of the canvas. "
                           "Score: the share of the distance to the goal its detected centroid closed.",
}
WORLD_NOTE = ("Measured over 16 seeds in docs/measurements.md, Measured on a learned model; this panel shows the "
              "demo's seed.")
ASSERTED_KINDS = ("spatial", "drag", "self_guidance")


@dataclass
class Panel:
    """One workflow's result: titled images (file names in the output folder), scores by title, a kind."""

    workflow: str
    kind: str
    images: list[tuple[str, str]] = field(default_factory=list)
    scores: dict[str, list[dict]] = field(default_factory=dict)

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

    def caption(self) -> str:
        scores = [f"{label}: {self.score_line(title)}" for label, title in
                  (("before" if self.kind == "drag" else "unguided", UNGUIDED_SCORE), ("after" if self.kind == "drag" else "guided", GUIDED_SCORE))
                  if title in self.scores]
        notes = [WORLD_NOTE] if self.kind.startswith("world_") else [NOISE, FITTED]
        parts = [WHAT_TO_LOOK_FOR[self.kind], *scores, *notes]
        return " ".join(p if p.endswith(".") else p + "." for p in parts)


PANEL_ORDER = (TARGET_MAP, REFERENCE_VIEW, NO_DRAG_VIEW, UNGUIDED_VIEW, GUIDED_VIEW, LOSS_PLOT)


def ordered(images: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Images in reading order: target or reference, unguided, guided, the loss plot; others after."""
    rank = {title: i for i, title in enumerate(PANEL_ORDER)}
    return sorted(images, key=lambda item: rank.get(item[0], len(PANEL_ORDER)))


def panel_png(panel: Panel, folder: str, cell: int = 192) -> str:
    """The panel as one PNG (images side by side, each `cell` high, with their titles and scores); its file name."""
    from PIL import Image, ImageDraw

    pictures = []
    for title, name in ordered(panel.images):
        picture = Image.open(os.path.join(folder, name)).convert("RGB")
        width = round(picture.width * cell / picture.height)
        pictures.append((title, picture.resize((width, cell), Image.NEAREST if picture.height < cell else Image.BILINEAR)))
    sheet = Image.new("RGB", (8 + sum(p.width + 8 for _, p in pictures), cell + 90), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), panel.workflow, fill=(240, 240, 240))
    x = 8
    for title, picture in pictures:
        sheet.paste(picture, (x, 24))
        draw.text((x, 28 + cell), title, fill=(220, 220, 220))
        lines = textwrap.wrap(panel.score_line(panel.score_title(title)), max(12, picture.width // 6))
        for row, line in enumerate(lines[:2]):
            draw.text((x, 44 + cell + 14 * row), line, fill=(160, 220, 160))
        x += picture.width + 8
    name = f"panel_{os.path.splitext(panel.workflow)[0]}.png"
    sheet.save(os.path.join(folder, name))
    return name


def write_page(panels: list[Panel], folder: str) -> str:
    """output/index.html: every panel's images with their titles, and its caption."""
    blocks = []
    for panel in panels:
        figures = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(title)}"><figcaption>'
                          f"{html.escape(title)}<br><b>{html.escape(panel.score_line(panel.score_title(title)))}</b>"
                          "</figcaption></figure>" for title, name in ordered(panel.images))
        blocks.append(f'<section class="panel"><h2>{html.escape(panel.workflow)}</h2><div class="images">{figures}</div>'
                      f'<p class="caption">{html.escape(panel.caption())}</p></section>')
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Readout Guidance demo</title><style>"
            "body{font-family:sans-serif;background:#18181c;color:#ddd;margin:24px}"
            ".images{display:flex;gap:12px;flex-wrap:wrap}figure{margin:0}"
            "img{height:192px;width:auto;image-rendering:pixelated;background:#000}"
            "img[alt='" + LOSS_PLOT + "']{image-rendering:auto}figcaption{max-width:192px}b{color:#9d9}"
            ".caption{max-width:60em}</style></head><body><h1>Readout Guidance demo: what guidance did</h1>"
            f"<p>{html.escape(NOISE)}</p><p><a href='contact_sheet.png'>All images</a></p>"
            + "".join(blocks) + "</body></html>")
    path = os.path.join(folder, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    with open(os.path.join(folder, "panels.json"), "w", encoding="utf-8") as f:
        json.dump([asdict(panel) for panel in panels], f, indent=1)
    return path


def main(folder: str) -> None:
    """Rebuild the panels and the page from a demo folder's panels.json (after editing captions or layout)."""
    with open(os.path.join(folder, "panels.json"), encoding="utf-8") as f:
        panels = [Panel(**{**item, "images": [tuple(i) for i in item["images"]]}) for item in json.load(f)]
    for panel in panels:
        print(panel_png(panel, folder))
    print(write_page(panels, folder))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.dirname(__file__)), "output"))
