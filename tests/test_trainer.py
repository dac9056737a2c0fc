"""The bilevel trainer on the CPU with micro models: it learns, checkpoints, resumes, scales."""

import csv
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time

import fiftyone as fo
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fiftyone_unseg import checkpoint, folders
from fiftyone_unseg.io import encode_marked
from fiftyone_unseg.modeling import NoiseGenerator
from fiftyone_unseg.modeling.build import load_state_file
from trainer import distributed, prompts, surrogate
from trainer.config import CONFIG_DIR, TrainConfig, load_config
from trainer.data import PairDataset, _fiftyone_spec, load_pairs, split_pairs
from trainer.loop import Trainer, generator_inputs
from trainer.losses import mask_loss, shared_texture_share, uncertain_points

MICRO = {
    "name": "micro",
    "img_size": 64,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "encoder_window_size": 2,
    "prompt_embed_dim": 32,
    "mask_in_chans": 8,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 4,
    "freeze_backbone": True,
}
DATA = "sample:12:0:photo+studio:96"


def micro_config(**overrides) -> TrainConfig:
    base = dict(
        generator=MICRO,
        surrogate=MICRO,
        surrogate_img_size=48,
        data=[DATA],
        val_fraction=0.25,
        unit="steps",
        surrogate_phase=2,
        generator_phase=2,
        max_steps=4,
        batch_size=2,
        num_points=256,
        val_every=1000,
        val_images=4,
        checkpoint_every=1000,
        lr=1e-3,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(params=["sam", "cnn"])
def trainer(tmp_path, request):
    """A micro trainer in its bilevel stage, with a SAM-layout or a U-Net surrogate."""
    surrogate = MICRO if request.param == "sam" else "cnn"
    t = Trainer(
        micro_config(surrogate=surrogate),
        str(tmp_path),
        distributed.Context(0, 1, torch.device("cpu")),
    )
    t._enter_stage("bilevel")
    return t


def _fixed_batch(t: Trainer):
    torch.manual_seed(3)
    images, masks = zip(*(t.train_data[i] for i in range(2)))
    return torch.stack(images), torch.stack(masks)


def _surrogate_loss(t: Trainer, images, masks, target=None) -> float:
    """The surrogate's loss on perturbed images, with prompts and points fixed by seed."""
    torch.manual_seed(0)
    p = prompts.make_prompts(masks, ["box", "mask"])
    with torch.no_grad():
        x, s_masks, _ = t._perturb_for_surrogate(t.generator, images, masks, p)
        logits = t.surrogate(x, prompts.make_prompts(s_masks, ["box"]))
        return mask_loss(logits, s_masks if target is None else target, 256).item()


def test_surrogate_steps_lower_surrogate_loss(trainer):
    images, masks = _fixed_batch(trainer)
    before = _surrogate_loss(trainer, images, masks)
    for _ in range(30):
        trainer._surrogate_step(images, masks)
    assert _surrogate_loss(trainer, images, masks) < 0.85 * before


def test_generator_steps_lower_generator_objective(trainer):
    images, masks = _fixed_batch(trainer)
    for _ in range(5):
        trainer._surrogate_step(images, masks)
    ones = torch.ones(masks.shape[0], 1, 48, 48)
    surrogate_before = {k: v.clone() for k, v in trainer.surrogate.state_dict().items()}
    frozen_before = trainer.generator.image_encoder.patch_embed.proj.weight.clone()
    before = _surrogate_loss(trainer, images, masks, target=ones)
    # Label modification needs a visible budget to move the surrogate within a few steps.
    trainer.cfg.eps_train = trainer.cfg.eps_bg_train = 16 / 255
    for _ in range(15):
        trainer._generator_step(images, masks)
    assert _surrogate_loss(trainer, images, masks, target=ones) < before
    for k, v in trainer.surrogate.state_dict().items():  # the surrogate stayed frozen
        assert torch.equal(v, surrogate_before[k]), k
    assert torch.equal(trainer.generator.image_encoder.patch_embed.proj.weight, frozen_before)


def test_cnn_surrogate_sees_prompts_drawn_in_its_frame():
    images = torch.zeros(2, 3, 32, 32)
    boxes = torch.tensor([[4.0, 8.0, 12.0, 20.0], [0.0, 0.0, 32.0, 32.0]])
    points = (torch.tensor([[[10.0, 10.0], [0.0, 0.0]]] * 2), torch.tensor([[1, -1], [0, 1]]))
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :2, :2] = 1
    maps = surrogate.prompt_maps(prompts.Prompts(boxes, points, masks), images)
    assert maps[0, 0].sum() == 8 * 12 and maps[0, 0, 8:20, 4:12].all() and maps[1, 0].all()
    assert maps[0, 1, 10, 10] == 1 and maps[0, 1, 8:13, 8:13].eq(1).all()  # positive, 5x5
    assert maps[0, 1, 0, 0] == 0  # padding (-1) is not drawn
    assert maps[1, 1, 10, 10] == -1 and maps[1, 1, 0, 0] == 1  # negative, positive
    assert maps[0, 2, :8, :8].all() and maps[0, 2].sum() == 64 and maps[1, 2].sum() == 0
    model = surrogate.ConvSurrogate(32)
    logits = model(images, prompts.Prompts(boxes=boxes))
    assert logits.shape == (2, 1, 32, 32)
    with_points = model(images, prompts.Prompts(boxes=boxes, points=points))
    assert not torch.allclose(logits, with_points)  # the prompts reach the output


def test_noise_respects_budget_and_mask(trainer):
    images, masks = _fixed_batch(trainer)
    for _ in range(5):
        trainer._generator_step(images, masks)
    p = prompts.make_prompts(masks, ["box", "points", "mask"])
    with torch.no_grad():
        noise = trainer.generator(images, **generator_inputs(p, 64))
    eps, eps_bg = 8 / 255, 2 / 255
    delta = (NoiseGenerator.perturb(images, noise, masks, eps, eps_bg) - images).abs()
    inside, outside = delta * masks, delta * (1 - masks)
    assert inside.max() <= eps + 1e-6 and outside.max() <= eps_bg + 1e-6
    # Where the image is not clipped, the perturbation is exactly noise * budget.
    free = ((images > eps) & (images < 1 - eps)).float()
    expected = (noise.abs() * (eps_bg + (eps - eps_bg) * masks)) * free
    assert torch.allclose(delta * free, expected, atol=1e-6)
    assert inside.sum() / masks.sum() > outside.sum() / (1 - masks).sum()


def test_checkpoint_round_trip_gives_identical_noise(trainer):
    images, masks = _fixed_batch(trainer)
    trainer._generator_step(images, masks)
    trainer.step = 7
    path = trainer.save_checkpoint()
    loaded = checkpoint.load_generator(os.path.join(path, "generator"))
    p = prompts.make_prompts(masks, ["box", "mask"])
    trainer.generator.eval()
    with torch.no_grad():
        a = trainer.generator(images, **generator_inputs(p, 64))
        b = loaded(images, **generator_inputs(p, 64))
    assert torch.equal(a, b)
    meta = json.load(open(os.path.join(path, "generator", "config.json")))["metadata"]
    assert meta["step"] == 7 and meta["eps_generate"] == pytest.approx(8 / 255)


