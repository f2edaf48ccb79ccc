"""Training heads inside ComfyUI: dataset nodes fed by any node's images, Train Readout Head on the graph's model,
cancel and resume, and the head used for guidance, on the tiny checkpoints."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import REPO, call_node, node_class, node_output, pack_module, schema_inputs

dataset_folder = pack_module("readout.train.dataset_folder")
warps = pack_module("readout.train.warps")
in_graph = pack_module("readout.train.in_graph")
DataError = pack_module("readout.train.data").DataError
SIZE = 64


@pytest.fixture
def folders(model_folders):
    """models/readout_heads and models/readout_datasets redirected to fresh folders (the tiny heads stay listed)."""
    return model_folders


def shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE batches of bright rectangles on dark backgrounds and their outlines (an edge map)."""
    rng = np.random.default_rng(seed)
    images, edges = torch.zeros(count, SIZE, SIZE, 3), torch.zeros(count, SIZE, SIZE, 3)
    for index in range(count):
        x0, y0 = (int(v) for v in rng.integers(4, 28, 2))
        x1, y1 = x0 + int(rng.integers(16, 32)), y0 + int(rng.integers(16, 32))
        images[index] = torch.tensor(rng.uniform(0, 0.3, 3), dtype=torch.float32)
        images[index, y0:y1, x0:x1] = torch.tensor(rng.uniform(0.6, 1, 3), dtype=torch.float32)
        edges[index, y0:y1, x0:x1] = 1
        edges[index, y0 + 2:y1 - 2, x0 + 2:x1 - 2] = 0
    return images, edges


def spatial_dataset(name: str, count: int = 6, seed: int = 0, kind: str = "edge"):
    images, labels = shapes(count, seed)
    return call_node("ReadoutSpatialDataset", images=images, labels=labels, dataset_name=name, kind=kind)[0]


def test_spatial_dataset_appends_across_runs_and_shows_the_count(folders):
    images, labels = shapes(5, seed=1)
    first = node_output("ReadoutSpatialDataset", images=images[:3], labels=labels[:3], dataset_name="edges",
                        kind="edge")
    second = node_output("ReadoutSpatialDataset", images=images[3:], labels=labels[3:], dataset_name="edges",
                         kind="edge")
    assert "3 edge example(s)" in first["ui"]["text"][0] and "5 edge example(s)" in second["ui"]["text"][0]
    folder = second["result"][0]
    assert folder.path == str(folders / "readout_datasets" / "edges") and folder.count == 5
    examples = folder.training_set(SIZE)
    assert len(examples) == 5
    for index in range(5):  # what the trainer reads is what the nodes were given (8-bit PNG rounding)
        torch.testing.assert_close(examples[index].image, images[index].permute(2, 0, 1), atol=1 / 255, rtol=0)
        torch.testing.assert_close(examples[index].target, labels[index].permute(2, 0, 1), atol=1 / 255, rtol=0)


@pytest.mark.parametrize("case", ["count", "size", "kind", "name"])
def test_spatial_dataset_refuses_bad_input_by_name(folders, case):
    images, labels = shapes(3, seed=2)
    inputs = {"images": images, "labels": labels, "dataset_name": "refused", "kind": "edge"}
    if case == "count":
        inputs["labels"], message = labels[:2], "labels: 2 image(s) for 3 images"
    elif case == "size":
        inputs["labels"] = F.interpolate(labels.movedim(-1, 1), size=(32, 32)).movedim(1, -1)
        message = "labels: 32x32 px but the images are 64x64"
    elif case == "kind":
        spatial_dataset("refused", kind="depth")
        message = "dataset_name: 'refused' holds depth examples, not edge"
    else:
        inputs["dataset_name"], message = "../outside", "dataset_name: '../outside' is not a usable name"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_node("ReadoutSpatialDataset", **inputs)
    assert not (folders / "outside").exists()


def textured_image(seed: int) -> torch.Tensor:
    """A smooth random (H, W, 3) image, so that every position has its own colour."""
    coarse = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=True)[0].permute(1, 2, 0).clamp(0, 1)


