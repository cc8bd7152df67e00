"""Self-configuring segmentation: plan from the data, train, resume, predict on the source grid.

Training runs a few iterations on the four bundled hippocampus cases and four Kvasir frames
(real data); the accuracy of the shipped models is in their model cards, not tested here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_runner import run_cli

from medlens.data.patches import LoadedCase
from medlens.data.segmentation import (
    Fingerprint,
    compute_fingerprint,
    find_cases,
    read_case_label,
)
from medlens.data.splits import make_split
from medlens.errors import MedlensError
from medlens.infer.segmentation import dice_per_class
from medlens.io import read_image
from medlens.models.segmentation import SegmentationPlan, make_plan
from medlens.models.zoo import load_model
from medlens.train.transfer import parameter_groups
from medlens.train.validation import validate


def fingerprint_of(folder: Path) -> Fingerprint:
    """The data fingerprint of an example folder (images and labels read as training does)."""
    cases = find_cases(folder)
    images = [read_image(c.image) for c in cases]
    return compute_fingerprint(images, [read_case_label(c.label) for c in cases])


def train(data: Path, out: Path, *extra: str) -> int:
    return run_cli(
        ["train", "seg", str(data), "--out", str(out), "--threads", "1", "--val-every", "2",
         "--checkpoint-minutes", "0", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def hippocampus_run(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    out = tmp_path_factory.mktemp("hippo") / "run"
    code = train(
        examples / "hippocampus", out, "--iterations", "2", "--batch-size", "2",
        "--labels", "1=anterior,2=posterior", "--val-cases", "hippocampus_001",
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def polyp_run(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Path:
    out = tmp_path_factory.mktemp("polyp") / "run"
    code = train(
        examples / "kvasir", out, "--iterations", "2", "--batch-size", "2", "--labels", "1=polyp"
    )
    assert code == 0
    return out


# --------------------------------------------------------------------------- plan
def test_plan_for_hippocampus_is_3d_zscore_whole_volume_patch(examples: Path) -> None:
    plan = make_plan(fingerprint_of(examples / "hippocampus"))
    assert plan.dims == 3 and plan.in_channels == 1
    assert plan.normalisation["scheme"] == "zscore"  # MRI: per-image z-score
    assert plan.spacing_mm is None  # all cases are 1 mm: no resampling
    total_stride = np.prod(np.array(plan.strides), axis=0)
    assert all(p % s == 0 for p, s in zip(plan.patch_size, total_stride, strict=True))
    # the patch covers a whole median case (~35x50x35)
    assert all(p >= s for p, s in zip(plan.patch_size, (35, 50, 35), strict=True))
    assert sorted(plan.labels) == [0, 1, 2]
    assert 2 in plan.largest_component  # the posterior part is one blob in every case
    assert plan.test_time_mirroring  # predict mirrors 3D inputs by default, as nnU-Net


def test_plan_for_kvasir_is_2d_rgb_with_pretrained_encoder(examples: Path) -> None:
    cases = find_cases(examples / "kvasir")
    images = [read_image(c.image) for c in cases]
    labels = [read_case_label(c.label) for c in cases]
    assert set(np.unique(labels[0]).tolist()) == {0, 1}  # JPEG masks thresholded
    plan = make_plan(compute_fingerprint(images, labels))
    assert plan.dims == 2 and plan.in_channels == 3
    assert plan.network == "Lite0UNet"
    assert plan.normalisation["scheme"] == "rgb"
    assert plan.patch_size == [256, 256]
    assert not plan.test_time_mirroring  # mirror TTA measured worse on Kvasir frames
    assert plan.frame_size == [256, 256]  # other cameras' frames are resized to this


def test_frame_size_is_2d_only_and_can_be_set_or_switched_off(examples: Path) -> None:
    from medlens.errors import MedlensError

    fingerprint = fingerprint_of(examples / "kvasir")
    assert make_plan(fingerprint, frame_size=None).frame_size is None  # nnU-Net: own size
    plan = make_plan(fingerprint, frame_size=[300, 350])  # rounded up to the stride of 32
    assert plan.frame_size == [320, 352] and plan.patch_size == [320, 352]
    volumes = fingerprint_of(examples / "hippocampus")
    assert make_plan(volumes).frame_size is None
    with pytest.raises(MedlensError, match="2D data only"):
        make_plan(volumes, frame_size=[64, 64])


# --------------------------------------------------------------------------- training
def test_masks_saved_as_pictures_keep_their_classes_and_odd_grey_levels_are_refused(
    tmp_path: Path,
) -> None:
    import cv2

    def saved(name: str, mask: np.ndarray) -> Path:
        path = tmp_path / name
        cv2.imwrite(str(path), mask)
        return path

    classes = np.zeros((40, 40), np.uint8)
    classes[5:15, 5:15], classes[20:30, 20:30] = 1, 2  # nnU-Net's 2D labels: indices 0..N
    assert set(np.unique(read_case_label(saved("classes.png", classes)))) == {0, 1, 2}
    binary = np.where(classes > 0, 255, 0).astype(np.uint8)
    assert set(np.unique(read_case_label(saved("binary.png", binary)))) == {0, 1}
    blurred = saved("binary.jpg", binary)  # JPEG edges: thresholded at 128
    assert set(np.unique(read_case_label(blurred))) == {0, 1}
    edged = binary.copy()
    edged[5, 5:9] = 200  # a few anti-aliased pixels of a resized mask
    assert read_case_label(saved("edged.png", edged))[5, 5] == 1  # (I, J): column 5, row 5
    grey_coded = np.where(classes == 1, 128, np.where(classes == 2, 255, 0)).astype(np.uint8)
    with pytest.raises(MedlensError, match="grey levels besides 0 and 255 .e.g. 128"):
        read_case_label(saved("grey.png", grey_coded))  # a threshold would merge two classes


def test_plan_only_writes_the_plan_and_trains_nothing(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(examples / "hippocampus", run, "--plan-only") == 0
    assert sorted(p.name for p in run.iterdir()) == ["fingerprint.json", "plan.json", "split.json"]
    printed = capsys.readouterr().out
    assert "plan: 3D DynUNet" in printed and "deep supervision: on" in printed
    planned = json.loads((run / "plan.json").read_text())
    # the run itself then trains on the plan it showed
    assert train(examples / "hippocampus", run, "--iterations", "1") == 0
    assert json.loads((run / "plan.json").read_text()) == planned
    assert (run / "checkpoint.pt").is_file()


def test_a_run_trains_on_an_edited_plan_or_a_shipped_models_plan(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(examples / "hippocampus", tmp_path / "planned", "--plan-only") == 0
    plan = json.loads((tmp_path / "planned" / "plan.json").read_text())
    plan["patch_size"], plan["batch_size"] = [32, 48, 32], 2  # as a user edits plans.json
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(plan))
    run = tmp_path / "run"
    assert train(examples / "hippocampus", run, "--plan", str(edited), "--iterations", "1") == 0
    trained = json.loads((run / "plan.json").read_text())
    assert trained["patch_size"] == [32, 48, 32] and trained["batch_size"] == 2
    # a shipped model's plan, by name: its labels and patch
    shipped = tmp_path / "shipped"
    assert train(examples / "hippocampus", shipped, "--plan", "hippocampus", "--plan-only") == 0
    planned = json.loads((shipped / "plan.json").read_text())
    assert planned["labels"] == {"0": "background", "1": "anterior", "2": "posterior"}

    # refused before the run folder is written: other data, or options the plan fixes
    capsys.readouterr()
    assert train(examples / "kvasir", tmp_path / "a", "--plan", "hippocampus") == 2
    assert "the plan is for 3D images with 1 channel(s), the data is 2D with 3" in (
        capsys.readouterr().err
    )
    assert train(examples / "hippocampus", tmp_path / "b", "--plan", str(edited), "--patch",
                 "16x16x16") == 2  # fmt: skip
    assert "--plan fixes what --patch would set" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_training_writes_plan_log_checkpoint_and_loadable_model(hippocampus_run: Path) -> None:
    plan = json.loads((hippocampus_run / "plan.json").read_text())
    assert plan["dims"] == 3
    split = json.loads((hippocampus_run / "split.json").read_text())
    assert "hippocampus_001" in split["val"] and "hippocampus_001" not in split["train"]
    log = (hippocampus_run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and log[-1].startswith("2,")
    assert (hippocampus_run / "training.png").stat().st_size > 1000
    checkpoint = torch.load(hippocampus_run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 2
    network, card = load_model(hippocampus_run / "model")
    assert card.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert card.training["command"].startswith("medlens train seg")
    assert "mean_dice" in card.metrics["validation"]
    assert sum(p.numel() for p in network.parameters()) > 100_000


def test_resume_continues_from_the_saved_iteration(hippocampus_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(hippocampus_run, run)
    code = train(Path("unused-when-resuming"), run, "--iterations", "3", "--resume")
    assert code == 2  # the data folder is still needed to load the cases
    examples = Path(__file__).resolve().parents[1] / "examples"
    assert train(examples / "hippocampus", run, "--iterations", "3", "--resume") == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 3
    assert (run / "log.csv").read_text().splitlines()[-1].startswith("3,")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--iterations", "0"], "--iterations must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--val-every", "0"], "--val-every must be at least 1"),
        (["--fold", "0", "--folds", "1"], "--folds must be at least 2"),
        (["--val-fraction", "1"], "--val-fraction must be in (0, 1)"),
        (["--ema-decay", "1"], "--ema-decay must be in (0, 1)"),
    ],
)
def test_options_out_of_range_are_refused_before_any_work(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option, message
) -> None:
    assert train(examples / "hippocampus", tmp_path / "run", *option) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--patch", "32x32"], "--patch 32x32 does not fit 3D data"),
        (["--init", "polyp"], "no layer of model 'polyp' fits this network"),
    ],
)
def test_a_plan_that_cannot_train_is_refused_before_the_run_folder_is_written(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option, message
) -> None:
    assert train(examples / "hippocampus", tmp_path / "run", *option) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["polyp", "--batch-size", "0"], "--batch-size"),
        (["polyp", "--tta-axes", "x"], "--tta-axes takes integers"),
        (["kidney-stones"], "is a detection model, not a segmentation model; run it with"),
    ],
)
def test_predict_refuses_bad_options_and_a_detector_in_one_line(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message
) -> None:
    frame = sorted((examples / "kvasir" / "images").glob("*.jpg"))[0]
    out = tmp_path / "mask.png"
    assert run_cli(["predict", args[0], str(frame), str(out), *args[1:]]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_finished_run_is_neither_replaced_nor_resumed_on_other_data(
    hippocampus_run: Path, examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(hippocampus_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    assert train(examples / "hippocampus", run, "--iterations", "3") == 2
    assert "already has a checkpoint; pass --resume" in capsys.readouterr().err
    assert train(examples / "kvasir", run, "--iterations", "6", "--resume") == 2
    assert "the run was trained on" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_ema_decay_validates_and_ships_the_moving_average(examples: Path, tmp_path: Path) -> None:
    """With ``--ema-decay`` the shipped weights are the checkpoint's averaged weights, not the
    last step's, and the card says so."""
    out = tmp_path / "ema"
    code = train(
        examples / "hippocampus", out, "--iterations", "3", "--batch-size", "2", "--lr", "0.01",
        "--labels", "1=anterior,2=posterior", "--val-cases", "hippocampus_001",
        "--ema-decay", "0.5", "--val-every", "3",
    )  # fmt: skip
    assert code == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    network, card = load_model(out / "model")
    assert card.training["ema_decay"] == 0.5
    shipped = network.state_dict()
    averaged = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items()}
    name = next(k for k, v in shipped.items() if v.is_floating_point() and v.numel() > 100)
    assert torch.equal(shipped[name], averaged[name])
    assert not torch.equal(shipped[name], checkpoint["model"][name])