def _metrics(out) -> list:
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_shared_texture_share_tells_a_fixed_texture_from_per_image_noise():
    torch.manual_seed(0)
    masks = (torch.rand(8, 1, 4, 4) > 0.5).float().repeat_interleave(16, 2)
    masks = masks.repeat_interleave(16, 3)  # objects on whole 16 px cells, 64 px images
    textures = torch.randn(2, 3, 16, 16).repeat(1, 1, 4, 4)  # one per region, tiled
    fixed = masks * textures[0] + (1 - masks) * textures[1]
    own = torch.randn(8, 3, 64, 64)
    assert shared_texture_share(fixed, masks, 16) == pytest.approx(1.0, abs=1e-5)
    assert shared_texture_share(own, masks, 16) < 0.05
    half = (fixed / fixed.norm() + own / own.norm()).requires_grad_()
    share = shared_texture_share(half, masks, 16)
    assert 0.4 < share < 0.6
    share.backward()
    assert half.grad.abs().sum() > 0


def test_the_texture_weight_makes_the_noise_specific_to_each_image(tmp_path):
    t = Trainer(
        micro_config(shared_texture_weight=5.0, batch_size=4),
        str(tmp_path),
        distributed.Context(0, 1, torch.device("cpu")),
    )
    t._enter_stage("bilevel")
    images, masks = zip(*(t.train_data[i] for i in range(4)))
    images, masks = torch.stack(images), torch.stack(masks)

    def share() -> float:
        p = prompts.make_prompts(masks, ["box"])
        with torch.no_grad():
            _, _, noise = t._perturb_for_surrogate(t.generator, images, masks, p, eot=False)
        return t._texture_share(noise, masks).item()

    before = share()
    for _ in range(20):
        t._generator_step(images, masks)
    assert share() < 0.7 * before


def _count_evaluations(trainer: Trainer) -> Trainer:
    """``trainer``, counting its evaluations in ``trainer.evaluations``."""
    evaluate, trainer.evaluations = trainer.evaluate, 0

    def counted():
        trainer.evaluations += 1
        return evaluate()

    trainer.evaluate = counted
    return trainer