def bilinear(image: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The (H, W, C) image at (P, 2) pixel positions."""
    height, width = image.shape[:2]
    grid = (points / torch.tensor([width - 1, height - 1]) * 2 - 1)[None, None]
    return F.grid_sample(image.permute(2, 0, 1)[None], grid, align_corners=True)[0, :, 0].T


@pytest.mark.parametrize("mode", warps.WARP_MODES)
def test_warped_pairs_have_exact_matches(mode):
    image = textured_image(3)
    pair = warps.random_warped_pair(image, mode, 0.8, 64, torch.Generator().manual_seed(5))
    assert len(pair.points_a) == 64 and not torch.equal(pair.image_a, pair.image_b)
    moved = (pair.points_a - pair.points_b).norm(dim=1)
    assert moved.max() > 2, "the warp should move content"
    # the warped image at each point shows the source image at its match
    torch.testing.assert_close(pair.image_b[pair.points_b[:, 1].long(), pair.points_b[:, 0].long()],
                               bilinear(image, pair.points_a), atol=2e-3, rtol=0)
    assert ((pair.points_a >= 0) & (pair.points_a <= SIZE - 1)).all()


def test_correspondence_dataset_from_warps_and_from_frames(folders):
    images = torch.stack([textured_image(seed) for seed in range(2)])
    warped = call_node("ReadoutCorrespondenceDataset", images=images, dataset_name="pairs", warp="perspective",
                       strength=0.5, pairs_per_image=3, points_per_pair=16, seed=0)[0]
    assert warped.count == 6
    points = json.dumps([{"source": [10, 12], "target": [14, 12]}, {"source": [40, 40], "target": [44, 41]}])
    framed = call_node("ReadoutCorrespondenceDataset", images=images, dataset_name="pairs", warp="affine",
                       strength=0.5, pairs_per_image=1, points_per_pair=16, seed=0, second_images=images.flip(0),
                       points=points)[0]
    examples = framed.training_set(SIZE)
    assert framed.count == 8 and len(examples) == 8
    assert examples[7].points_a.tolist() == [[10, 12], [40, 40]] and examples[7].points_b.tolist() == [[14, 12],
                                                                                                     [44, 41]]
    with pytest.raises(ValueError, match=r"points: pair 1 target \(70, 12\) is outside the 64x64"):
        call_node("ReadoutCorrespondenceDataset", images=images, dataset_name="pairs", warp="affine", strength=0.5,
                  pairs_per_image=1, points_per_pair=16, seed=0, second_images=images,
                  points='[{"source": [10, 12], "target": [70, 12]}]')
    with pytest.raises(ValueError, match="points: they match a first and a second frame; connect second_images"):
        call_node("ReadoutCorrespondenceDataset", images=images, dataset_name="pairs", warp="affine", strength=0.5,
                  pairs_per_image=1, points_per_pair=16, seed=0, points=points)
    assert framed.count == 8, "a refused run adds nothing"


def test_triplet_dataset_takes_the_next_anchor_as_negative(folders):
    anchors = torch.stack([textured_image(seed) for seed in range(3)])
    folder = call_node("ReadoutTripletDataset", anchors=anchors, positives=anchors * 0.9, dataset_name="looks",
                       kind="appearance")[0]
    example = folder.training_set(SIZE)[2]
    torch.testing.assert_close(example.negative, anchors[0].permute(2, 0, 1), atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="negatives: not connected and only 1 anchor"):
        call_node("ReadoutTripletDataset", anchors=anchors[:1], positives=anchors[:1], dataset_name="looks",
                  kind="appearance")


def train(tiny, dataset, head_name: str = "graph_edge", steps: int = 4, **options) -> dict:
    model, clip, vae = tiny
    inputs = {"kind": "edge", "learning_rate": 1e-3, "batch_size": 2, "resolution": SIZE, "seed": 0,
              "projection_dim": 128, "validation_fraction": 0.2, **options}
    return node_output("TrainReadoutHead", model=model, vae=vae, clip=clip, dataset=dataset, head_name=head_name,
                       steps=steps, **inputs)


@pytest.mark.every_comfyui
def test_train_node_writes_a_listed_head_that_guides(folders, tiny):
    dataset = spatial_dataset("train_edges", count=6)
    out = train(tiny, dataset, steps=4)
    head, plot = out["result"]
    path = folders / "readout_heads" / "graph_edge.safetensors"
    assert path.is_file() and (folders / "readout_heads" / "graph_edge.state.pt").is_file()
    assert head.config.kind == "edge" and head.config.family == "sd15" and head.name == "graph_edge.safetensors"
    listed = schema_inputs("LoadReadoutHead")["head_name"].options
    assert "graph_edge.safetensors" in listed and "graph_edge.state.pt" not in listed
    assert plot.shape == (1, 256, 512, 3)
    text = out["ui"]["text"][0]
    assert "edge head, step 4, trained on 6 example(s) of train_edges" in text and "validation loss" in text
    state = torch.load(folders / "readout_heads" / "graph_edge.state.pt", weights_only=True)
    assert [s for s, _ in state["train_losses"]] == [1, 2, 3, 4]
    loaded = call_node("LoadReadoutHead", head_name="graph_edge.safetensors")[0]
    for name, tensor in head.patcher.model.state_dict().items():
        torch.testing.assert_close(loaded.patcher.model.state_dict()[name], tensor)
    model, clip, vae = tiny
    images, edges = shapes(1, seed=9)
    readout = call_node("ExtractReadout", model=model, vae=vae, head=head, timestep=-1, seed=0, image=images,
                        clip=clip)[1]
    assert readout.head_name == "graph_edge.safetensors" and bool(torch.isfinite(readout.tensor).all())


def test_cancel_saves_the_state_and_queueing_again_resumes(folders, tiny, monkeypatch):
    """Cancel (ComfyUI's interrupt) after step 3 of 6 keeps the state; the next run continues to step 6 and ends
    with the same head as a run that was never cancelled."""
    import comfy.model_management as mm

    dataset = spatial_dataset("cancel_edges", count=6)
    progress = pack_module("readout.train.progress").GraphProgress
    original = progress.__call__

    def cancel_at_3(self, step, steps, loss):
        if step == 3:
            mm.interrupt_current_processing(True)
        original(self, step, steps, loss)

    monkeypatch.setattr(progress, "__call__", cancel_at_3)
    with pytest.raises(mm.InterruptProcessingException):
        train(tiny, dataset, head_name="cancelled", steps=6)
    assert not mm.processing_interrupted(), "ComfyUI clears the flag when it raises"
    state = torch.load(folders / "readout_heads" / "cancelled.state.pt", weights_only=True)
    assert state["step"] == 3
    monkeypatch.setattr(progress, "__call__", original)
    resumed = train(tiny, dataset, head_name="cancelled", steps=6)
    straight = train(tiny, dataset, head_name="straight", steps=6)
    losses = [torch.load(folders / "readout_heads" / f"{n}.state.pt", weights_only=True)["train_losses"]
              for n in ("cancelled", "straight")]
    assert [s for s, _ in losses[0]] == list(range(1, 7))
    np.testing.assert_allclose([v for _, v in losses[0]], [v for _, v in losses[1]], rtol=1e-4)
    for name, tensor in straight["result"][0].patcher.model.state_dict().items():
        torch.testing.assert_close(resumed["result"][0].patcher.model.state_dict()[name], tensor, rtol=1e-4,
                                   atol=1e-5)


def test_start_over_replaces_and_resume_trains_on(folders, tiny):
    dataset = spatial_dataset("more_edges", count=6)
    train(tiny, dataset, head_name="grown", steps=2)
    train(tiny, dataset, head_name="grown", steps=4)
    state = folders / "readout_heads" / "grown.state.pt"
    assert torch.load(state, weights_only=True)["step"] == 4
    train(tiny, dataset, head_name="grown", steps=2, existing="start over")
    assert [s for s, _ in torch.load(state, weights_only=True)["train_losses"]] == [1, 2]


@pytest.mark.parametrize("case", ["empty", "kind", "not_ours", "family", "split"])
def test_train_node_refuses_bad_input_by_name(folders, tiny, case):
    model, clip, vae = tiny
    dataset = spatial_dataset("bad_edges", count=4)
    options: dict = {}
    if case == "empty":
        root = str(folders / "readout_datasets")
        dataset = dataset_folder.DatasetFolder.open(root, "nothing_yet", "edge", create=True)
        message = r"dataset 'nothing_yet' is empty \(0 examples"
    elif case == "kind":
        options["kind"], message = "depth", "dataset / kind: dataset 'bad_edges' holds edge examples, not depth"
    elif case == "not_ours":
        (folders / "readout_heads").mkdir(exist_ok=True)
        (folders / "readout_heads" / "someone_elses.safetensors").write_bytes(b"keep me")
        options["head_name"], message = "someone_elses", "head_name: .* exists and was not trained in the graph"
    elif case == "family":
        from tiny.models import TINY_CHECKPOINTS

        train(tiny, dataset, head_name="sd15_head", steps=1)
        sdxl = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CHECKPOINTS["sdxl"])[:3]
        tiny, options["head_name"] = sdxl, "sd15_head"
        message = r"head_name: training state .* is a edge head for sd15 .* this run trains a edge head for sdxl"
    else:
        options["validation_fraction"], message = 0.9, "4 example\\(s\\) cannot be split .* validation_fraction"
    with pytest.raises(ValueError, match=message):
        train(tiny, dataset, **{"head_name": "refused", **options})
    if case == "not_ours":
        assert (folders / "readout_heads" / "someone_elses.safetensors").read_bytes() == b"keep me"
    assert not (folders / "readout_heads" / "refused.safetensors").exists()


def test_load_readout_dataset_lists_datasets_and_reloads_when_they_grow(folders):
    spatial_dataset("listed", count=2)
    assert "listed" in schema_inputs("LoadReadoutDataset")["dataset_name"].options
    loader = node_class("LoadReadoutDataset")
    before = loader.fingerprint_inputs(dataset_name="listed")
    spatial_dataset("listed", count=2, seed=3)
    assert loader.fingerprint_inputs(dataset_name="listed") != before
    assert call_node("LoadReadoutDataset", dataset_name="listed")[0].count == 4


def test_command_line_trains_on_a_graph_dataset_like_the_node(folders, tiny, comfyui_dir):
    """`python -m readout.train --dataset` reads the folder the nodes built, and with the node's options writes the
    same head as Train Readout Head (one trainer)."""
    import folder_paths

    from helpers import TINY_CKPT

    dataset = spatial_dataset("cli_edges", count=6)
    node_head = train(tiny, dataset, head_name="from_node", steps=3)["result"][0]
    output = folders / "from_cli.safetensors"
    main = pack_module("readout.train.__main__").main
    code = main(["--comfyui", comfyui_dir, "--checkpoint", folder_paths.get_full_path("checkpoints", TINY_CKPT),
                 "--kind", "edge", "--dataset", dataset.path, "--output", str(output), "--steps", "3",
                 "--batch-size", "2", "--lr", "1e-3", "--resolution", str(SIZE), "--projection-dim", "128",
                 "--val-fraction", "0.2", "--checkpoint-every", "0"])
    assert code == 0
    _, cli_weights = pack_module("readout.heads.files").load_head_file(str(output))
    for name, tensor in node_head.patcher.model.state_dict().items():
        torch.testing.assert_close(cli_weights[name], tensor, rtol=1e-4, atol=1e-5)
    assert main(["--checkpoint", "unused", "--kind", "depth", "--dataset", dataset.path, "--output",
                 str(output)]) == 2, "a dataset of another kind is refused before the model loads"


def train_workflow(comfy_server, head_name: str, dataset_name: str, steps: int) -> dict:
    """workflows/train_edge_head.json as an API prompt on the tiny models, with its own head and dataset names."""
    from testbed.tiny_names import fit_for_cpu
    from testbed.workflow_api import ui_to_api

    with open(os.path.join(REPO, "example_workflows", "train_edge_head.json"), encoding="utf-8") as f:
        prompt = fit_for_cpu(ui_to_api(json.load(f), comfy_server.get("/object_info")), SIZE, 4)
    for node in prompt.values():
        if node["class_type"] == "TrainReadoutHead":
            node["inputs"].update(head_name=head_name, steps=steps, projection_dim=128)
        if node["class_type"] == "ReadoutSpatialDataset":
            node["inputs"]["dataset_name"] = dataset_name
    return prompt


@pytest.fixture
def server_files():
    """Names for a head and a dataset in the server's model folders, removed afterwards."""
    import shutil
    import uuid

    import folder_paths

    name = f"rg_test_{uuid.uuid4().hex[:8]}"
    heads, datasets = (folder_paths.get_folder_paths(f)[0] for f in ("readout_heads", "readout_datasets"))
    yield name
    for suffix in (".safetensors", ".state.pt"):
        if os.path.exists(os.path.join(heads, name + suffix)):
            os.remove(os.path.join(heads, name + suffix))
    shutil.rmtree(os.path.join(datasets, name), ignore_errors=True)


def node_of(prompt: dict, class_type: str) -> str:
    return next(key for key, node in prompt.items() if node["class_type"] == class_type)


def test_train_edge_head_workflow_runs_over_http_and_lists_its_head(comfy_server, server_files):
    prompt = train_workflow(comfy_server, server_files, server_files, steps=3)
    entry = comfy_server.run(prompt, timeout=600)
    outputs = entry["outputs"]
    assert f"dataset {server_files}: 16 edge example(s)" in outputs[node_of(prompt, "ReadoutSpatialDataset")]["text"][0]
    report = outputs[node_of(prompt, "TrainReadoutHead")]["text"][0]
    assert f"edge head, step 3, trained on 16 example(s) of {server_files}" in report
    heads = comfy_server.get("/object_info/LoadReadoutHead")["LoadReadoutHead"]["input"]["required"]["head_name"]
    listed = heads[1]["options"] if heads[0] == "COMBO" else heads[0]
    assert f"{server_files}.safetensors" in listed and f"{server_files}.state.pt" not in listed
    datasets = comfy_server.get("/object_info/LoadReadoutDataset")["LoadReadoutDataset"]["input"]["required"]
    spec = datasets["dataset_name"]
    assert server_files in (spec[1]["options"] if spec[0] == "COMBO" else spec[0])
    saved = [image for out in outputs.values() for image in out.get("images", []) if image["type"] == "output"]
    assert saved and os.path.exists(os.path.join(comfy_server.output_dir, saved[0]["subfolder"], saved[0]["filename"]))


def wait_for_end(comfy_server, prompt_id: str, timeout: float = 300) -> dict:
    """The history status of a prompt once it ended, however it ended."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = (comfy_server.get(f"/history/{prompt_id}").get(prompt_id) or {}).get("status", {})
        if status.get("completed") is not None and status.get("status_str") in ("success", "error"):
            return status
        time.sleep(0.25)
    raise AssertionError(f"prompt {prompt_id} did not end in {timeout} s:\n{comfy_server.log_tail()}")


@pytest.mark.every_comfyui
def test_cancel_over_http_keeps_the_state_and_queueing_again_resumes(comfy_server, server_files):
    """The user presses Cancel while the head trains (POST /interrupt, as the editor's button does): the run ends as
    interrupted with the state saved; queueing again continues from that step."""
    import re
    import time

    import folder_paths

    state_path = os.path.join(folder_paths.get_folder_paths("readout_heads")[0], f"{server_files}.state.pt")
    log_start = len(open(comfy_server.log_path, encoding="utf-8", errors="replace").read())
    prompt = train_workflow(comfy_server, server_files, server_files, steps=100_000)
    prompt_id = comfy_server.post("/prompt", {"prompt": prompt, "client_id": "readout-guidance"})["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline:
        log = open(comfy_server.log_path, encoding="utf-8", errors="replace").read()[log_start:]
        if any(int(step) >= 2 for step in re.findall(r"\| *(\d+)/100000 ", log)):
            break
        time.sleep(0.25)
    comfy_server.post("/interrupt", {})
    status = wait_for_end(comfy_server, prompt_id)
    assert "execution_interrupted" in [event for event, _ in status["messages"]]
    stopped = torch.load(state_path, weights_only=True)["step"]
    assert 2 <= stopped < 100_000
    prompt = train_workflow(comfy_server, server_files, server_files, steps=stopped + 2)
    entry = comfy_server.run(prompt, timeout=600)
    assert f"step {stopped + 2}, trained on 16" in entry["outputs"][node_of(prompt, "TrainReadoutHead")]["text"][0]
    losses = torch.load(state_path, weights_only=True)["train_losses"]
    assert [s for s, _ in losses] == list(range(1, stopped + 3))