def _torchrun_train(examples: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2 -m medlens train seg`` for two iterations of the demo."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", port, "-m", "medlens", "train", "seg",
        str(examples / "hippocampus"), "--out", str(out), "--iterations", "2",
        "--batch-size", "1", "--threads", "1", "--val-every", "2", "--checkpoint-minutes", "0",
        "--labels", "1=anterior,2=posterior", "--val-cases", "hippocampus_001", *extra,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def test_torchrun_trains_with_two_processes_and_one_writer(examples: Path, tmp_path: Path) -> None:
    """``torchrun -m medlens train seg`` runs DDP (gloo on CPU): both ranks train, rank 0
    alone validates and writes the model, whose card records the two processes."""
    done = _torchrun_train(examples, tmp_path / "ddp", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((tmp_path / "ddp" / "model" / "model.json").read_text())
    assert card["training"]["processes"] == 2
    assert card["training"]["distributed_backend"] == "gloo"
    assert card["training"]["iteration"] == 2
    assert done.stdout.count("iteration 2:") == 1  # one validation line: rank 0 only
    load_model(tmp_path / "ddp" / "model")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torchrun_on_cuda_shares_a_gpu_with_gloo_and_nccl_asks_for_one_gpu_per_process(
    examples: Path, tmp_path: Path
) -> None:
    """Two DDP processes on the GPU(s): gloo may share one GPU; NCCL with more processes
    than GPUs stops with a hint instead of NCCL's "duplicate GPU" failure."""
    done = _torchrun_train(
        examples, tmp_path / "gloo", "--device", "cuda", "--dist-backend", "gloo"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    card = json.loads((tmp_path / "gloo" / "model" / "model.json").read_text())
    assert card["training"]["processes"] == 2 and card["training"]["device"].startswith("cuda")
    assert card["training"]["distributed_backend"] == "gloo"
    assert card["training"]["precision"] == "fp16 AMP"
    load_model(tmp_path / "gloo" / "model")
    done = _torchrun_train(examples, tmp_path / "nccl", "--device", "cuda")
    if torch.cuda.device_count() >= 2:  # one GPU per process: NCCL trains
        assert done.returncode == 0, done.stderr[-2000:]
        card = json.loads((tmp_path / "nccl" / "model" / "model.json").read_text())
        assert card["training"]["distributed_backend"] == "nccl"
    else:
        assert done.returncode != 0
        assert "--dist-backend gloo" in done.stderr + done.stdout


def test_2d_images_masks_folder_trains(polyp_run: Path) -> None:
    network, card = load_model(polyp_run / "model")
    assert card.architecture["name"] == "Lite0UNet"
    assert card.input["dims"] == 2 and card.labels[1] == "polyp"
    assert "ImageNet" in card.training["init"]
    # beside the best model, RUN/last holds the weights of the last validation (not picked)
    _, last = load_model(polyp_run / "last")
    assert last.training["selection"].startswith("the latest validated weights")
    assert last.training["iteration"] == 2 and card.training["selection"].startswith("the iter")
    # four different polyps: no val frame is a near-duplicate of a training frame
    assert card.training["split"]["val_near_duplicates"].startswith("0 of 1 val frames")


def test_the_seed_reproduces_a_run_on_the_cpu(
    polyp_run: Path, examples: Path, tmp_path: Path
) -> None:
    """``--seed`` fixes the new layers' initialisation as well as the split, the patches and
    the augmentation: the same command on the CPU writes the same weights."""
    from safetensors.torch import load_file

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return load_file(str(run / "last" / "model.safetensors"))

    same_args = ["--iterations", "2", "--batch-size", "2", "--labels", "1=polyp"]
    assert train(examples / "kvasir", tmp_path / "again", *same_args) == 0
    assert train(examples / "kvasir", tmp_path / "other", *same_args, "--seed", "1") == 0
    first, again, other = (weights(r) for r in (polyp_run, tmp_path / "again", tmp_path / "other"))
    assert all(torch.equal(first[name], again[name]) for name in first)
    decoder = [name for name in first if "decoder" in name]
    assert decoder and not all(torch.equal(first[name], other[name]) for name in decoder)


def test_a_val_frame_duplicated_in_train_is_reported_and_group_similar_keeps_the_pair_together(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A frame exported twice under two names must not validate the frame it trained on."""
    data = tmp_path / "data"
    shutil.copytree(examples / "kvasir", data)
    frame = sorted((data / "images").iterdir())[0]
    for kind in ("images", "masks"):  # the copy is re-encoded, as a second export would be
        pixels = cv2.imread(str(data / kind / frame.name))
        cv2.imwrite(str(data / kind / "copy.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 80])
    out = tmp_path / "run"
    code = train(
        data, out, "--iterations", "1", "--batch-size", "2", "--labels", "1=polyp",
        "--val-cases", "copy", "--no-pretrained",
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 of 2 validation images have a near-duplicate" in printed
    assert "--group-similar keeps near-duplicate frames on one side" in printed  # the remedy
    card = json.loads((out / "model" / "model.json").read_text())
    assert card["training"]["split"]["val_near_duplicates"].startswith("1 of 2 val frames")

    # the remedy: --group-similar moves the twin to validation with its copy
    grouped = tmp_path / "grouped"
    code = train(
        data, grouped, "--iterations", "1", "--batch-size", "2", "--labels", "1=polyp",
        "--val-cases", "copy", "--no-pretrained", "--group-similar",
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "split by similar-frame groups: 4 groups of 5 frames" in printed
    assert "near-duplicate among the training images" not in printed
    split = json.loads((grouped / "split.json").read_text())
    assert {"copy", frame.stem} <= set(split["val"])
    assert split["similar_frame_groups"]["copy"] == split["similar_frame_groups"][frame.stem]
    card = json.loads((grouped / "model" / "model.json").read_text())
    assert card["training"]["split"]["val_near_duplicates"].startswith("0 of 3 val frames")
    assert "--group-similar" in card["training"]["command"]


def test_label_with_classes_not_in_the_plan_is_refused(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(examples / "hippocampus", data)
    bad = data / "labelsTr" / "hippocampus_003.nii.gz"
    label = read_image(bad)
    values = label.numpy().copy()
    values[0, 0, 0, 0] = 5
    from medlens.io import write_image

    write_image(label.with_array(values), bad)
    code = train(data, tmp_path / "run", "--iterations", "1", "--labels", "1=a,2=p")
    assert code == 2
    error = capsys.readouterr().err
    assert "hippocampus_003.nii.gz" in error and "[5]" in error


def test_a_mask_of_another_size_than_its_frame_is_refused_by_name(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(examples / "kvasir", data)
    mask = sorted((data / "masks").iterdir())[1]
    pixels = cv2.imread(str(mask))
    cv2.imwrite(str(mask), pixels[:-8])
    code = train(data, tmp_path / "run", "--iterations", "1", "--labels", "1=polyp")
    assert code == 2
    error = capsys.readouterr().err
    assert mask.name in error and "differs from image shape" in error
    assert not (tmp_path / "run").exists()


def test_k_fold_split_and_transfer_learning(
    hippocampus_run: Path, examples: Path, tmp_path: Path
) -> None:
    code = train(
        examples / "hippocampus", tmp_path / "fold1", "--iterations", "1", "--batch-size", "2",
        "--fold", "1", "--folds", "4", "--init", str(hippocampus_run / "model"),
        "--freeze-encoder-epochs", "1", "--augment", "medlens",
    )  # fmt: skip
    assert code == 0
    split = json.loads((tmp_path / "fold1" / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 3 and split["fold"] == 1
    # a second stage on that split (--split) records the same fold, in split.json and the card
    code = train(
        examples / "hippocampus", tmp_path / "fold1-stage2", "--iterations", "1",
        "--batch-size", "2", "--split", str(tmp_path / "fold1" / "split.json"),
    )  # fmt: skip
    assert code == 0
    stage2 = tmp_path / "fold1-stage2"
    assert json.loads((stage2 / "split.json").read_text())["fold"] == 1
    assert (
        json.loads((stage2 / "model" / "model.json").read_text())["training"]["split"]["fold"] == 1
    )


def test_split_file_fixes_the_cases_and_names_what_is_wrong(
    hippocampus_run: Path, examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--split reuses another run's (or a model card's) split; --seed then varies the training."""
    card = hippocampus_run / "model" / "model.json"
    code = train(
        examples / "hippocampus", tmp_path / "again", "--iterations", "1", "--batch-size", "2",
        "--split", str(card), "--seed", "7",
    )  # fmt: skip
    assert code == 0
    first = json.loads((hippocampus_run / "split.json").read_text())
    again = json.loads((tmp_path / "again" / "split.json").read_text())
    assert (again["train"], again["val"]) == (first["train"], first["val"])
    assert again["seed"] == 7
    drawn = make_split(
        sorted(first["train"] + first["val"]), val_fraction=0.2, seed=7, forced_val=[],
        fold=None, folds=5,
    )  # fmt: skip
    assert drawn != (first["train"], first["val"])  # seed 7 alone would draw other cases

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"train": ["hippocampus_001"], "val": ["case_999"]}))
    capsys.readouterr()
    code = train(examples / "hippocampus", tmp_path / "bad", "--split", str(foreign))
    error = capsys.readouterr().err
    assert code == 2 and "case_999" in error and "foreign.json" in error
    assert not (tmp_path / "bad").exists()
    code = train(examples / "hippocampus", tmp_path / "bad", "--split", str(card), "--fold", "1")
    assert code == 2 and "--fold" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict
def test_predict_nifti_folder_writes_labels_on_the_source_grid(
    hippocampus_run: Path, examples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    images = examples / "hippocampus" / "imagesTr"
    assert run_cli(["predict", str(hippocampus_run / "model"), str(images), str(out)]) == 0
    source = read_image(examples / "hippocampus" / "imagesTr" / "hippocampus_003.nii.gz")
    label = read_image(out / "hippocampus_003.nii.gz")
    assert label.same_grid(source)
    assert set(np.unique(label.numpy()).tolist()) <= {0, 1, 2}
    assert len(list(out.iterdir())) == 4


def test_predict_png_frames_keep_their_size_and_names(
    polyp_run: Path, examples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "masks"
    args = ["predict", str(polyp_run / "model"), str(examples / "kvasir" / "images"), str(out)]
    assert run_cli([*args, "--tta"]) == 0
    names = sorted(p.stem for p in (examples / "kvasir" / "images").iterdir())
    assert sorted(p.stem for p in out.iterdir()) == names
    mask = read_image(out / f"{names[0]}.png")
    assert mask.spatial_shape == (256, 256, 1) and set(np.unique(mask.numpy())) <= {0, 255}
    assert run_cli(args) == 2  # outputs exist: refused without --overwrite
    assert run_cli([*args, "--overwrite"]) == 0


def test_predict_averages_an_ensemble_of_models_trained_with_one_plan(
    polyp_run: Path, hippocampus_run: Path, examples: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Several models joined by commas (e.g. the folds of a cross-validation) are one
    ensemble: their probabilities are averaged; models of different plans are refused."""
    other = tmp_path / "seed1"
    code = train(
        examples / "kvasir", other, "--iterations", "2", "--batch-size", "2", "--labels",
        "1=polyp", "--seed", "1",
    )  # fmt: skip
    assert code == 0
    frames = examples / "kvasir" / "images"
    first, second = str(polyp_run / "model"), str(other / "model")
    assert run_cli(["predict", first, str(frames), str(tmp_path / "alone")]) == 0
    twice = ["predict", f"{first},{first}", str(frames), str(tmp_path / "twice")]
    assert run_cli(twice) == 0
    for mask in (tmp_path / "alone").iterdir():  # a model averaged with itself is itself
        assert np.array_equal(
            read_image(mask).numpy(), read_image(tmp_path / "twice" / mask.name).numpy()
        )
    both = ["predict", f"{first},{second}", str(frames), str(tmp_path / "both")]
    assert run_cli([*both, "--html", str(tmp_path / "both.html")]) == 0
    assert len(list((tmp_path / "both").iterdir())) == len(list(frames.iterdir()))
    assert "ensemble of 2" in (tmp_path / "both.html").read_text()

    capsys.readouterr()
    mixed = f"{first},{hippocampus_run / 'model'}"
    assert run_cli(["predict", mixed, str(frames), str(tmp_path / "mixed")]) == 2
    error = capsys.readouterr().err
    assert "differ in their plan's dims" in error and "--fold" in error
    assert not (tmp_path / "mixed").exists()


def test_ensemble_members_see_every_window_and_their_probabilities_are_averaged() -> None:
    from medlens.infer.segmentation import sliding_window_logits

    plan = SegmentationPlan(
        dims=2, in_channels=1, labels={0: "background", 1: "polyp"}, patch_size=[32, 32],
        batch_size=2, spacing_mm=None, normalisation={}, filters=[4, 8],
        kernel_size=[[3, 3]] * 2, strides=[[1, 1], [2, 2]], mirror_axes=[0, 1],
    )  # fmt: skip
    calls: list[str] = []

    def constant(name: str, polyp_logit: float):  # noqa: ANN202
        def network(batch: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            logits = torch.zeros(batch.shape[0], 2, *batch.shape[2:])
            logits[:, 1] = polyp_logit
            return logits

        return network

    members = [constant("a", 2.0), constant("b", -1.0)]
    probabilities = sliding_window_logits(members, torch.zeros(1, 32, 32), plan)
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert torch.allclose(probabilities[1], expected.expand(32, 32), atol=1e-6)
    assert calls == ["a", "b"]
    calls.clear()
    sliding_window_logits(members, torch.zeros(1, 32, 32), plan, tta=True)
    assert sorted(calls) == ["a"] * 4 + ["b"] * 4  # each member, each of the 4 mirrorings


def test_plan_error_leaves_no_run_folder_behind(examples: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = train(examples / "hippocampus", out, "--frame-size", "64x64", "--iterations", "1")
    assert code == 2  # a frame size is for 2D frames: a clear error, not a traceback
    assert not out.exists()


def test_shipped_polyp_model_segments_another_cameras_frame_size_alike(
    examples: Path, tmp_path: Path
) -> None:
    """A 720x576 frame (PAL video) is resized to the plan's frame size (320x320) for the
    network and the mask comes back at 720x576; at its own size the frame would be cut into
    patch-size windows that each see a quarter of the polyp (0.59 mean Dice on 180 Kvasir frames
    at this size, with the 256x256 model of the time)."""
    import cv2

    def dice(mask: np.ndarray, other: np.ndarray) -> float:
        return dice_per_class(mask, other, [True])[0]

    frames = sorted((examples / "kvasir" / "images").glob("*.jpg"))
    for folder in ("as_is", "pal"):
        (tmp_path / folder).mkdir()
    for path in frames:
        frame = cv2.imread(str(path))
        cv2.imwrite(str(tmp_path / "as_is" / f"{path.stem}.png"), frame)
        pal = cv2.resize(frame, (720, 576), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(tmp_path / "pal" / f"{path.stem}.png"), pal)
    for folder in ("as_is", "pal"):
        code = run_cli(
            ["predict", "polyp", str(tmp_path / folder), str(tmp_path / f"{folder}_out")]
        )
        assert code == 0
    agreement, accuracy = [], []
    for path in frames:
        as_is = cv2.imread(str(tmp_path / "as_is_out" / f"{path.stem}.png"), 0) > 0
        pal = cv2.imread(str(tmp_path / "pal_out" / f"{path.stem}.png"), 0)
        assert pal.shape == (576, 720)
        truth = cv2.imread(str(examples / "kvasir" / "masks" / path.name), 0)
        truth = cv2.resize(truth, (720, 576), interpolation=cv2.INTER_LINEAR) > 127
        accuracy.append(dice(pal > 0, truth))
        back = cv2.resize(pal, (256, 256), interpolation=cv2.INTER_NEAREST) > 0
        agreement.append(dice(back, as_is))
    assert min(agreement) > 0.95  # the same mask as the frame at its training size
    assert np.mean(accuracy) > 0.8


def test_shipped_polyp_model_reads_rgba_and_16_bit_exports_of_a_frame_alike(
    examples: Path, tmp_path: Path
) -> None:
    """An RGBA PNG is segmented on its colour channels and a 16-bit PNG on the 8-bit scale the
    model was trained on: the same mask as the JPEG (a 16-bit frame normalised as if it were
    8-bit gave a mask agreeing on 73% of the pixels only)."""
    frame_path = sorted((examples / "kvasir" / "images").glob("*.jpg"))[0]
    frame = cv2.imread(str(frame_path))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "sixteen.png"), frame.astype(np.uint16) * 257)
    masks = {}
    for name, source in (("jpeg", frame_path), ("rgba", None), ("sixteen", None)):
        source = source or tmp_path / f"{name}.png"
        assert run_cli(["predict", "polyp", str(source), str(tmp_path / f"{name}-mask.png")]) == 0
        masks[name] = cv2.imread(str(tmp_path / f"{name}-mask.png"), 0) > 0
    assert masks["jpeg"].mean() > 0.05  # the frame's polyp is found
    np.testing.assert_array_equal(masks["rgba"], masks["jpeg"])
    np.testing.assert_array_equal(masks["sixteen"], masks["jpeg"])


def test_a_truncated_jpeg_is_refused_by_name_not_segmented_half_grey(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """libjpeg decodes a cut-off JPEG with a warning only, filling the lost rows with grey."""
    frame_path = sorted((examples / "kvasir" / "images").glob("*.jpg"))[0]
    cut = tmp_path / "cut.jpg"
    data = frame_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert cv2.imread(str(cut)) is not None  # OpenCV alone would take it
    assert run_cli(["predict", "polyp", str(cut), str(tmp_path / "mask.png")]) == 2
    assert "cut.jpg: truncated JPEG" in capsys.readouterr().err
    assert not (tmp_path / "mask.png").exists()


def test_bad_frames_in_a_folder_are_named_after_the_good_ones_are_segmented(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    good = sorted((examples / "kvasir" / "images").glob("*.jpg"))[:2]
    for path in good:
        shutil.copy(path, frames / path.name)
    (frames / "a-cut.jpg").write_bytes(good[0].read_bytes()[:5000])
    cv2.imwrite(str(frames / "b-grey.png"), np.zeros((64, 64), np.uint8))
    out = tmp_path / "masks"
    assert run_cli(["predict", "polyp", str(frames), str(out)]) == 2
    error = capsys.readouterr().err
    assert "2 of 4 inputs could not be segmented" in error
    assert "a-cut.jpg: truncated JPEG" in error and "b-grey.png: the model expects 3" in error
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in good)


def test_a_screen_capture_is_segmented_on_its_field_of_view(examples: Path, tmp_path: Path) -> None:
    """A frame recorded as the whole screen (black borders, patient text) gets the mask of
    the frame itself, pasted where the frame lies; the shipped polyp plan crops to the field."""
    jpeg = sorted((examples / "kvasir" / "images").glob("*.jpg"))[0]
    frame = cv2.imread(str(jpeg))
    screen = np.zeros((720, 1280, 3), np.uint8)
    screen[72:648, 160:736] = cv2.resize(frame, (576, 576), interpolation=cv2.INTER_CUBIC)
    cv2.putText(screen, "DOE^JANE 0042731", (780, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                (255, 255, 255), 2)  # fmt: skip
    cv2.imwrite(str(tmp_path / "screen.png"), screen)
    cv2.imwrite(str(tmp_path / "field.png"), screen[72:648, 160:736])
    assert run_cli(["predict", "polyp", str(tmp_path / "screen.png"), str(tmp_path / "s.png")]) == 0
    assert run_cli(["predict", "polyp", str(tmp_path / "field.png"), str(tmp_path / "f.png")]) == 0
    assert run_cli(["predict", "polyp", str(jpeg), str(tmp_path / "frame.png")]) == 0
    on_screen = cv2.imread(str(tmp_path / "s.png"), 0)
    on_field = cv2.imread(str(tmp_path / "f.png"), 0)
    assert on_screen.shape == (720, 1280) and on_screen.sum() > 0
    np.testing.assert_array_equal(on_screen[72:648, 160:736], on_field)
    assert not on_screen[:72].any() and not on_screen[:, 736:].any()
    on_frame = cv2.resize(cv2.imread(str(tmp_path / "frame.png"), 0), (576, 576),
                          interpolation=cv2.INTER_NEAREST) > 0  # fmt: skip
    field_mask = on_field > 0
    assert 2 * (on_frame & field_mask).sum() / (on_frame.sum() + field_mask.sum()) > 0.9


def png_frame_folder(examples: Path, tmp_path: Path) -> Path:
    """tmp_path/frames holding frame.png, a Kvasir example frame as PNG."""
    frames = tmp_path / "frames"
    frames.mkdir()
    jpeg = sorted((examples / "kvasir" / "images").glob("*.jpg"))[0]
    cv2.imwrite(str(frames / "frame.png"), cv2.imread(str(jpeg)))
    return frames


def test_two_frames_that_would_write_one_mask_are_refused_before_any_work(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = png_frame_folder(examples, tmp_path)
    shutil.copy(sorted((examples / "kvasir" / "images").glob("*.jpg"))[0], frames / "frame.jpg")
    out = tmp_path / "masks"
    assert run_cli(["predict", "polyp", str(frames), str(out)]) == 2
    assert "frame.jpg and frame.png would both write frame.png" in capsys.readouterr().err
    assert not out.exists()


def test_overwrite_never_replaces_the_input_frames_with_masks(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = png_frame_folder(examples, tmp_path)
    before = (frames / "frame.png").read_bytes()
    assert run_cli(["predict", "polyp", str(frames), str(frames), "--overwrite"]) == 2
    assert "would replace an input" in capsys.readouterr().err
    assert (frames / "frame.png").read_bytes() == before


def test_predict_dicom_study_writes_a_seg_readable_by_highdicom(
    hippocampus_run: Path, examples: Path, tmp_path: Path
) -> None:
    import highdicom

    study = examples / "dicom" / "hippocampus-study1"
    out = tmp_path / "seg.dcm"
    code = run_cli(["predict", str(hippocampus_run / "model"), str(study), str(out)])
    assert code == 0
    if out.exists():  # an untrained network may find nothing (then a warning, no file)
        seg = highdicom.seg.segread(out)
        names = {d.SegmentLabel for d in seg.SegmentSequence}
        assert names <= {"anterior", "posterior"}
        source = read_image(study)
        assert read_image(out).same_grid(source, tolerance_mm=1e-2)


def test_a_seg_written_into_the_study_folder_does_not_stop_the_next_run(
    examples: Path, tmp_path: Path
) -> None:
    """A study folder often holds segmentations beside its images (a PACS export, or the SEG
    of an earlier run): with one image series, that series is read without --series."""
    study = tmp_path / "study"
    shutil.copytree(examples / "dicom" / "hippocampus-study1", study)
    assert run_cli(["predict", "hippocampus", str(study), str(study / "seg.dcm")]) == 0
    assert run_cli(["predict", "hippocampus", str(study), str(tmp_path / "again.dcm")]) == 0
    assert read_image(tmp_path / "again.dcm").same_grid(read_image(study / "seg.dcm"))


def test_readme_demo_writes_seg_nifti_and_an_overlay_page(examples: Path, tmp_path: Path) -> None:
    """The README's main job: one prediction of the shipped model, written as DICOM SEG, as
    NIfTI (``--also``) and as an HTML page of overlays and label volumes (``--html``)."""
    study = examples / "dicom" / "hippocampus-study1"
    seg, nifti, page = tmp_path / "seg.dcm", tmp_path / "seg.nii.gz", tmp_path / "seg.html"
    args = ["predict", "hippocampus", str(study), str(seg), "--also", str(nifti)]
    assert run_cli([*args, "--html", str(page)]) == 0
    from_seg, from_nifti = read_image(seg), read_image(nifti)
    assert from_nifti.same_grid(read_image(study), tolerance_mm=1e-2)
    assert from_seg.same_grid(from_nifti, tolerance_mm=1e-2)
    labels = from_nifti.numpy()[0]
    assert set(np.unique(labels)) == {0, 1, 2}  # both hippocampus parts found
    assert np.array_equal(from_seg.numpy()[0] > 0, labels > 0)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 1 and "anterior" in text
    volume_ml = (labels == 1).sum() * np.prod(from_nifti.spacing_mm) / 1000
    assert f"{volume_ml:.2f} mL" in text
    # an existing page stops the run before anything is written
    again = tmp_path / "again.dcm"
    assert run_cli(["predict", "hippocampus", str(study), str(again), "--html", str(page)]) == 2
    assert not again.exists()
    # one file named twice (OUTPUT and --also) stops the run before the first write
    twice = ["predict", "hippocampus", str(study), str(again), "--also", str(again)]
    assert run_cli(twice) == 2
    assert not again.exists()


def test_a_series_folder_beside_image_files_is_named_not_silently_skipped(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(examples / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz", mixed)
    shutil.copytree(examples / "dicom" / "hippocampus-study1", mixed / "study1")
    out = tmp_path / "out"
    assert run_cli(["predict", "hippocampus", str(mixed), str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["hippocampus_001.nii.gz"]
    assert "1 sub-folder(s) not read (study1)" in capsys.readouterr().err


def test_stats_csv_gives_each_labels_volume_and_mean_intensity_on_the_source_grid(
    examples: Path, tmp_path: Path
) -> None:
    """``--stats`` (TotalSegmentator's --statistics): checked against the written label maps
    and the source volumes, read independently with nibabel."""
    import csv

    import nibabel as nib

    cases = tmp_path / "cases"
    cases.mkdir()
    for name in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        shutil.copy(examples / "hippocampus" / "imagesTr" / name, cases)
    out, table = tmp_path / "out", tmp_path / "volumes.csv"
    assert run_cli(["predict", "hippocampus", str(cases), str(out), "--stats", str(table)]) == 0
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["input"], r["label"]) for r in rows] == [
        (case, part) for case in sorted(p.name for p in cases.iterdir())
        for part in ("anterior", "posterior")
    ]  # fmt: skip
    for row in rows:
        label = nib.load(out / row["input"])
        source = np.asarray(nib.load(cases / row["input"]).dataobj, dtype=np.float64)
        inside = np.asarray(label.dataobj) == int(row["label_value"])
        voxel_ml = float(np.prod(label.header.get_zooms()[:3])) / 1000
        assert int(row["voxels"]) == inside.sum() > 500
        assert float(row["size"]) == pytest.approx(inside.sum() * voxel_ml, rel=1e-3)
        assert row["unit"] == "mL"
        assert float(row["mean_intensity"]) == pytest.approx(source[inside].mean(), rel=1e-4)
    # the table is one more output: never the same file as another
    again = ["predict", "hippocampus", str(cases), str(tmp_path / "b"), "--stats", str(table)]
    assert run_cli(again) == 2  # exists, no --overwrite


def test_predict_refuses_wrong_inputs(
    hippocampus_run: Path,
    polyp_run: Path,
    examples: Path,
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hippo, polyp = str(hippocampus_run / "model"), str(polyp_run / "model")
    volume = str(examples / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz")
    frame = next((examples / "kvasir" / "images").iterdir())
    assert run_cli(["predict", polyp, volume, str(tmp_path / "a.png")]) == 2
    assert "2D model" in capsys.readouterr().err
    assert run_cli(["predict", hippo, str(frame), str(tmp_path / "b.nii.gz")]) == 2
    assert "3D model" in capsys.readouterr().err
    grey = tmp_path / "grey.png"
    import cv2

    cv2.imwrite(str(grey), np.zeros((256, 256), np.uint8))
    assert run_cli(["predict", polyp, str(grey), str(tmp_path / "c.png")]) == 2
    assert "3 channel" in capsys.readouterr().err
    refused = tmp_path / "new-folder" / "masks"
    assert (
        run_cli(["predict", polyp, str(grey), str(refused), "--html", str(refused / "a.html")]) == 2
    )
    assert not (tmp_path / "new-folder").exists(), "a refused run leaves no empty folder behind"
    capsys.readouterr()
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    assert run_cli(["predict", hippo, str(empty), str(tmp_path / "d.nii.gz")]) == 2
    assert "empty" in capsys.readouterr().err
    two_series = shared_data / "dicom" / "hippocampus-mri" / "study1"
    assert run_cli(["predict", hippo, str(two_series), str(tmp_path / "e.dcm")]) == 2
    assert "--series" in capsys.readouterr().err
    # TTA mirrors only along axes the network was trained mirrored (this run: all three)
    assert run_cli(["predict", hippo, volume, str(tmp_path / "f.nii.gz"), "--tta-axes", "3"]) == 2
    assert "trained mirrored along axes 0,1,2 only" in capsys.readouterr().err
    assert not any(
        p.name.startswith(("a.", "b.", "c.", "d.", "e.", "f.")) for p in tmp_path.iterdir()
    )


def test_windows_and_tta_passes_follow_the_plan() -> None:
    """An image that barely exceeds the patch is one whole-image window (not two overlapping
    patches); a large one is tiled by patches; TTA runs one pass per mirroring of the plan's
    ``test_time_mirror_axes``."""
    from medlens.infer.segmentation import sliding_window_logits
    from medlens.models.segmentation import SegmentationPlan

    plan = SegmentationPlan(
        dims=3, in_channels=1, labels={0: "background", 1: "anterior", 2: "posterior"},
        patch_size=[40, 56, 40], batch_size=2, spacing_mm=None, normalisation={},
        filters=[4, 8], kernel_size=[[3, 3, 3]] * 2, strides=[[1, 1, 1], [2, 2, 2]],
        mirror_axes=[0, 1], test_time_mirror_axes=[0],
    )  # fmt: skip
    seen: list[tuple[int, ...]] = []

    def network(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        return torch.zeros(batch.shape[0], 3, *batch.shape[2:])

    probabilities = sliding_window_logits(network, torch.zeros(1, 36, 47, 41), plan)
    assert seen == [(1, 1, 40, 56, 42)] and probabilities.shape == (3, 36, 47, 41)
    seen.clear()
    sliding_window_logits(network, torch.zeros(1, 36, 47, 41), plan, tta=True)
    assert len(seen) == 2  # identity + mirrored along axis 0
    plan.test_time_mirror_axes = None  # all mirror axes: 4 passes, as nnU-Net
    seen.clear()
    sliding_window_logits(network, torch.zeros(1, 36, 47, 41), plan, tta=True)
    assert len(seen) == 4
    seen.clear()
    sliding_window_logits(network, torch.zeros(1, 120, 56, 40), plan, batch_size=1)
    assert set(seen) == {(1, 1, 40, 56, 40)} and len(seen) == 5  # 50% overlap along axis 0


def test_augmentation_moves_image_and_label_together() -> None:
    from medlens.augment.segmentation_batch import augment_batch

    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(8, 1, 24, 32, 16, dtype=torch.long)
    labels[:, :, 2:10, 4:20, 1:6] = 1  # an off-centre block: any mirroring moves it
    images = labels.float()
    out_images, out_labels = augment_batch(images.clone(), labels.clone(), generator, [0, 1, 2])
    assert set(out_labels.unique().tolist()) <= {0, 1}
    for image, label in zip(out_images, out_labels, strict=True):
        correlation = torch.corrcoef(torch.stack([image.flatten(), label.float().flatten()]))
        assert correlation[0, 1] > 0.8  # intensity changes, but the block stays on the label
    moved = (out_labels != labels).flatten(1).any(dim=1)
    assert moved.any()


def test_rotation_range_bounds_how_far_a_frame_turns() -> None:
    from medlens.augment.segmentation_batch import augment_batch

    labels = torch.zeros(256, 1, 64, 64, dtype=torch.long)
    labels[:, :, 6:14, 28:36] = 1  # a block straight above the centre (angle 0)

    def angles(rotation_degrees: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        _, out = augment_batch(
            labels.float(), labels.clone(), generator, [], rotation_degrees=rotation_degrees
        )
        rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        mass = out[:, 0].float().flatten(1).sum(1).clamp_min(1)
        row = (out[:, 0] * rows).flatten(1).sum(1) / mass - 31.5
        col = (out[:, 0] * cols).flatten(1).sum(1) / mass - 31.5
        return torch.rad2deg(torch.atan2(col, -row)).abs()

    assert float(angles(15).max()) < 20  # the default: at most 15 degrees, plus pixel snapping
    turned = angles(180)
    assert float((turned > 90).float().mean()) > 0.1  # about half of the 30% that rotate


def test_camera_augment_is_opt_in_and_named_in_the_model_card(
    polyp_run: Path, examples: Path, tmp_path: Path
) -> None:
    default = json.loads((polyp_run / "model" / "model.json").read_text())
    assert "camera_augment" not in default["training"]["augmentation"]
    out = tmp_path / "run"
    code = train(
        examples / "kvasir", out, "--iterations", "2", "--batch-size", "2", "--labels", "1=polyp",
        "--camera-augment",
    )  # fmt: skip
    assert code == 0
    card = json.loads((out / "model" / "model.json").read_text())
    assert "camera_augment: white balance" in card["training"]["augmentation"]


def test_structure_loss_trains_and_is_named_in_the_card_and_an_unknown_loss_is_refused(
    polyp_run: Path, examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default = json.loads((polyp_run / "model" / "model.json").read_text())
    assert default["training"]["loss"].startswith("Dice + cross-entropy")
    code = train(
        examples / "kvasir", tmp_path / "structure", "--iterations", "2", "--batch-size", "2",
        "--labels", "1=polyp", "--loss", "structure",
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "structure" / "model" / "model.json").read_text())
    assert card["training"]["loss"].startswith("structure loss")
    code = train(examples / "kvasir", tmp_path / "focal", "--iterations", "2", "--loss", "focal")
    assert code != 0
    assert "--loss focal: use dice-ce or structure" in capsys.readouterr().err
    assert not (tmp_path / "focal").exists()


def test_multi_scale_draws_stride_multiples_and_resizes_image_and_label_together() -> None:
    from medlens.augment.segmentation_batch import multi_scale_sizes, rescale_batch

    assert multi_scale_sizes([320, 320], [32, 32], (0.75, 1.25)) == [
        [256, 256], [288, 288], [320, 320], [352, 352], [384, 384]
    ]  # fmt: skip
    assert multi_scale_sizes([256, 192], [32, 32], (1.0, 1.0)) == [[256, 192]]
    labels = torch.zeros(2, 1, 64, 64, dtype=torch.long)
    labels[:, :, 16:48, 8:24] = 1
    images, resized = rescale_batch(labels.float(), labels, [96, 96])
    assert images.shape == (2, 1, 96, 96) and resized.shape == (2, 1, 96, 96)
    assert resized.dtype == torch.long and set(resized.unique().tolist()) == {0, 1}
    assert int(resized[0].sum()) == 32 * 16 * 9 // 4  # the block scaled by 1.5 on each axis
    assert torch.equal((images > 0.5).long(), resized)


@pytest.mark.parametrize(
    ("option", "value", "card_entry", "in_card", "bad_value", "error"),
    [
        ("--multi-scale", "0.5,1.5", "augmentation",
         "multi-scale: each batch at one of 32x32, 64x64, 96x96",
         "1.25,0.75", "0 < LOW <= 1 <= HIGH, got '1.25,0.75'"),
        ("--rotation-degrees", "180", "augmentation", "rotation (+-180 degrees)",
         "-5", "--rotation-degrees must be 0-180, got -5"),
        ("--weight-decay", "0.05", "optimizer", " wd 0.05,",
         "-0.1", "--weight-decay must be in [0, 1), got -0.1"),
        ("--drop-path", "0.05", "optimizer", "encoder drop path up to 0.05",
         "1.5", "--drop-path must be in [0, 1), got 1.5"),
    ],
)  # fmt: skip
def test_training_options_are_named_in_the_card_and_bad_values_are_refused(
    option: str,
    value: str,
    card_entry: str,
    in_card: str,
    bad_value: str,
    error: str,
    examples: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = train(
        examples / "kvasir", tmp_path / "run", "--iterations", "3", "--batch-size", "2",
        "--labels", "1=polyp", "--frame-size", "64x64", option, value,
    )  # fmt: skip
    assert code == 0
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert in_card in card["training"][card_entry]
    network, _ = load_model(tmp_path / "run" / "model")  # training-only layers are not shipped
    assert not any(type(module).__name__ == "DropPath" for module in network.modules())
    code = train(examples / "kvasir", tmp_path / "bad", option, bad_value)
    assert code != 0
    assert error in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("dataset", "options", "error"),
    [
        ("hippocampus", ["--multi-scale", "0.75,1.25"],
         "--multi-scale is for 2D frames, and this plan is 3D"),
        ("kvasir", ["--augment", "medlens", "--rotation-degrees", "90"],
         "--augment medlens has its own"),
        ("hippocampus", ["--drop-path", "0.2"], "--drop-path is for the Lite U-Nets' encoders"),
    ],
)  # fmt: skip
def test_augmentation_options_that_do_not_apply_are_refused(
    dataset: str,
    options: list[str],
    error: str,
    examples: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = train(examples / dataset, tmp_path / "run", "--iterations", "1", *options)
    assert code != 0
    assert error in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_camera_augment_changes_colour_and_focus_of_rgb_frames_only(examples: Path) -> None:
    from medlens.augment.segmentation_batch import camera_augment

    plan = make_plan(fingerprint_of(examples / "kvasir"))
    augment = camera_augment(plan)
    mean = torch.tensor(plan.normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(plan.normalisation["std"]).view(1, 3, 1, 1)
    frames = (torch.rand(16, 3, 64, 64) * 255 - mean) / std  # normalised 0-255 pixels
    out = augment(frames.clone(), torch.Generator().manual_seed(0))
    changed = (out - frames).abs().flatten(1).amax(dim=1) > 1e-3
    assert 0 < int(changed.sum()) < 16  # each effect has its probability per frame
    assert out.shape == frames.shape and torch.isfinite(out).all()
    volumes = fingerprint_of(examples / "hippocampus")
    assert camera_augment(make_plan(volumes)) is None  # MRI: no colour, recipe unchanged


def test_lite1_encoder_network_trains_and_loads_from_its_card(
    examples: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code = train(
        examples / "kvasir", out, "--iterations", "1", "--batch-size", "2", "--labels",
        "1=polyp", "--network", "Lite1UNet", "--no-pretrained",
    )  # fmt: skip
    assert code == 0
    network, card = load_model(out / "model")
    assert card.architecture["name"] == "Lite1UNet"
    assert card.preprocessing["plan"]["network"] == "Lite1UNet"
    assert len(network.encoder._blocks) == 21  # Lite1's depth, not Lite0's 16 blocks
    assert card.training["init"] == "random"


def test_plans_fit_the_20_mb_limit_or_are_refused_before_anything_is_written(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medlens.models.zoo import MAX_WEIGHTS_BYTES, weights_bytes

    frames = fingerprint_of(examples / "kvasir")
    lite0 = make_plan(frames, network="Lite0UNet")
    lite2 = make_plan(frames, network="Lite2UNet")
    assert lite0.filters == [128, 64, 32, 16]
    # Lite2 with Lite0's decoder is 20.2 MB; the planner narrows its stride-16 stage to ship
    assert lite2.filters == [112, 64, 32, 16]
    assert weights_bytes(lite2.build_network()) <= MAX_WEIGHTS_BYTES
    # a DynUNet asked for 256 base filters would fail at its first save: refused up front
    code = train(
        examples / "hippocampus", tmp_path / "wide", "--iterations", "1", "--filters", "256"
    )
    assert code != 0
    assert "MB of weights, over the 20 MB limit for shipped models" in capsys.readouterr().err
    assert not (tmp_path / "wide").exists()


def test_freeze_early_blocks_keeps_the_imagenet_stem_and_trains_the_rest(
    examples: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medlens.models.lite_unet import Lite0UNet

    out = tmp_path / "run"
    code = train(
        examples / "kvasir", out, "--iterations", "2", "--batch-size", "2", "--labels",
        "1=polyp", "--freeze-early-blocks", "3", "--lr", "0.01", "--encoder-lr-scale", "0.3",
    )  # fmt: skip
    assert code == 0
    network, card = load_model(out / "model")  # trained channels-last, saved row-major
    assert card.training["frozen_early_blocks"] == 3
    assert "encoder lr x0.3" in card.training["optimizer"]
    # bf16 autocast makes a Lite U-Net's CPU step 1.5x slower, even where the CPU has bf16
    assert card.training["precision"] == "fp32"
    imagenet = Lite0UNet(in_channels=3, out_channels=2, pretrained=True)
    frozen = dict(zip(network.early_parameters(3), imagenet.early_parameters(3), strict=True))
    assert all(torch.equal(trained, start) for trained, start in frozen.items())
    later = network.encoder._blocks[3]._depthwise_conv.weight  # stride 8: trained
    assert not torch.equal(later, imagenet.encoder._blocks[3]._depthwise_conv.weight)
    # a DynUNet has no ImageNet stem to keep: refused before anything is written
    code = train(
        examples / "hippocampus", tmp_path / "hippo", "--iterations", "1",
        "--freeze-early-blocks", "2",
    )  # fmt: skip
    assert code != 0 and not (tmp_path / "hippo").exists()
    printed = capsys.readouterr()
    assert "needs an EfficientNet-Lite U-Net" in printed.out + printed.err


def test_encoder_lr_scale_moves_the_pretrained_encoder_less_than_the_decoder() -> None:
    from medlens.models.lite_unet import Lite0UNet

    network = Lite0UNet(in_channels=3, out_channels=2, pretrained=True)
    groups = parameter_groups(network, 0.01)
    assert [group["lr_scale"] for group in groups] == [1.0, 0.01]
    encoder = {id(p) for p in network.encoder_parameters()}
    assert {id(p) for p in groups[1]["params"]} == encoder
    assert sum(len(group["params"]) for group in groups) == len(list(network.parameters()))
    for group in groups:
        group["lr"] = 0.01 * group["lr_scale"]  # what the training loop sets each step
    optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.0)
    before = [p.detach().clone() for p in network.parameters()]
    network(torch.randn(2, 3, 64, 64)).square().mean().backward()
    optimizer.step()
    pairs = zip(network.parameters(), before, strict=True)
    moved = {id(p): (p - b).abs().max().item() for p, b in pairs}
    # Adam's first step moves each weight by about its group's learning rate
    assert max(moved[i] for i in encoder) <= 0.0001 * 1.01
    assert max(v for i, v in moved.items() if i not in encoder) >= 0.009
    with pytest.raises(MedlensError, match="above 0"):
        parameter_groups(network, 0.0)


class _ThresholdNetwork(torch.nn.Module):
    """Foreground wherever the input is positive: predictions chosen by the test."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([-image, image], dim=1) * 10


def _case(case_id: str, predicted: np.ndarray, truth: np.ndarray) -> LoadedCase:
    image = torch.from_numpy(np.where(predicted, 1.0, -1.0)[None].astype(np.float32))
    crop = (slice(0, truth.shape[0]), slice(0, truth.shape[1]))
    return LoadedCase(case_id, image, torch.from_numpy(truth), crop, torch.zeros(0, 2))


def test_validation_keeps_largest_component_only_where_it_raises_dice() -> None:
    plan = SegmentationPlan(
        dims=2, in_channels=1, labels={0: "background", 1: "polyp"}, patch_size=[32, 32],
        batch_size=1, spacing_mm=None, normalisation={}, filters=[8, 16],
        kernel_size=[[3, 3]] * 2, strides=[[1, 1], [2, 2]], largest_component=[1],
    )  # fmt: skip
    one_polyp = np.zeros((32, 32), np.uint8)
    one_polyp[4:14, 4:14] = 1
    with_speck = one_polyp.copy()
    with_speck[25:27, 25:27] = 1  # a false positive apart from the polyp
    two_polyps = one_polyp.copy()
    two_polyps[18:30, 18:30] = 1
    network, cpu = _ThresholdNetwork(), torch.device("cpu")

    speck = validate(network, [_case("speck", with_speck, one_polyp)], plan, cpu, False)
    assert speck["largest_component"]["kept"] == [1]  # removing the speck helps
    assert speck["largest_component"]["dice_per_label"]["polyp"] == 1.0

    both = validate(network, [_case("two", two_polyps, two_polyps)], plan, cpu, False)
    assert both["largest_component"]["kept"] == []  # it would delete a true polyp
    assert both["dice_per_label"]["polyp"] == 1.0


def test_card_ships_the_post_processing_chosen_on_validation(hippocampus_run: Path) -> None:
    card = json.loads((hippocampus_run / "model" / "model.json").read_text())
    proposed = json.loads((hippocampus_run / "plan.json").read_text())["largest_component"]
    choice = card["metrics"]["validation"]["largest_component"]
    assert choice["candidates"] == proposed
    assert 2 in proposed  # the posterior part is one blob
    assert card["preprocessing"]["plan"]["largest_component"] == choice["kept"]
    assert set(choice["kept"]) <= set(proposed)


def test_quantize_adds_a_verified_int8_graph_that_predict_runs_on_the_cpu(
    polyp_run: Path, examples: Path, tmp_path: Path
) -> None:
    from medlens.compress.onnx import OnnxNetwork
    from medlens.compress.quantize import INT8_NAME
    from medlens.infer.predict import load_segmenter

    model = tmp_path / "model"
    shutil.copytree(polyp_run / "model", model)
    assert run_cli(["quantize", str(model), "--frames", "2"]) == 0
    card = json.loads((model / "model.json").read_text())
    assert card["extra"]["int8"]["file"] == INT8_NAME
    assert card["extra"]["int8"]["calibration"].startswith("2 training frames")
    load_model(model)  # the float weights and their sha256 are untouched

    network, _, _ = load_segmenter(model, engine="auto")  # auto on the CPU: the int8 graph
    assert isinstance(network, OnnxNetwork) and network.path.name == INT8_NAME
    out = tmp_path / "masks"
    assert run_cli(["predict", str(model), str(examples / "kvasir" / "images"), str(out)]) == 0
    frames = sorted((examples / "kvasir" / "images").iterdir())
    assert sorted(p.stem for p in out.iterdir()) == [p.stem for p in frames]
    mask = cv2.imread(str(out / f"{frames[0].stem}.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == cv2.imread(str(frames[0])).shape[:2] and set(np.unique(mask)) <= {0, 255}

    # refused: a second graph without --overwrite, a changed graph, a 3D model
    assert run_cli(["quantize", str(model), "--frames", "2"]) == 2
    with open(model / INT8_NAME, "ab") as handle:
        handle.write(b"\0")
    code = run_cli(["predict", str(model), str(frames[0]), str(tmp_path / "x.png")])
    assert code == 2 and not (tmp_path / "x.png").exists()
    assert run_cli(["predict", str(model), str(frames[0]), str(tmp_path / "y.png"),
                    "--engine", "torch"]) == 0  # fmt: skip
    assert run_cli(["quantize", "hippocampus"]) == 2
    assert run_cli(["quantize", "kidney-stones"]) == 2  # a detector, not a segmenter
    assert run_cli(["quantize", str(model), "--frames", "0", "--overwrite"]) == 2