def test_training_runs_end_to_end_and_resumes(tmp_path):
    out = str(tmp_path / "run")
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    # Half the 12 scenes for validation, so the split surely holds some.
    cfg = micro_config(
        val_fraction=0.5,
        pretrain_steps=2,
        max_steps=4,
        checkpoint_every=2,
        log_every=1,
        val_every=3,
        eot=["jpeg", "blur", "downscale", "grayscale"],
        eot_p=1.0,
    )
    first = _count_evaluations(Trainer(cfg, out, ctx))
    summary = first.run()
    assert summary["steps"] == 6 and os.path.isdir(summary["generator"])
    assert first.evaluations == 2  # steps 3 and 6: the summary takes the last one's scores
    rows = _metrics(out)
    assert summary["iou_val_perturbed"] == pytest.approx(
        float(rows[-1]["iou_val_perturbed"]), abs=1e-6
    )
    assert [r["phase"] for r in rows] == ["pretrain"] * 2 + ["surrogate"] * 2 + ["generator"] * 2
    assert rows[2]["iou_train_clean"] != "" and rows[2]["iou_val_perturbed"] != ""
    assert 0 < float(rows[2]["texture_share_val"]) <= 1
    # Resume with a longer schedule: the step count continues from the last checkpoint.
    longer = dataclasses.replace(cfg, max_steps=8, val_every=1000)
    resumed = _count_evaluations(Trainer(longer, out, ctx))
    summary = resumed.run(resume=True)
    assert summary["steps"] == 10 and resumed.evaluations == 1  # at the end only
    # A run resumed with no step left evaluates for its summary.
    finished = _count_evaluations(Trainer(longer, out, ctx))
    assert finished.run(resume=True)["steps"] == 10 and finished.evaluations == 1
    steps = [int(r["step"]) for r in _metrics(out)]
    assert steps == list(range(1, 11))
    assert resumed.stage == "bilevel"
    assert all(not p.requires_grad for p in resumed.generator.image_encoder.parameters())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_training_equals_an_uninterrupted_one(tmp_path, workers):
    """Stopped mid-epoch and resumed (evaluating at other steps), a run ends with the very
    weights of one that ran through: prompts, counter-measures, crops and loaders all
    continue their random streams, whichever DataLoader worker reads an image."""
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    cfg = micro_config(
        max_steps=8, val_every=2, eot=["jpeg", "blur", "downscale"], eot_p=1.0,
        surrogate_restarts=0, checkpoint_every=1000, num_workers=workers,
    )  # fmt: skip
    through = Trainer(cfg, str(tmp_path / "through"), ctx)
    through.run()
    stopped = dataclasses.replace(cfg, max_steps=3, val_every=1000)  # 4 steps an epoch
    Trainer(stopped, str(tmp_path / "resumed"), ctx).run()
    resumed = Trainer(dataclasses.replace(cfg, val_every=3), str(tmp_path / "resumed"), ctx)
    resumed.run(resume=True)
    for a, b in ((through.generator, resumed.generator), (through.surrogate, resumed.surrogate)):
        first, second = a.state_dict(), b.state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_resumed_run_logs_each_step_once_and_a_finished_one_is_not_overwritten(tmp_path):
    """Killed after logging steps past its last checkpoint, a run resumes with TensorBoard
    curves that run again from there, as metrics.csv does; a folder whose checkpoints were
    deleted still keeps its finished generator unless told to overwrite it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    cfg = micro_config(max_steps=4, checkpoint_every=2, log_every=1)
    Trainer(cfg, str(out), ctx).run()
    (out / "checkpoints" / "latest").write_text("step_00000002")  # killed before step 4's
    # TensorBoard reads event files in name order: a second (then a counter that may roll
    # over from 9 to 10 in this process). A resumed process starts in a later second.
    time.sleep(1.01 - time.time() % 1)
    Trainer(cfg, str(out), ctx).run(resume=True)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("lr")] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in _metrics(out)] == [1, 2, 3, 4]
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(ValueError, match="generator and summary.json but no checkpoint"):
        Trainer(cfg, str(out), ctx).run()
    Trainer(cfg, str(out), ctx).run(overwrite=True)
    assert (out / "checkpoints" / "latest").read_text() == "step_00000004"


def test_a_used_out_folder_is_resumed_with_its_own_config_or_overwritten(tmp_path):
    out = tmp_path / "run"
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    Trainer(micro_config(max_steps=4, checkpoint_every=2), str(out), ctx).run()
    # Another training (lr) with a shorter schedule, which would finish on the old weights.
    other = Trainer(micro_config(max_steps=2, checkpoint_every=2, lr=1e-2), str(out), ctx)
    with pytest.raises(ValueError, match=r"another config \(lr 0.001 -> 0.01\).*--overwrite"):
        other.run(resume=True)
    with pytest.raises(ValueError, match="earlier training.*step_00000004.*--resume.*--overwrite"):
        other.run()
    with pytest.raises(ValueError, match="not both"):
        other.run(resume=True, overwrite=True)
    assert other.step == 0
    assert other.run(overwrite=True)["steps"] == 2
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_00000002"]
    meta = json.loads(
        (out / "checkpoints" / "step_00000002" / "generator" / "config.json").read_text()
    )
    assert meta["metadata"]["train_config"]["lr"] == 1e-2
    assert json.loads((out / "train_config.json").read_text())["lr"] == 1e-2
    assert [int(r["step"]) for r in _metrics(out)] == [2]
    # Machine, length and logging settings may change on resume.
    longer = micro_config(max_steps=4, checkpoint_every=4, lr=1e-2, log_every=1, num_workers=1)
    assert Trainer(longer, str(out), ctx).run(resume=True)["steps"] == 4


def test_a_resume_refuses_another_starting_generator_or_number_of_processes(tmp_path):
    """Where a step's data fall, and the lineage the generator records, depend on both; a
    checkpoint continued with others would silently train something else."""
    from fiftyone_unseg.checkpoint import generator_id

    ctx = distributed.Context(0, 1, torch.device("cpu"))
    start = tmp_path / "start"
    Trainer(micro_config(max_steps=2, seed=0), str(start), ctx).run()
    first_id = generator_id(str(start / "generator"))
    out = str(tmp_path / "fine-tune")
    cfg = micro_config(max_steps=2, checkpoint_every=2, init=str(start / "generator"))
    Trainer(cfg, out, ctx).run()
    longer = dataclasses.replace(cfg, max_steps=4)

    Trainer(micro_config(max_steps=2, seed=1), str(start), ctx).run(overwrite=True)
    second_id = generator_id(str(start / "generator"))
    assert second_id != first_id
    with pytest.raises(ValueError, match=f"from generator {first_id}.*now {second_id}"):
        Trainer(longer, out, ctx).run(resume=True)

    Trainer(micro_config(max_steps=2, seed=0), str(start), ctx).run(overwrite=True)
    assert generator_id(str(start / "generator")) == first_id  # the same start again
    state_file = os.path.join(out, "checkpoints", "step_00000002", "trainer_state.pt")
    state = torch.load(state_file, weights_only=True)
    assert state["world_size"] == 1
    torch.save({**state, "world_size": 2}, state_file)
    with pytest.raises(ValueError, match="trained by 2 process.*this run has 1.*nproc-per-node"):
        Trainer(longer, out, ctx).run(resume=True)
    pairs = state["train_pairs"]  # the same --data, holding more images since
    torch.save({**state, "train_pairs": pairs - 1}, state_file)
    with pytest.raises(
        ValueError, match=f"on {pairs - 1} training pairs, --data now gives {pairs}"
    ):
        Trainer(longer, out, ctx).run(resume=True)
    torch.save(state, state_file)
    assert Trainer(longer, out, ctx).run(resume=True)["steps"] == 4


def test_a_resume_with_nothing_to_resume_says_so(tmp_path, caplog):
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        summary = Trainer(micro_config(max_steps=2), str(tmp_path / "typo"), ctx).run(resume=True)
    assert summary["steps"] == 2
    assert f"no checkpoint in {tmp_path / 'typo'} to resume from: starting at step 0" in caplog.text


def test_fewer_pairs_than_one_batch_train_on_all_of_them_with_a_warning(tmp_path):
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    trainer = Trainer(micro_config(batch_size=64, max_steps=2), str(tmp_path / "small"), ctx)
    pairs = len(trainer.train_data)
    assert 1 < pairs < 64 and trainer.batch_size == pairs and trainer.steps_per_epoch == 1
    images, _ = next(trainer._batches())
    assert images.shape[0] == pairs
    summary = trainer.run()
    assert summary["steps"] == 2
    assert summary["warnings"] == [
        f"{pairs} training pairs are fewer than one batch of 64 per process x 1 processes: "
        f"trained on batches of {pairs}; more data (objects) adapts the noise better"
    ]
    full = Trainer(micro_config(batch_size=2, max_steps=2), str(tmp_path / "full"), ctx)
    assert full.batch_size == 2 and full.run()["warnings"] == []


def test_torchrun_two_cpu_processes(tmp_path):
    """The distributed path: torchrun, gloo, DDP, DistributedSampler, rank-0 outputs; the
    scenes of a ``sample:`` source written once, by the main process, into an empty cache;
    the pairs that either process skipped in the summary."""
    folder = _folder_pairs(tmp_path, 40, lambda k: k % 2)  # every other mask empty
    data = [DATA, folder]
    cfg = micro_config(data=data, max_steps=4, checkpoint_every=2, log_every=1).to_dict()
    cfg_path = tmp_path / "micro.json"
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "trainer.cli",
            "train",
            "--config",
            str(cfg_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "UNSEG_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("generating 12 sample scenes") == 1
    assert proc.stdout.count("Trained 4 steps") == 1  # only rank 0 reports
    assert [int(r["step"]) for r in _metrics(out)] == [1, 2, 3, 4]
    assert checkpoint.load_generator(str(out / "generator")).generator_id
    state_file = out / "checkpoints" / "step_00000004" / "trainer_state.pt"
    assert torch.load(state_file, weights_only=True)["world_size"] == 2  # a resume needs 2
    skipped = json.loads((out / "summary.json").read_text())["skipped_pairs"]
    logged = set(re.findall(r"skipping (\S+): mask is empty", proc.stderr))  # by either
    assert len(logged) > 1 and set(skipped) == logged


def test_trainer_runs_where_fiftyone_is_missing(tmp_path):
    """The lent GPU machines have no FiftyOne: ``benchmarks/gpu/without_fiftyone.py`` serves
    placeholders for it and the trainer must not need more (benchmarks/gpu/check.sh)."""
    cfg_path = tmp_path / "micro.json"
    cfg_path.write_text(json.dumps(micro_config(max_steps=2).to_dict()))
    shim = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu", "without_fiftyone.py")
    probe = (
        "import sys, runpy; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "import fiftyone; assert not hasattr(fiftyone, '__file__'), fiftyone.__file__"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, shim, "--force-stub", "trainer.cli", "train",
         "--config", str(cfg_path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trained 2 steps" in proc.stdout
    assert checkpoint.load_generator(str(tmp_path / "out" / "generator")).generator_id


def test_fullscale_gpu_check_trains_resumes_and_reports(tmp_path):
    """benchmarks/gpu/fullscale.sh (the vit_b check on a lent GPU) run at CPU size with a
    micro config: STEPS steps, then a resume for PHASE more, and samples/s of both phases."""
    cfg_path = tmp_path / "micro.json"
    cfg_path.write_text(json.dumps(micro_config().to_dict()))
    out, run_dir = tmp_path / "report", tmp_path / "run"
    root = os.path.join(os.path.dirname(__file__), "..")
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
        "OMP_NUM_THREADS": "1",
        "OUT": str(out),
        "RUN_DIR": str(run_dir),
        "CONFIG": str(cfg_path),
        "DEVICE": "cpu",
        "STEPS": "4",
        "PHASE": "2",
        "BATCH": "2",
        "DATA": DATA,
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/fullscale.sh"], cwd=root, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert "max-steps 4 : rc 0" in summary and "max-steps 6 --resume: rc 0" in summary, summary
    assert "surrogate  samples/s" in summary and "generator  samples/s" in summary, summary
    assert "last step logged: 6" in summary
    assert "resumed from step 4" in (out / "train.log").read_text()
    steps = [int(r["step"]) for r in _metrics(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one row per step logged


def test_shipped_configs_and_overrides():
    cfg = load_config("tiny", max_steps=5, device="cpu", batch_size=None)
    assert cfg.max_steps == 5 and cfg.device == "cpu" and cfg.batch_size == 16
    assert cfg.generator_config().img_size == 256 and cfg.surrogate_config().img_size == 128
    assert load_config("tiny", freeze_backbone=True).generator_config().freeze_backbone
    with pytest.raises(ValueError, match="vit_b keeps SAM's image encoder frozen: give the"):
        load_config("vit_b")  # a random frozen encoder under a noise head: refused
    vit_b = load_config("vit_b", sam_checkpoint="sam_vit_b_01ec64.pth")
    assert vit_b.generator_config().img_size == 1024 and vit_b.surrogate_config().img_size == 512
    assert (vit_b.surrogate_phase, vit_b.generator_phase, vit_b.epochs) == (1, 3, 27)
    robust = load_config("robust")  # the robust preset: the default through counter-measures
    assert robust.eot == ["jpeg", "blur", "downscale"] and robust.init == "default"
    assert robust.surrogate_reset_every == 0 and robust.surrogate_lr == 1e-3
    grey = load_config("robust", init="robust", noise_colour=0.0, eot_scale=[0.5, 2.5])
    assert grey.eot_scale == (0.5, 2.5) and grey.generator_config().noise_colour == 0
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="maximise")
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 1"):
        TrainConfig(keep_checkpoints=0)
    assert TrainConfig(object_context=[]).object_context is None  # "off", as it was
    # a checkpoint's config from before a check it fails still names what differs
    reversed_range = {**TrainConfig().to_dict(), "scale_range": [2.0, 0.1]}
    assert TrainConfig().resume_conflicts(reversed_range) == {
        "scale_range": ([2.0, 0.1], [0.1, 2.0])
    }
    for bad, message in (
        ({"scale_range": [0.5]}, "scale_range must be"),
        ({"object_context": [3.0, 1.2]}, "object_context must be"),
        ({"oversample_ratio": 0.5}, "oversample_ratio at least 1"),
        ({"surrogate_reset_every": -1}, "surrogate_reset_every must be"),
        ({"val_fraction": 1.0}, "val_fraction must be"),
        ({"eot_p": 1.5}, "eot_p in"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


def test_a_config_with_a_base_holds_only_what_differs(tmp_path):
    with open(os.path.join(CONFIG_DIR, "adapt_learning.json")) as f:
        learning = json.load(f)
    assert learning["base"] == "adapt" and "batch_size" not in learning
    assert load_config("adapt_learning").batch_size == load_config("adapt").batch_size
    assert load_config("adapt_learning").max_steps != load_config("adapt").max_steps
    # a base named by a relative path is the one beside the config, wherever one runs from
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "child.json").write_text(json.dumps({"base": "parent.json", "lr": 0.5}))
    (tmp_path / "mine" / "parent.json").write_text(json.dumps({"base": "adapt", "seed": 7}))
    child = load_config(str(tmp_path / "mine" / "child.json"))
    assert (child.lr, child.seed, child.batch_size) == (0.5, 7, load_config("adapt").batch_size)
    (tmp_path / "a.json").write_text(json.dumps({"base": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"base": str(tmp_path / "a.json")}))
    with pytest.raises(ValueError, match="config bases form a loop"):
        load_config(str(tmp_path / "a.json"))


def test_surrogate_learning_rate_is_its_own(tmp_path):
    t = Trainer(
        micro_config(surrogate_lr=0.0),
        str(tmp_path),
        distributed.Context(0, 1, torch.device("cpu")),
    )
    surrogate = {k: v.clone() for k, v in t.surrogate.state_dict().items()}
    head = [p.clone() for p in t.generator.noise_head_parameters()]
    t.run()
    assert all(torch.equal(v, t.surrogate.state_dict()[k]) for k, v in surrogate.items())
    assert any(not torch.equal(a, b) for a, b in zip(head, t.generator.noise_head_parameters()))


def test_cli_sets_any_config_field(tmp_path, capsys):
    from trainer.cli import main

    cfg_path = tmp_path / "micro.json"
    cfg_path.write_text(json.dumps(micro_config(object_context=(1.2, 3.0)).to_dict()))
    out = tmp_path / "run"
    args = ["train", "--config", str(cfg_path), "--out", str(out), "--set", "max_steps=2"]
    assert main([*args, "--set", "log_every=1"]) == 0
    assert [int(r["step"]) for r in _metrics(out)] == [1, 2]
    assert main([*args, "--set", "learning_rate=1"]) == 2
    assert "unknown training config keys: ['learning_rate']" in capsys.readouterr().err
    bad = ["train", "--config", str(cfg_path), "--out", str(tmp_path / "bad"), "--set"]
    assert main([*bad, "eps_train=8"]) == 2  # protect's 8 means 8/255; here, 8 x the range
    assert "eps_train is 2040/255 of the image range" in capsys.readouterr().err
    assert main([*bad, "eps_train=abc"]) == 2
    assert "eps_train must be float or int, got 'abc'" in capsys.readouterr().err
    assert main([*bad, "eps_bg_generate=0.1"]) == 2  # above eps_generate
    assert "0 <= eps_bg <= eps" in capsys.readouterr().err
    assert main([*bad, "max_steps=5", "--max-steps", "7"]) == 2
    assert (
        "--set max_steps=5 contradicts --max-steps 7: give one of them" in capsys.readouterr().err
    )
    for zero in ("val_every", "val_images", "checkpoint_every", "batch_size"):
        assert main([*bad, f"{zero}=0"]) == 2  # not a crash after the first step
        assert f"{zero} must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(args) == 2
    assert "--resume, start over with --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--set", "object_context=null"]) == 0
    assert [r["step"] for r in _metrics(out)] == ["2"]
    with open(out / "generator" / "config.json") as f:  # null is a value too
        assert json.load(f)["metadata"]["train_config"]["object_context"] is None


def test_a_surrogate_that_predicts_nothing_is_reported(tmp_path, capsys):
    """A surrogate that predicts no mask on clean images (a U-Net driven to empty masks by
    a far too high learning rate) makes the run warn at the first evaluation after two of
    its phases and at the end, in the log, the summary and the CLI's output; a surrogate
    that restarts every block is judged at the end only, and one that predicts masks never."""
    from fiftyone_unseg.adapt import training_warnings
    from trainer.cli import main

    ctx = distributed.Context(0, 1, torch.device("cpu"))
    dead = micro_config(
        surrogate="cnn", surrogate_lr=1.0, max_steps=12, val_every=2, surrogate_restarts=0
    )
    cfg_path = tmp_path / "dead.json"
    cfg_path.write_text(json.dumps(dead.to_dict()))
    assert main(["train", "--config", str(cfg_path), "--out", str(tmp_path / "dead")]) == 0
    ious = [float(r["iou_val_clean"]) for r in _metrics(tmp_path / "dead") if r["iou_val_clean"]]
    assert len(ious) == 6 and max(ious) < 0.01  # what the warning is about
    with open(tmp_path / "dead" / "summary.json") as f:
        warnings = json.load(f)["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["step 6", "step 12"]  # 2 + 2 steps a block
    assert "after 4 surrogate steps" in warnings[0] and "surrogate_lr=3e-01" in warnings[0]
    assert f"Warning: {warnings[0]}" in capsys.readouterr().out
    assert training_warnings(str(tmp_path / "dead" / "generator")) == warnings  # the App's
    assert training_warnings(str(tmp_path / "nowhere" / "generator")) == []
    # A run stopped after the warning and resumed keeps it and warns again at the end only
    # (the checkpoint carries it; a resumed run that forgot it would warn at step 8).
    Trainer(dataclasses.replace(dead, max_steps=6), str(tmp_path / "stopped"), ctx).run()
    summary = Trainer(dead, str(tmp_path / "stopped"), ctx).run(resume=True)
    assert [w.split(":")[0] for w in summary["warnings"]] == ["step 6", "step 12"]
    restarting = dataclasses.replace(dead, surrogate_reset_every=1)
    summary = Trainer(restarting, str(tmp_path / "restarting"), ctx).run()
    assert [w.split(":")[0] for w in summary["warnings"]] == ["step 12"]
    assert "after 2 surrogate steps" in summary["warnings"][0]
    learning = dataclasses.replace(dead, surrogate=MICRO, surrogate_lr=1e-4)
    summary = Trainer(learning, str(tmp_path / "ok"), ctx).run()
    assert summary["iou_val_clean"] >= 0.01 and summary["warnings"] == []


def test_a_surrogate_that_predicts_nothing_restarts_at_a_lower_learning_rate(tmp_path):
    """Found predicting nothing, the surrogate starts afresh at a third of its learning
    rate, at most ``surrogate_restarts`` times, and is judged again two of its phases
    later; a resumed run carries the restarts, the lower rate and the new start."""
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    cfg = micro_config(
        surrogate="cnn", surrogate_lr=1.0, max_steps=16, val_every=2, surrogate_restarts=1
    )
    trainer = Trainer(cfg, str(tmp_path / "once"), ctx)
    summary = trainer.run()
    warnings = summary["warnings"]
    assert [w.split(":")[0] for w in warnings] == ["step 6", "step 14", "step 16"]
    assert "restarted it from fresh weights" in warnings[0] and "surrogate_lr 3e-01" in warnings[0]
    # judged again after 4 surrogate steps of its own, then warned about: no restart left
    assert "after 4 surrogate steps" in warnings[1] and "--set surrogate_lr=1e-01" in warnings[1]
    assert summary["surrogate_restarts"] == 1
    assert trainer.opt_surrogate.param_groups[0]["lr"] == pytest.approx(1 / 3)
    last = tmp_path / "once" / "checkpoints" / "step_00000016"
    state = load_state_file(str(last / "trainer_state.pt"), "trainer state")
    assert (state["restarts"], state["restarted_at"]) == (1, 6)
    assert state["surrogate_lr"] == pytest.approx(1 / 3)
    # Stopped after the restart and resumed: the same judgements, no second restart.
    Trainer(dataclasses.replace(cfg, max_steps=8), str(tmp_path / "stopped"), ctx).run()
    resumed = Trainer(cfg, str(tmp_path / "stopped"), ctx)
    summary = resumed.run(resume=True)
    assert [w.split(":")[0] for w in summary["warnings"]] == ["step 6", "step 14", "step 16"]
    assert resumed.surrogate_lr == pytest.approx(1 / 3) and summary["surrogate_restarts"] == 1
    # Stopped before its first judgement: the end's warning stays in that run's summary,
    # and the resumed run restarts the surrogate where one that ran through did.
    early = Trainer(dataclasses.replace(cfg, max_steps=4), str(tmp_path / "early"), ctx).run()
    assert [w.split(":")[0] for w in early["warnings"]] == ["step 4"]
    summary = Trainer(cfg, str(tmp_path / "early"), ctx).run(resume=True)
    assert [w.split(":")[0] for w in summary["warnings"]] == ["step 6", "step 14", "step 16"]
    assert summary["surrogate_restarts"] == 1
    # Judged dead at its last step: restarted there, as a longer run would, and the summary
    # still says the generator learned against a surrogate that predicted nothing.
    last = Trainer(dataclasses.replace(cfg, max_steps=6), str(tmp_path / "last"), ctx).run()
    assert [w.split(":")[0] for w in last["warnings"]] == ["step 6", "step 6"]
    assert "restarted" in last["warnings"][0] and "has not learned" in last["warnings"][1]
    with pytest.raises(ValueError, match="surrogate_restarts must be 0 or more"):
        micro_config(surrogate_restarts=-1)


def test_prompts_follow_the_mask():
    masks = torch.zeros(2, 1, 64, 64)
    masks[0, 0, 10:30, 20:50] = 1
    boxes = prompts.boxes_from_masks(masks)
    assert boxes[0].tolist() == [20, 10, 50, 30]
    coords, labels = prompts.points_from_masks(masks, 10)
    xs, ys = coords[0, :, 0].long(), coords[0, :, 1].long()
    assert masks[0, 0, ys, xs].all() and (labels[0] == 1).all()
    assert (labels[1] == -1).all()  # the empty mask gets padding points only
    torch.manual_seed(0)  # noisy_masks draws from torch's global generator
    noisy = prompts.noisy_masks(masks)[0, 0]
    inter, union = (noisy * masks[0, 0]).sum(), ((noisy + masks[0, 0]) > 0).sum()
    assert 0.5 < inter / union < 1.0


def test_importance_sampling_prefers_uncertain_points():
    logits = torch.full((1, 1, 32, 32), 10.0)
    logits[..., :, 16:] = 0.0  # right half uncertain
    coords = uncertain_points(logits, 100, 3.0, 0.75)
    assert (coords[0, :75, 0] >= 0.5).float().mean() > 0.95


def _write_set(images, masks, count: int) -> None:
    os.makedirs(images, exist_ok=True)
    os.makedirs(masks, exist_ok=True)
    for k in range(count):
        Image.new("RGB", (16, 16)).save(os.path.join(images, f"{k}.jpg"))
        Image.new("L", (16, 16), 255).save(os.path.join(masks, f"{k}.png"))


def test_folder_sets_and_hqseg44k_leave_validation_sets_out(tmp_path, caplog):
    """HQSeg-44K's layout (SAM-HQ's train.py): its training sets, not its validation sets."""
    root = tmp_path / "data"
    _write_set(root / "DIS5K/DIS-TR/im", root / "DIS5K/DIS-TR/gt", 2)
    _write_set(root / "DIS5K/DIS-VD/im", root / "DIS5K/DIS-VD/gt", 3)
    thin = root / "thin_object_detection"
    _write_set(thin / "ThinObject5K/images_train", thin / "ThinObject5K/masks_train", 2)
    _write_set(thin / "ThinObject5K/images_test", thin / "ThinObject5K/masks_test", 3)
    _write_set(thin / "COIFT/images", thin / "COIFT/masks", 1)  # a validation set by name only
    for name in ("fss_all", "DUTS-TR", "DUTS-TE", "ecssd", "MSRA_10K"):  # side by side
        _write_set(root / "cascade_psp" / name, root / "cascade_psp" / name, 1)
    photos = root / "photos"  # the same photos as JPEG and PNG: no masks
    photos.mkdir()
    Image.new("RGB", (16, 16)).save(photos / "a.jpg")
    Image.new("RGB", (16, 16)).save(photos / "a.png")
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        found = load_pairs(str(root))
    assert len(found) == 2 + 2 + 1 + 5  # DIS-TR, images_train, COIFT, cascade_psp
    assert not any(("DIS-VD" in p.image or "_test" in p.image) for p in found)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert f"hqseg44k:{root} takes its training sets only" in warnings[0]
    left_out = warnings[1:]
    assert len(left_out) == 2 and all("validation or test split" in m for m in left_out)
    assert "DIS5K/DIS-TR/im: 2 pairs" in caplog.text
    hqseg = load_pairs(f"hqseg44k:{root}")
    assert len(hqseg) == 2 + 2 + 5 and not any("COIFT" in p.image for p in hqseg)
    with pytest.raises(ValueError, match="no DIS5K/DIS-TR/im, .*HQSeg-44K's data folder"):
        load_pairs(f"hqseg44k:{tmp_path / 'nowhere'}")


def test_folder_sets_and_fiftyone_sources(tmp_path, sample_dataset, caplog):
    _write_set(tmp_path / "DIS-TR/im", tmp_path / "DIS-TR/gt", 2)
    _write_set(tmp_path / "DUTS/DUTS-TR-Image", tmp_path / "DUTS/DUTS-TR-Mask", 2)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        assert len(load_pairs(str(tmp_path))) == 4
    assert "HQSeg-44K" not in caplog.text  # not its layout: no advice
    instances = load_pairs("fiftyone:unseg-test-samples:instances")
    assert len(instances) == sample_dataset.count("instances.detections")
    semantic = load_pairs("fiftyone:unseg-test-samples:ground_truth")
    assert len(semantic) == sum(
        len(set(np.unique(np.asarray(Image.open(s.ground_truth.mask_path)))) - {0})
        for s in sample_dataset
    )
    with pytest.raises(ValueError, match="'unseg-test-samples' holds StringField in 'style'"):
        load_pairs("fiftyone:unseg-test-samples:style")
    with pytest.raises(ValueError, match="has no field 'nope'; .*'instances': 'Detections'"):
        load_pairs("fiftyone:unseg-test-samples:nope")
    for spec in ("sample:many", "sample:", "sample:4:0:photo:big"):
        with pytest.raises(ValueError, match=f"data source '{spec}': expected sample:NUM"):
            load_pairs(spec)


def test_a_fiftyone_source_trains_on_the_originals_not_the_protected_copies(
    sample_dataset, tmp_path
):
    dataset = sample_dataset.clone("trainer-replaced")
    sample = dataset.first()
    copy = tmp_path / "protected.png"
    Image.open(sample.filepath).save(copy)
    original = sample.filepath
    sample["original_filepath"], sample.filepath = original, str(copy)  # as protect does
    sample.save()
    images = {p.image for p in load_pairs("fiftyone:trainer-replaced:instances")}
    assert original in images and str(copy) not in images
    # as protect prompts: a box without a mask is its filled box, polylines are filled
    sample = dataset.first()
    sample["boxes"] = fo.Detections(
        detections=[fo.Detection(label="x", bounding_box=[0.25, 0.25, 0.5, 0.5])]
    )
    sample["shapes"] = fo.Polylines(
        polylines=[
            fo.Polyline(points=[[(0.1, 0.1), (0.4, 0.1), (0.4, 0.4)]], closed=True, filled=True)
        ]
    )
    sample.save()
    # a clone of the labels alone reads the copies as its images: they are left out
    clone = dataset.select_fields("instances").clone("trainer-replaced-clone")
    marked = tmp_path / "marked.png"
    pixels = np.asarray(Image.open(original).convert("RGB"))
    marked.write_bytes(encode_marked(pixels, clone.first().id))
    first = clone.first()
    first.filepath = str(marked)
    first.save()
    images = {p.image for p in load_pairs("fiftyone:trainer-replaced-clone:instances")}
    assert str(marked) not in images and len(images) == len(clone) - 1
    clone.delete()
    (box,) = load_pairs("fiftyone:trainer-replaced:boxes")
    mask = np.asarray(Image.open(box.mask)) > 0
    assert mask.mean() == pytest.approx(0.25, abs=0.02) and mask[mask.shape[0] // 2].any()
    assert len(load_pairs("fiftyone:trainer-replaced:shapes")) == 1
    dataset.delete()


def test_fiftyone_sources_of_one_dataset_keep_their_own_masks(sample_dataset):
    """A saved view's masks are cached apart: loading it prunes nothing the whole
    dataset's pairs use."""
    dataset = sample_dataset.clone("trainer-views")
    label = dataset.distinct("instances.detections.label")[0]
    dataset.save_view(
        "one_class", dataset.filter_labels("instances", fo.ViewField("label") == label)
    )
    everything = load_pairs("fiftyone:trainer-views:instances")
    some = load_pairs("fiftyone:trainer-views@one_class:instances")
    assert 0 < len(some) < len(everything)
    assert all(os.path.isfile(p.mask) for p in everything + some)
    # FiftyOne allows ":" and "@" in dataset names: a dataset of the whole name comes first
    named = sample_dataset.limit(2).clone("trainer-views@one_class:v2")
    pairs = load_pairs("fiftyone:trainer-views@one_class:v2:instances")
    assert len(pairs) == named.count("instances.detections")
    assert all(os.path.isfile(p.mask) for p in everything + some + pairs)
    assert _fiftyone_spec("fiftyone:trainer-views@one_class:v2") == (named.name, None, None)
    assert _fiftyone_spec("fiftyone:trainer-views@one_class:instances") == (
        "trainer-views",
        "one_class",
        "instances",
    )
    named.delete()


