"""The example workflows' input images (example_workflows/input/), copied into ComfyUI's input folder so that a
workflow opened from the template browser runs as it is."""
from __future__ import annotations

import logging
import os
import shutil

import folder_paths

EXAMPLE_INPUTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows", "input")


def copy_example_inputs() -> list[str]:
    """Copy each example image that ComfyUI's input folder lacks; never overwrite a file there. Returns the copies."""
    target = folder_paths.get_input_directory()
    copied = []
    try:
        for name in sorted(os.listdir(EXAMPLE_INPUTS)):
            path = os.path.join(target, name)
            if not os.path.exists(path):
                os.makedirs(target, exist_ok=True)
                shutil.copyfile(os.path.join(EXAMPLE_INPUTS, name), path)
                copied.append(path)
    except OSError as error:
        logging.warning("[readout_guidance] the example workflows' images were not copied into %s (%s): copy "
                        "them from %s to run the examples", target, error, EXAMPLE_INPUTS)
    return copied
