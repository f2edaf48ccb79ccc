"""Draw the example input images the example workflows load (a pose map, a depth map, an edge map, a photo, a
portrait, a face mask) into example_workflows/input/, where the pack copies them from into ComfyUI's input folder.

    python -m scripts.example_images
"""
from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFilter

from testbed import REPO

SIZE = 512
LIMBS = [((256, 110), (256, 230)), ((256, 130), (180, 200)), ((180, 200), (140, 150)), ((256, 130), (330, 200)),
         ((330, 200), (380, 250)), ((256, 230), (210, 340)), ((210, 340), (200, 450)), ((256, 230), (300, 340)),
         ((300, 340), (340, 440))]
LIMB_COLORS = [(255, 0, 0), (255, 170, 0), (170, 255, 0), (0, 255, 0), (0, 255, 170), (0, 170, 255), (0, 0, 255),
               (170, 0, 255), (255, 0, 170)]


def pose_map() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for (start, end), color in zip(LIMBS, LIMB_COLORS):
        draw.line([start, end], fill=color, width=10)
    for joint in {p for limb in LIMBS for p in limb}:
        draw.ellipse([joint[0] - 7, joint[1] - 7, joint[0] + 7, joint[1] + 7], fill=(255, 255, 255))
    draw.ellipse([226, 50, 286, 110], outline=(255, 0, 85), width=8)
    return image


def depth_map() -> Image.Image:
    image = Image.linear_gradient("L").resize((SIZE, SIZE)).point(lambda v: 40 + v // 3)
    draw = ImageDraw.Draw(image)
    draw.ellipse([150, 180, 360, 390], fill=230)
    draw.rectangle([40, 300, 140, 500], fill=170)
    return image.filter(ImageFilter.GaussianBlur(6)).convert("RGB")


def edge_map() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    draw.polygon([(120, 420), (120, 220), (256, 110), (392, 220), (392, 420)], outline=(255, 255, 255), width=3)
    draw.rectangle([220, 320, 292, 420], outline=(255, 255, 255), width=3)
    draw.line([(0, 440), (512, 430)], fill=(255, 255, 255), width=3)
    return image


def photo() -> Image.Image:
    image = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 360, 512, 512], fill=(120, 80, 50))
    draw.ellipse([170, 150, 350, 380], fill=(230, 140, 40))
    draw.ellipse([215, 90, 305, 180], fill=(240, 160, 60))
    draw.polygon([(220, 110), (230, 60), (250, 100)], fill=(200, 110, 30))
    draw.polygon([(270, 100), (290, 60), (300, 110)], fill=(200, 110, 30))
    return image.filter(ImageFilter.GaussianBlur(2))


def portrait() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (70, 90, 120))
    draw = ImageDraw.Draw(image)
    draw.rectangle([150, 380, 362, 512], fill=(40, 40, 60))
    draw.ellipse([176, 110, 336, 330], fill=(225, 180, 150))
    draw.ellipse([210, 190, 235, 205], fill=(40, 30, 30))
    draw.ellipse([277, 190, 302, 205], fill=(40, 30, 30))
    draw.arc([225, 240, 287, 290], 20, 160, fill=(150, 60, 60), width=5)
    draw.chord([170, 80, 342, 200], 180, 360, fill=(60, 40, 30))
    return image.filter(ImageFilter.GaussianBlur(1))


def face_mask() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    ImageDraw.Draw(image).ellipse([176, 110, 336, 330], fill=(255, 255, 255))
    return image


EXAMPLES = {
    "readout_example_pose.png": pose_map, "readout_example_depth.png": depth_map,
    "readout_example_edge.png": edge_map, "readout_example_photo.png": photo,
    "readout_example_portrait.png": portrait, "readout_example_face_mask.png": face_mask,
}


def write_example_images(folder: str = os.path.join(REPO, "example_workflows", "input")) -> None:
    """Draw every example image into the pack's example inputs folder."""
    os.makedirs(folder, exist_ok=True)
    for name, draw in EXAMPLES.items():
        draw().save(os.path.join(folder, name), optimize=True)


if __name__ == "__main__":
    write_example_images()