def test_fiftyone_segmentation_regions_are_colours_at_image_size_and_follow_edits(tmp_path):
    """RGB / palette masks: one region per colour (not per red value), stretched over the
    image as protect does, and exported anew when a mask file is edited in place."""
    image = tmp_path / "image.png"
    Image.new("RGB", (12, 8)).save(image)
    colours = np.array([[255, 0, 0], [255, 255, 0], [0, 0, 255]], np.uint8)
    half = np.repeat(np.arange(3), 2)[None].repeat(4, 0)  # 4x6: thirds of the width
    rgb_path, palette_path = tmp_path / "rgb.png", tmp_path / "palette.png"
    Image.fromarray(colours[half]).save(rgb_path)
    palette = Image.fromarray(np.arange(1, 3).repeat(6)[None].repeat(8, 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, *colours[:2].ravel()])
    palette.save(palette_path)
    dataset = fo.Dataset("trainer-rgb-masks", overwrite=True)
    dataset.add_samples(
        [
            fo.Sample(filepath=str(image), gt=fo.Segmentation(mask_path=str(p)))
            for p in (rgb_path, palette_path)
        ]
    )

    def regions() -> list:
        pairs = load_pairs("fiftyone:trainer-rgb-masks:gt")
        assert len(PairDataset(pairs, 32, augment=False).pairs) == len(pairs)  # none skipped
        masks = [np.asarray(Image.open(p.mask)) > 0 for p in pairs]
        assert all(m.shape == (8, 12) and m.sum() == 8 * m.all(0).sum() for m in masks)
        return sorted(tuple(np.flatnonzero(m[0])) for m in masks)

    thirds = [tuple(range(k, k + 4)) for k in (0, 4, 8)]
    halves = [tuple(range(0, 6)), tuple(range(6, 12))]
    assert regions() == sorted(thirds + halves)
    Image.fromarray(colours[half % 2]).save(rgb_path)  # blue becomes red, in place
    assert regions() == sorted([(0, 1, 2, 3, 8, 9, 10, 11), thirds[1], *halves])
    cache = os.path.dirname(load_pairs("fiftyone:trainer-rgb-masks:gt")[0].mask)
    assert len(os.listdir(cache)) == 4  # the masks of the old colours are gone
    other = fo.Sample(filepath=str(image), gt=fo.Segmentation(mask_path=str(palette_path)))
    dataset.add_sample(other)
    dataset.limit(1).set_field("gt", None).save()  # the first sample loses its label
    pairs = load_pairs("fiftyone:trainer-rgb-masks:gt")
    assert sorted(os.listdir(cache)) == sorted(os.path.basename(p.mask) for p in pairs)
    assert len(pairs) == 4  # the first sample's masks are gone with its label


def test_validation_split_is_the_same_wherever_the_data_lies(tmp_path):
    names = [f"set/images/{k:03d}.png" for k in range(200)]
    here = [folders.Pair(str(tmp_path / "a" / n), "") for n in names]
    there = [folders.Pair(str(tmp_path / "b" / "deeper" / n), "") for n in names]
    train, val = split_pairs(here, 0.25)
    _, moved_val = split_pairs(there, 0.25)
    assert [p.image[-7:] for p in val] == [p.image[-7:] for p in moved_val]
    assert 30 < len(val) < 70 and len(train) + len(val) == 200
    # Removing other images leaves each remaining image on its side.
    kept = here[::2]
    assert split_pairs(kept, 0.25)[1] == [p for p in val if p in kept]
    # Another set name is another draw.
    other = [folders.Pair(str(tmp_path / "a" / n.replace("set", "other")), "") for n in names]
    assert [p.image[-7:] for p in split_pairs(other, 0.25)[1]] != [p.image[-7:] for p in val]


def test_bad_pairs_are_skipped_and_reported(tmp_path):
    im, gt = tmp_path / "im", tmp_path / "gt"
    im.mkdir()
    gt.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(im / "good.jpg")
    Image.new("L", (32, 32), 255).save(gt / "good.png")
    (im / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.new("L", (32, 32), 255).save(gt / "corrupt.png")
    Image.new("RGB", (32, 32)).save(im / "mismatch.jpg")
    Image.new("L", (16, 16), 255).save(gt / "mismatch.png")
    data = PairDataset(folders.find_pairs(str(im), str(gt)), 32, augment=True)
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 32, 32) and mask.sum() > 0
    reasons = {os.path.basename(p.image): why for p, why in data.skipped.items()}
    assert set(reasons) == {"corrupt.jpg", "mismatch.jpg"}
    assert "cannot decode" in reasons["corrupt.jpg"] and "16x16" in reasons["mismatch.jpg"]


def test_resize_and_pad_keeps_aspect_ratio():
    from trainer.data import resize_and_pad

    image = torch.rand(3, 100, 200)
    mask = torch.zeros(1, 100, 200)
    mask[:, 20:60, 50:150] = 1
    img, m = resize_and_pad(image, mask, 64)
    assert img.shape == (3, 64, 64) and m.shape == (1, 64, 64)
    assert img[:, 33:].abs().sum() == 0  # the 2:1 image fills the top 32 rows only
    ys, xs = torch.nonzero(m[0], as_tuple=True)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 18, 16, 47)
    big, _ = resize_and_pad(image, mask, 64, scale=1.5)
    assert big.shape == (3, 96, 96)


def test_simulated_countermeasures_match_the_real_ones_and_pass_gradients():
    """The trainer's differentiable JPEG / blur / downscale follow the audit's real ones."""
    from fiftyone_unseg.audit.countermeasures import Countermeasure
    from fiftyone_unseg.sample_data import make_scene
    from trainer import eot

    image = make_scene(0, 3, 128).image
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).requires_grad_(True)
    for simulated, real in (
        (eot.jpeg(x, 75), "jpeg:75"),
        (eot.blur(x, 1.0), "blur:1.0"),
        (eot.downscale(x, 0.5), "downscale:0.5"),
        (eot.grayscale(x), "grayscale"),
    ):
        actual = Countermeasure.parse(real)(image).astype(float)
        ours = simulated[0].detach().permute(1, 2, 0).numpy() * 255
        change = np.abs(actual - image).mean()
        assert np.abs(ours - actual).mean() < 0.35 * change, real
        (grad,) = torch.autograd.grad(simulated.sum(), x)
        assert grad.abs().mean() > 0.1, real
    torch.manual_seed(0)
    assert torch.equal(eot.random_countermeasure(x, ["blur"], p=0.0), x)
    assert not torch.equal(eot.random_countermeasure(x, ["blur"], p=1.0), x)
    with pytest.raises(ValueError, match="eot counter-measures"):
        TrainConfig(eot=["sharpen"])


def test_countermeasures_keep_small_noise_under_bfloat16_autocast():
    """On a GPU the trainer runs under bfloat16 autocast; the JPEG stand-in's colour and
    DCT products must still run in float32, or their rounding (up to several /255) is as
    large as the noise that survives them."""
    from fiftyone_unseg.sample_data import make_scene
    from trainer import eot

    image = torch.from_numpy(make_scene(0, 3, 64).image).permute(2, 0, 1)[None].float() / 255
    x = (image + (8 / 255) * torch.randn_like(image).sign()).clamp(0, 1)
    random.seed(0)
    exact = eot.random_countermeasure(x, ["jpeg"], p=1.0)
    random.seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = eot.random_countermeasure(x, ["jpeg"], p=1.0)
    assert under_autocast.dtype == torch.float32
    assert (under_autocast - exact).abs().max() < 1e-5


def test_countermeasures_at_the_published_size_act_on_the_published_image():
    """With ``eot_scale`` the image is enlarged before its counter-measure, as a protected
    image is published larger than the generator's side: a blur sigma then spans fewer
    generator pixels, so the noise keeps more of its amplitude than at the generator's side."""
    from trainer import eot

    torch.manual_seed(0)
    noise = F.interpolate(torch.randn(1, 3, 32, 32).sign(), scale_factor=2)  # 2 px blocks
    x = (0.5 + 0.1 * noise).requires_grad_(True)
    random.seed(1)
    at_side = eot.random_countermeasure(x, ["blur"], p=1.0)
    random.seed(1)
    published = eot.random_countermeasure(x, ["blur"], p=1.0, scale=(2.5, 2.5))
    assert published.shape == x.shape
    kept = [float((y - 0.5).abs().mean() / 0.1) for y in (at_side, published)]
    assert kept[1] > kept[0] + 0.15, kept
    (grad,) = torch.autograd.grad(published.sum(), x)
    assert grad.abs().mean() > 0.1
    with pytest.raises(ValueError, match="eot_scale"):
        TrainConfig(eot=["blur"], eot_scale=(0, 1.0))


def test_surrogate_restarts_from_fresh_weights_when_asked(tmp_path):
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    cfg = micro_config(max_steps=8, surrogate_reset_every=1, log_every=1, lr_drop_at=4)
    t = Trainer(cfg, str(tmp_path / "a"), ctx)
    starts = {}
    reset = t._reset_surrogate

    def recording_reset(seed):
        reset(seed)
        starts[seed] = {k: v.clone() for k, v in t.surrogate.state_dict().items()}

    t._reset_surrogate = recording_reset
    t.run()
    block_1 = cfg.seed + 1000 + 1  # blocks 0 and 1 of 2 + 2 steps; block 0 is fresh anyway
    assert sorted(starts) == [block_1]
    # The restart is a newly initialised surrogate: the same on every process (seeded by
    # the block), not the weights block 0 trained.
    again = Trainer(cfg, str(tmp_path / "b"), ctx)
    again._reset_surrogate(block_1)
    assert all(torch.equal(v, again.surrogate.state_dict()[k]) for k, v in starts[block_1].items())
    trained = t.surrogate.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in starts[block_1].items())
    assert not t.opt_surrogate.state or all(
        s["step"] <= 2 for s in t.opt_surrogate.state.values()
    )  # its optimiser restarted with it (2 surrogate steps since)
    # After the drop at bilevel step 4 the generator learns 10x slower; each fresh
    # surrogate still learns at its full rate (at a tenth, one learnt nothing in 150 steps).
    assert t.opt_generator.param_groups[0]["lr"] == pytest.approx(cfg.lr * cfg.lr_gamma)
    assert t.opt_surrogate.param_groups[0]["lr"] == pytest.approx(t.surrogate_lr)
    steady = Trainer(micro_config(max_steps=8, lr_drop_at=4), str(tmp_path / "c"), ctx)
    steady.run()
    assert steady.opt_surrogate.param_groups[0]["lr"] == pytest.approx(
        steady.surrogate_lr * cfg.lr_gamma
    )


def test_resume_after_a_crash_logs_each_step_once_and_clears_stale_temp_dirs(tmp_path):
    out = str(tmp_path / "run")
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    cfg = micro_config(max_steps=6, checkpoint_every=4, log_every=1)
    crashing = Trainer(cfg, out, ctx)
    real_step = crashing._surrogate_step

    def crash_in_step_6(images, masks):
        if crashing.step == 5:  # checkpoint 4 written, rows 1-5 logged
            os.makedirs(os.path.join(crashing.checkpoint_root, "step_00000006.tmp-999999"))
            raise KeyboardInterrupt
        return real_step(images, masks)

    crashing._surrogate_step = crash_in_step_6
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    assert [int(r["step"]) for r in _metrics(out)] == [1, 2, 3, 4, 5]
    summary = Trainer(cfg, out, ctx).run(resume=True)  # resumes at 4: step 5 runs again
    assert summary["steps"] == 6
    assert [int(r["step"]) for r in _metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert not [d for d in os.listdir(os.path.join(out, "checkpoints")) if ".tmp-" in d]


def _folder_pairs(tmp_path, count: int, has_object) -> str:
    """``count`` 32 px image/mask pairs in folders (``--data IMAGES:MASKS``), pair ``k``'s
    mask a square where ``has_object(k)``, else empty."""
    im, gt = tmp_path / "im", tmp_path / "gt"
    im.mkdir()
    gt.mkdir()
    square = np.zeros((32, 32), np.uint8)
    square[8:24, 8:24] = 255
    for k in range(count):
        Image.new("RGB", (32, 32), (15 * k, 90, 30)).save(im / f"{k:02d}.jpg")
        Image.fromarray(square * bool(has_object(k))).save(gt / f"{k:02d}.png")
    return f"{im}:{gt}"


def test_pairs_skipped_in_dataloader_workers_reach_the_summary(tmp_path):
    # every third mask empty: found only when read, in a worker
    data = _folder_pairs(tmp_path, 12, lambda k: k % 3)
    cfg = micro_config(data=[data], num_workers=2, max_steps=8, val_fraction=0.1)
    trainer = Trainer(cfg, str(tmp_path / "run"), distributed.Context(0, 1, torch.device("cpu")))
    empty = {
        p.mask for p in trainer.train_data.pairs if int(os.path.basename(p.mask)[:-4]) % 3 == 0
    }
    summary = trainer.run()
    assert empty and set(summary["skipped_pairs"]) == empty
    assert all("mask is empty" in why for why in summary["skipped_pairs"].values())


def test_negatives_with_empty_masks_are_left_out_of_the_evaluation_sets(tmp_path):
    # negatives first: the sorted pairs an evaluation set used to take
    data = _folder_pairs(tmp_path, 16, lambda k: k >= 10)
    cfg = micro_config(data=[data], max_steps=2, val_every=1, val_images=2)
    trainer = Trainer(cfg, str(tmp_path / "run"), distributed.Context(0, 1, torch.device("cpu")))
    for data in trainer.eval_sets.values():
        assert len(data) == 2 and all(int(os.path.basename(p.mask)[:-4]) >= 10 for p in data.pairs)
    summary = trainer.run()  # evaluated at every step
    assert 0 <= summary["iou_train_clean"] <= 1
