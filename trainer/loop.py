"""The bilevel training loop of UnSeg (with an optional pretraining stage).

    min_theta  L( S_phi*(x + G_theta(x, p)), y' )   s.t.  phi* = argmin_phi L( S_phi(x + G_theta(x, p)), y )

Global steps ``[0, pretrain_steps)`` pretrain the generator's SAM part as an ordinary
promptable segmenter; the bilevel stage follows, alternating surrogate and generator
phases. Checkpoints hold everything needed to resume at the exact step.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from io import StringIO

import safetensors.torch
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fiftyone_unseg import io
from fiftyone_unseg.checkpoint import (
    CONFIG_FILE,
    clear_run_outputs,
    fsync_path,
    save_generator,
)
from fiftyone_unseg.modeling import NoiseGenerator, build_noise_generator
from fiftyone_unseg.modeling.build import load_state_file
from trainer import distributed
from trainer.config import TrainConfig, init_generator
from trainer.data import (
    PairDataset,
    collate_reporting_skips,
    evaluation_pairs,
    load_pairs,
    split_pairs,
)
from trainer.eot import random_countermeasure
from trainer.losses import mask_iou, mask_loss, shared_texture_share
from trainer.prompts import (
    Prompts,
    boxes_from_masks,
    sample_generator_prompts,
    sample_surrogate_prompts,
)
from trainer.surrogate import make_surrogate

logger = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "step",
    "stage",
    "phase",
    "loss_pretrain",
    "loss_surrogate",
    "loss_generator",
    "lr",
    "samples_per_s",
    "iou_train_clean",
    "iou_train_perturbed",
    "iou_val_clean",
    "iou_val_perturbed",
    "texture_share_train",
    "texture_share_val",
)
# A surrogate whose box-prompted IoU on clean validation images stays under this predicts
# (almost) nothing: the generator then learns against a model that never learned the masks.
DEAD_SURROGATE_IOU = 0.01


def resize_masks(masks: torch.Tensor, side: int) -> torch.Tensor:
    """Binary masks Bx1xHxW -> Bx1xside x side in {0, 1} (area average, then threshold)."""
    if masks.shape[-1] == side:
        return masks
    return (F.interpolate(masks, size=(side, side), mode="area") > 0.5).float()


def generator_inputs(prompts: Prompts, side: int) -> dict:
    """``NoiseGenerator`` keyword arguments from prompts in its input frame of ``side`` px."""
    masks = None if prompts.masks is None else resize_masks(prompts.masks, side // 4)
    return {"boxes": prompts.boxes, "points": prompts.points, "mask_prompts": masks}


@dataclasses.dataclass
class Schedule:
    """Phase lengths and totals in steps."""

    pretrain: int
    surrogate: int
    generator: int
    bilevel: int
    lr_drop: int

    @property
    def total(self) -> int:
        return self.pretrain + self.bilevel

    def block(self, step: int) -> int:
        """Index of the surrogate + generator block of a bilevel step (-1 in pretraining)."""
        return (
            -1
            if step < self.pretrain
            else (step - self.pretrain) // (self.surrogate + self.generator)
        )

    def block_start(self, block: int) -> int:
        """The first step of bilevel block ``block``."""
        return self.pretrain + block * (self.surrogate + self.generator)

    def phase(self, step: int) -> str:
        if step < self.pretrain:
            return "pretrain"
        position = (step - self.pretrain) % (self.surrogate + self.generator)
        return "surrogate" if position < self.surrogate else "generator"

    def lr_factor(self, step: int, gamma: float) -> float:
        return gamma if step - self.pretrain >= self.lr_drop else 1.0

    def surrogate_steps(self, done: int, reset_every: int) -> int:
        """Surrogate steps among the first ``done`` steps since the surrogate last started
        afresh (every ``reset_every`` blocks; 0: never)."""
        if done <= self.pretrain:
            return 0
        block = self.block(done - 1)
        first = (block // reset_every) * reset_every if reset_every else 0
        into = done - self.block_start(block)
        return (block - first) * self.surrogate + min(into, self.surrogate)


class Trainer:
    """Owns the models, optimisers, data and logs of one training run in ``out_dir``."""

    def __init__(self, cfg: TrainConfig, out_dir: str, ctx: distributed.Context):
        self.cfg, self.out_dir, self.ctx = cfg, out_dir, ctx
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed + ctx.rank)
        self.gen_config = cfg.generator_config()
        # Built unfrozen; freezing follows the stage (see _enter_stage).
        self.generator = build_noise_generator(
            dataclasses.replace(self.gen_config, freeze_backbone=False), cfg.sam_checkpoint
        ).to(ctx.device)
        self.init_record = None  # the generator this run starts from, for the lineage
        if cfg.init:  # adapting a trained generator: its weights, this run's data
            start = init_generator(cfg.init)
            self.generator.load_state_dict(start.state_dict())
            self.init_record = {"generator_id": start.generator_id, **start.metadata}
        self.surrogate = self._new_surrogate().to(ctx.device)
        self.side = self.generator.img_size
        self.surrogate_side = self.surrogate.img_size

        if not cfg.data:
            raise ValueError("no training data: give --data (folders, fiftyone:DATASET, ...)")
        pairs = []
        for first in (True, False):  # the main process writes any cache, then the others read it
            if ctx.is_main == first:
                pairs = [p for spec in cfg.data for p in load_pairs(spec)]
            distributed.barrier(ctx)
        distributed.check_same(ctx, len(pairs), "training pairs found")
        train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction)
        self.train_data = PairDataset(
            train_pairs,
            self.side,
            augment=True,
            scale_range=cfg.scale_range,
            hflip=cfg.hflip,
            object_context=cfg.object_context,
        )
        self.eval_sets = {  # fixed images, no augmentation
            name: PairDataset(pairs, self.side, False, object_context=cfg.object_context)
            for name, pairs in (
                ("train", evaluation_pairs(train_pairs, cfg.val_images)),
                ("val", evaluation_pairs(val_pairs, cfg.val_images)),
            )
            if pairs
        }
        self.sampler = DistributedSampler(
            self.train_data,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        if len(self.sampler) == 0:
            raise ValueError(
                f"{len(self.train_data)} training pairs are fewer than one per process x "
                f"{ctx.world_size} processes: give more data"
            )
        # A small dataset (a few objects to adapt to) trains on all of its pairs at once.
        self.batch_size = min(cfg.batch_size, len(self.sampler))
        self.small_batch = None  # the summary's warning when the batch shrank
        if self.batch_size < cfg.batch_size:
            self.small_batch = (
                f"{len(self.train_data)} training pairs are fewer than one batch of "
                f"{cfg.batch_size} per process x {ctx.world_size} processes: trained on "
                f"batches of {self.batch_size}; more data (objects) adapts the noise better"
            )
            logger.warning(self.small_batch)
        self.steps_per_epoch = len(self.sampler) // self.batch_size
        self.schedule = self._schedule()
        self.surrogate_lr = cfg.lr if cfg.surrogate_lr is None else cfg.surrogate_lr
        self.opt_surrogate = torch.optim.Adam(self.surrogate.parameters(), lr=self.surrogate_lr)
        self.opt_generator = None
        self.stage = None
        self.step = 0
        self.warnings = []  # what the run's summary warns about (see _watch_surrogate)
        self.restarts = 0  # of a surrogate that predicted nothing (cfg.surrogate_restarts)
        self.restarted_at = 0  # the step of the last restart
        self.last_evaluation = (None, {})  # (step, scores) of the latest evaluate()
        self.end_found = None  # what _dead_surrogate found at the last step, before a restart
        if ctx.world_size > 1:  # the models are built alike (and DDP broadcasts rank 0's);
            torch.manual_seed(cfg.seed + ctx.rank)  # loss points and prompt noise are not

    # -- set-up -------------------------------------------------------------------------

    def _schedule(self) -> Schedule:
        cfg, unit = self.cfg, (self.steps_per_epoch if self.cfg.unit == "epochs" else 1)
        if cfg.unit == "epochs":
            bilevel = cfg.epochs * self.steps_per_epoch
        elif cfg.max_steps is None:
            raise ValueError('unit "steps" needs max_steps')
        else:
            bilevel = cfg.max_steps
        if cfg.max_steps is not None:
            bilevel = min(bilevel, cfg.max_steps)
        return Schedule(
            pretrain=cfg.pretrain_steps,
            surrogate=cfg.surrogate_phase * unit,
            generator=cfg.generator_phase * unit,
            bilevel=bilevel,
            lr_drop=cfg.lr_drop_at * unit,
        )

    def _wrap(self, module):
        if not self.ctx.distributed:
            return module
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    def _stage_for(self, step: int) -> str:
        return "pretrain" if step < self.schedule.pretrain else "bilevel"

    def _enter_stage(self, stage: str) -> None:
        """Set which generator parameters train, and the optimiser and wrappers that follow.

        Pretraining trains SAM's parts (not the noise head); the bilevel stage trains the
        noise head, plus the backbone unless the generator config freezes it.
        """
        if stage == self.stage:
            return
        self.generator.requires_grad_(True)
        if stage == "pretrain":
            for p in self.generator.noise_head_parameters():
                p.requires_grad_(False)
        elif self.gen_config.freeze_backbone:
            self.generator.freeze_backbone()
        params = [p for p in self.generator.parameters() if p.requires_grad]
        self.opt_generator = torch.optim.Adam(params, lr=self._base_lr(stage))
        self.generator_ddp = self._wrap(self.generator)
        self.surrogate_ddp = self._wrap(self.surrogate)
        self.stage = stage

    def _base_lr(self, stage: str) -> float:
        return self.cfg.pretrain_lr if stage == "pretrain" else self.cfg.lr

    def _batches(self):
        """Training batches from the current step on, epoch after epoch."""
        while True:
            epoch, offset = divmod(self.step - self._stage_start(), self.steps_per_epoch)
            self.sampler.set_epoch(epoch + (1000 if self.stage == "pretrain" else 0))
            indices = list(self.sampler)
            # Each item's augmentation seed is fixed by its place in the epoch, so a run
            # resumed mid-epoch crops as an uninterrupted one, with or without workers; the
            # loader's own generator leaves torch's stream to the training.
            seeds = torch.Generator().manual_seed(
                (self.cfg.seed * 100_003 + epoch) * 1_000 + self.ctx.rank
            )
            item_seeds = torch.randint(0, 2**31, (len(indices),), generator=seeds).tolist()
            items = list(zip(indices, item_seeds))[offset * self.batch_size :]
            loader = DataLoader(
                self.train_data,
                batch_size=self.batch_size,
                sampler=items,
                drop_last=True,
                num_workers=self.cfg.num_workers,
                collate_fn=collate_reporting_skips,
                generator=seeds,
            )
            for images, masks, skipped in loader:
                self.train_data.skipped.update(skipped)  # what the workers' copies found
                yield images.to(self.ctx.device), masks.to(self.ctx.device)

    def _stage_start(self) -> int:
        return 0 if self.stage == "pretrain" else self.schedule.pretrain

    def _autocast(self):
        enabled = self.cfg.amp and self.ctx.device.type == "cuda"
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _new_surrogate(self):
        cfg = self.cfg
        return make_surrogate(cfg.surrogate, cfg.surrogate_img_size, cfg.surrogate_config)

    def _starts_reset_block(self, step: int) -> bool:
        """Whether ``step`` opens a block whose surrogate starts afresh
        (``cfg.surrogate_reset_every``)."""
        every, block = self.cfg.surrogate_reset_every, self.schedule.block(step)
        return (
            every > 0
            and block > 0
            and block % every == 0
            and step == self.schedule.block_start(block)
        )

    def _cuda_devices(self) -> list:
        """The devices whose random streams ``fork_rng`` must keep: this process's GPU."""
        return [self.ctx.device] if self.ctx.device.type == "cuda" else []

    def _reset_surrogate(self, seed: int) -> None:
        """Re-initialise the surrogate (the same weights from ``seed`` on every process) and
        its optimiser: every ``cfg.surrogate_reset_every`` blocks, so the generator's noise
        must be learnable from scratch, not by one co-adapted model, and on a restart."""
        with torch.random.fork_rng(devices=self._cuda_devices()):  # manual_seed seeds CUDA
            torch.manual_seed(seed)
            fresh = self._new_surrogate()
        self.surrogate.load_state_dict(fresh.state_dict())
        self.opt_surrogate = torch.optim.Adam(self.surrogate.parameters(), lr=self.surrogate_lr)

    # -- steps --------------------------------------------------------------------------

    def _loss(self, logits, targets) -> torch.Tensor:
        cfg = self.cfg
        return mask_loss(
            logits, targets, cfg.num_points, cfg.oversample_ratio, cfg.importance_ratio
        )

    def _perturb_for_surrogate(self, generator, images, masks, prompts: Prompts, eot=True):
        """Perturbed images at the surrogate's size (through a random counter-measure of
        ``cfg.eot`` with probability ``cfg.eot_p`` when ``eot``), its masks and the noise
        (Bx3xHxW in [-1, 1], before the budget)."""
        noise = generator(images, **generator_inputs(prompts, self.side))
        perturbed = NoiseGenerator.perturb(
            images, noise, masks, self.cfg.eps_train, self.cfg.eps_bg_train
        )
        if eot:
            perturbed = random_countermeasure(
                perturbed, self.cfg.eot, self.cfg.eot_p, self.cfg.eot_scale
            )
        if self.surrogate_side != self.side:
            perturbed = F.interpolate(
                perturbed, size=(self.surrogate_side,) * 2, mode="bilinear", antialias=True
            )
        return perturbed, resize_masks(masks, self.surrogate_side), noise

    def _texture_share(self, noise, masks) -> torch.Tensor:
        return shared_texture_share(noise, masks, self.gen_config.vit_patch_size)

    def _pretrain_step(self, images, masks) -> float:
        prompts = sample_surrogate_prompts(masks, self.cfg.prompt_points)
        with self._autocast():
            _, logits = self.generator_ddp(
                images, **generator_inputs(prompts, self.side), with_mask_logits=True
            )
            loss = self._loss(logits, masks)
        self.opt_generator.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_generator.step()
        return loss.item()

    def _surrogate_step(self, images, masks) -> float:
        prompts = sample_generator_prompts(masks, self.cfg.prompt_points)
        with torch.no_grad(), self._autocast():
            perturbed, s_masks, _ = self._perturb_for_surrogate(
                self.generator, images, masks, prompts
            )
        with self._autocast():
            logits = self.surrogate_ddp(
                perturbed.float(), sample_surrogate_prompts(s_masks, self.cfg.prompt_points)
            )
            loss = self._loss(logits, s_masks)
        self.opt_surrogate.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_surrogate.step()
        return loss.item()

    def _generator_step(self, images, masks) -> float:
        prompts = sample_generator_prompts(masks, self.cfg.prompt_points)
        with self._autocast():
            perturbed, s_masks, noise = self._perturb_for_surrogate(
                self.generator_ddp, images, masks, prompts
            )
            # The surrogate is frozen: run it unwrapped and leave its gradients alone.
            logits = self.surrogate(
                perturbed, sample_surrogate_prompts(s_masks, self.cfg.prompt_points)
            )
            label_modification = self.cfg.objective == "label_modification"
            loss = self._loss(logits, torch.ones_like(s_masks) if label_modification else s_masks)
            if self.cfg.shared_texture_weight:
                loss = loss + self.cfg.shared_texture_weight * self._texture_share(noise, masks)
        self.opt_generator.zero_grad(set_to_none=True)
        loss.backward(inputs=[p for g in self.opt_generator.param_groups for p in g["params"]])
        self.opt_generator.step()
        return loss.item()

    # -- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Surrogate IoU (box prompts) on clean vs perturbed images (training budget),
        drawing nothing from the training's random streams: how often the main process
        evaluates leaves the training as it is."""
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=self._cuda_devices()):
                return self._evaluate()
        finally:
            random.setstate(python_state)

    def _evaluate(self) -> dict:
        self.generator.eval()
        self.surrogate.eval()
        results = {}
        for name, data in self.eval_sets.items():
            clean, perturbed, shares = [], [], []
            for images, masks in DataLoader(data, batch_size=self.batch_size):
                images, masks = images.to(self.ctx.device), masks.to(self.ctx.device)
                prompts = Prompts(boxes=boxes_from_masks(masks), masks=masks)
                with self._autocast():
                    x_p, s_masks, noise = self._perturb_for_surrogate(
                        self.generator, images, masks, prompts, eot=False
                    )
                    shares.append(self._texture_share(noise, masks))
                    x_c = F.interpolate(
                        images, size=(self.surrogate_side,) * 2, mode="bilinear", antialias=True
                    )
                    box = Prompts(boxes=boxes_from_masks(s_masks))
                    clean.append(mask_iou(self.surrogate(x_c, box).float(), s_masks))
                    perturbed.append(mask_iou(self.surrogate(x_p.float(), box).float(), s_masks))
            results[f"iou_{name}_clean"] = torch.cat(clean).mean().item()
            results[f"iou_{name}_perturbed"] = torch.cat(perturbed).mean().item()
            results[f"texture_share_{name}"] = torch.stack(shares).mean().item()
        self.generator.train()
        self.surrogate.train()
        return results

    def _surrogate_trained(self) -> int:
        """Surrogate steps since the surrogate last started afresh (a reset or a restart)."""
        count, every = self.schedule.surrogate_steps, self.cfg.surrogate_reset_every
        since_restart = count(self.step, 0) - count(self.restarted_at, 0)
        return min(count(self.step, every), since_restart)

    def _dead_surrogate(self, scores: dict) -> str | None:
        """What is wrong when the surrogate predicts nothing on clean images (IoU below
        ``DEAD_SURROGATE_IOU``) after training since it started, else None."""
        split = "val" if "iou_val_clean" in scores else "train"
        iou = scores[f"iou_{split}_clean"]
        trained = self._surrogate_trained()
        if not trained or iou >= DEAD_SURROGATE_IOU:
            return None
        return (
            f"step {self.step}: the surrogate predicts nothing on clean {split} images (IoU "
            f"{iou:.3f} after {trained} surrogate steps since it started)"
        )

    def _advice(self, found: str) -> str:
        return (
            f"{found}, so the generator learns against a model that has not learned "
            "these masks; try a lower surrogate learning rate "
            f"(--set surrogate_lr={self.surrogate_lr / 3:.0e})"
        )

    def _watch_surrogate(self, scores: dict) -> bool:
        """Judge whether the surrogate predicts nothing, at each evaluation once two of its
        phases have passed since it started. The first time it does, the run restarts it
        (returns True: :meth:`_restart_surrogate`) while ``cfg.surrogate_restarts`` allow,
        else warns (log and summary) and stops watching; a restart is reported as a warning
        too. What it finds is saved with the checkpoints, so a run stopped and resumed
        judges as one that ran through (the end of a run judges apart: :meth:`_finish`)."""
        watching = len(self.warnings) == self.restarts  # no warning yet but the restarts'
        if not watching or self._surrogate_trained() < 2 * self.schedule.surrogate:
            return False
        found = self._dead_surrogate(scores)
        if found is None:
            return False
        restart = self.restarts < self.cfg.surrogate_restarts
        if restart:
            message = (
                f"{found}; restarted it from fresh weights at a third of its learning rate "
                f"(surrogate_lr {self.surrogate_lr / 3:.0e}; restart {self.restarts + 1} of "
                f"surrogate_restarts {self.cfg.surrogate_restarts})"
            )
        else:
            message = self._advice(found)
        logger.warning(message)
        self.warnings.append(message)
        return restart

    def _restart_surrogate(self) -> None:
        """Start the surrogate afresh at a third of its learning rate."""
        self.restarts += 1
        self.restarted_at = self.step
        self.surrogate_lr /= 3
        self._reset_surrogate(self.cfg.seed + 2000 + self.restarts)

    # -- checkpoints --------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> str:
        return os.path.join(self.out_dir, "checkpoints")

    def _generator_metadata(self) -> dict:
        """What the saved generator records: this run, and under ``init_generator`` the id
        and metadata of the generator it started from (so a fine-tune's whole lineage)."""
        cfg = self.cfg
        metadata = {
            "step": self.step,
            "eps_generate": cfg.eps_generate,
            "eps_bg_generate": cfg.eps_bg_generate,
            "objective": cfg.objective,
            "train_config": cfg.to_dict(),
        }
        if self.init_record:
            metadata["init_generator"] = self.init_record
        return metadata

    def rng_state(self) -> dict:
        """This process's random streams: Python's (prompts, counter-measures), torch's
        and, on a GPU, CUDA's."""
        state = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.ctx.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.ctx.device)
        return state

    def _set_rng_state(self, states: list) -> None:
        """Take this process's streams from ``states`` (one per process, by rank)."""
        state = states[min(self.ctx.rank, len(states) - 1)]
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.ctx.device)

    def save_checkpoint(self, rng_states: list | None = None) -> str:
        """Write ``checkpoints/step_N`` as a whole (temp dir + rename), then point
        ``checkpoints/latest`` at it; older checkpoints beyond ``keep_checkpoints`` go."""
        name = f"step_{self.step:08d}"
        final = os.path.join(self.checkpoint_root, name)
        tmp = final + f".tmp-{os.getpid()}"
        if os.path.isdir(self.checkpoint_root):  # ours, or left by a run that was killed
            for stale in os.listdir(self.checkpoint_root):
                if ".tmp-" in stale:
                    shutil.rmtree(os.path.join(self.checkpoint_root, stale), ignore_errors=True)
        os.makedirs(tmp)
        save_generator(
            self.generator,
            self.gen_config,
            os.path.join(tmp, "generator"),
            self._generator_metadata(),
        )
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in self.surrogate.state_dict().items()},
            os.path.join(tmp, "surrogate.safetensors"),
        )
        state = {
            "step": self.step,
            "stage": self.stage,
            "world_size": self.ctx.world_size,
            "train_pairs": len(self.train_data),
            "opt_surrogate": self.opt_surrogate.state_dict(),
            "opt_generator": self.opt_generator.state_dict(),
            "rng": rng_states or [self.rng_state()],  # one per process, by rank
            "warnings": self.warnings,
            "surrogate_lr": self.surrogate_lr,
            "restarts": self.restarts,
            "restarted_at": self.restarted_at,
        }
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
        for done in ("surrogate.safetensors", "trainer_state.pt", ""):  # on disk before
            fsync_path(os.path.join(tmp, done))  # ``latest`` names them (power loss)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(self.checkpoint_root)
        io.atomic_write_bytes(name.encode(), os.path.join(self.checkpoint_root, "latest"))
        kept = sorted(d for d in os.listdir(self.checkpoint_root) if d.startswith("step_"))
        for old in kept[: -self.cfg.keep_checkpoints]:
            if old != name and ".tmp-" not in old:
                shutil.rmtree(os.path.join(self.checkpoint_root, old), ignore_errors=True)
        return final

    def _latest_checkpoint(self) -> str | None:
        """The checkpoint ``checkpoints/latest`` names; None if there is none."""
        pointer = os.path.join(self.checkpoint_root, "latest")
        if not os.path.exists(pointer):
            return None
        with open(pointer) as f:
            return os.path.join(self.checkpoint_root, f.read().strip())

    def load_checkpoint(self, path: str) -> None:
        """Resume from the checkpoint at ``path``; ValueError if it was trained with a
        config that this one must not continue (:meth:`TrainConfig.resume_conflicts`), by
        another number of processes (where each step's data fall and the epochs' lengths
        follow it), on another number of training pairs (the data changed), or from a
        generator other than the one ``init`` now names."""
        with open(os.path.join(path, "generator", CONFIG_FILE)) as f:
            metadata = json.load(f)["metadata"]
        saved = metadata["train_config"]
        conflicts = self.cfg.resume_conflicts(saved)
        if conflicts:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in conflicts.items())
            raise ValueError(
                f"{path} was trained with another config ({changes}): resume with its "
                "config, start over with --overwrite (deletes its checkpoints) or choose "
                "another --out"
            )
        started = (metadata.get("init_generator") or {}).get("generator_id")
        starts = (self.init_record or {}).get("generator_id")
        if started != starts:
            raise ValueError(
                f"{path} continues a training from generator {started or 'none (fresh)'}, but "
                f"init {self.cfg.init!r} is now {starts or 'none'}: resume with the generator "
                "it started from, start over with --overwrite or choose another --out"
            )
        state_file = os.path.join(path, "trainer_state.pt")
        state = load_state_file(state_file, "trainer state")
        processes = state.get("world_size", len(state.get("rng", [None])))
        if processes != self.ctx.world_size:
            raise ValueError(
                f"{path} was trained by {processes} process(es), this run has "
                f"{self.ctx.world_size}: resume it with as many (torchrun --nproc-per-node), "
                "start over with --overwrite or choose another --out"
            )
        pairs = state.get("train_pairs", len(self.train_data))  # older checkpoints: unknown
        if pairs != len(self.train_data):
            raise ValueError(
                f"{path} was trained on {pairs} training pairs, --data now gives "
                f"{len(self.train_data)} (the data changed, and with them each step's images "
                "and the epochs' lengths): resume it with the same data, start over with "
                "--overwrite or choose another --out"
            )
        weights = safetensors.torch.load_file(
            os.path.join(path, "generator", "model.safetensors"), device=str(self.ctx.device)
        )
        self.generator.load_state_dict(weights)
        self.surrogate.load_state_dict(
            safetensors.torch.load_file(
                os.path.join(path, "surrogate.safetensors"), device=str(self.ctx.device)
            )
        )
        self.step = state["step"]
        self._enter_stage(state["stage"])
        self.opt_surrogate.load_state_dict(state["opt_surrogate"])
        self.opt_generator.load_state_dict(state["opt_generator"])
        if "rng" in state:
            self._set_rng_state(state["rng"])
        else:  # checkpoints from before every stream was kept
            torch.set_rng_state(state["torch_rng"])
        self.warnings = list(state.get("warnings", []))  # older checkpoints kept none
        self.surrogate_lr = state.get("surrogate_lr", self.surrogate_lr)
        self.restarts = state.get("restarts", 0)
        self.restarted_at = state.get("restarted_at", 0)

    # -- the loop -----------------------------------------------------------------------

    def _open_logs(self, resume: bool):
        """metrics.csv (appended to on resume, after dropping the rows of steps past the
        checkpoint, which are run again) and a TensorBoard writer, on rank 0."""
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(self.out_dir, exist_ok=True)
        config = json.dumps(self.cfg.to_dict(), indent=2).encode()
        io.atomic_write_bytes(config, os.path.join(self.out_dir, "train_config.json"))
        path = os.path.join(self.out_dir, "metrics.csv")
        append = resume and os.path.exists(path) and os.path.getsize(path) > 0
        if append:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
            text = StringIO()
            writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            io.atomic_write_bytes(text.getvalue().encode(), path)
        csv_file = open(path, "a" if append else "w", newline="")
        writer = csv.DictWriter(csv_file, fieldnames=METRIC_COLUMNS)
        if not append:
            writer.writeheader()
            csv_file.flush()  # a run killed before its first row still leaves the header
        events = os.path.join(self.out_dir, "tensorboard")
        if not resume and os.path.isdir(events):
            shutil.rmtree(events)  # a start afresh: the curves of an attempt killed early
        # on resume, the steps past the checkpoint are dropped there too, as from metrics.csv
        return csv_file, writer, SummaryWriter(events, purge_step=self.step + 1 if resume else None)

    def _log(self, row: dict) -> None:
        self.csv_writer.writerow(
            {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}
        )
        self.csv_file.flush()
        for key, value in row.items():
            if isinstance(value, float):
                self.tensorboard.add_scalar(key, value, row["step"])

    def run(self, resume: bool = False, overwrite: bool = False) -> dict:
        """Train to the end of the schedule; returns a summary (and writes ``generator/``).

        If ``out_dir`` holds checkpoints, ``resume`` continues from the newest and
        ``overwrite`` deletes the earlier training's outputs first; with neither,
        ValueError.
        """
        cfg, ctx = self.cfg, self.ctx
        if resume and overwrite:
            raise ValueError("choose --resume or --overwrite, not both")
        if overwrite:
            if ctx.is_main:
                clear_run_outputs(self.out_dir)
        elif latest := self._latest_checkpoint():
            if not resume:
                raise ValueError(
                    f"{self.out_dir} holds the checkpoints of an earlier training (newest "
                    f"{os.path.basename(latest)}): continue it with --resume, start over "
                    "with --overwrite (deletes them) or choose another --out"
                )
            self.load_checkpoint(latest)
            logger.info("resumed from step %d", self.step)
        elif finished := [
            n
            for n in ("generator", "summary.json")
            if os.path.exists(os.path.join(self.out_dir, n))
        ]:
            raise ValueError(
                f"{self.out_dir} holds an earlier training's {' and '.join(finished)} but no "
                "checkpoint to continue from: start over with --overwrite (deletes them) or "
                "choose another --out"
            )
        elif resume and ctx.is_main:
            logger.warning("no checkpoint in %s to resume from: starting at step 0", self.out_dir)
        distributed.check_same(ctx, self.step, "step to start from (do all see the same --out?)")
        self._enter_stage(self._stage_for(self.step))
        self.generator.train()
        self.surrogate.train()
        if ctx.is_main:
            self.csv_file, self.csv_writer, self.tensorboard = self._open_logs(resume)
        bar = tqdm(
            total=self.schedule.total, initial=self.step, disable=not ctx.is_main, unit="step"
        )
        steps = {
            "pretrain": self._pretrain_step,
            "surrogate": self._surrogate_step,
            "generator": self._generator_step,
        }
        started, start_step = time.perf_counter(), self.step
        batches = self._batches()
        try:
            while self.step < self.schedule.total:
                phase = self.schedule.phase(self.step)
                if self._stage_for(self.step) != self.stage:
                    self._enter_stage(self._stage_for(self.step))
                    batches = self._batches()
                if self._starts_reset_block(self.step):
                    self._reset_surrogate(self.cfg.seed + 1000 + self.schedule.block(self.step))
                factor = self.schedule.lr_factor(self.step, cfg.lr_gamma)
                lr = self._base_lr(self.stage) * factor
                # A surrogate that restarts from fresh weights must learn as fast as the
                # first one did: only a surrogate that trains on keeps the decay.
                surrogate_factor = 1.0 if cfg.surrogate_reset_every else factor
                for opt, value in (
                    (self.opt_generator, lr),
                    (self.opt_surrogate, self.surrogate_lr * surrogate_factor),
                ):
                    for group in opt.param_groups:
                        group["lr"] = value
                loss = steps[phase](*next(batches))
                self.step += 1
                bar.update(1)
                bar.set_postfix(phase=phase, loss=f"{loss:.4f}")
                done = self.step == self.schedule.total
                check = self.step % cfg.val_every == 0 or done
                evaluate, restart = ctx.is_main and check, False
                if ctx.is_main and (evaluate or self.step % cfg.log_every == 0):
                    row = {
                        "step": self.step,
                        "stage": self.stage,
                        "phase": phase,
                        f"loss_{phase}": loss,
                        "lr": lr,
                    }
                    elapsed = time.perf_counter() - started
                    row["samples_per_s"] = (
                        (self.step - start_step) * self.batch_size * ctx.world_size / elapsed
                    )
                    if evaluate:
                        self.last_evaluation = (self.step, self.evaluate())
                        row.update(self.last_evaluation[1])
                        bar.write(
                            f"step {self.step}: "
                            + ", ".join(
                                f"{k} {v:.3f}"
                                for k, v in row.items()
                                if k.startswith(("iou", "texture"))
                            )
                        )
                        if done:
                            self.end_found = self._dead_surrogate(row)
                        restart = self._watch_surrogate(row)
                    self._log(row)
                if check and distributed.agree(ctx, restart):
                    self._restart_surrogate()
                if self.step % cfg.checkpoint_every == 0 or done:
                    states = distributed.gather(ctx, self.rng_state())
                    if ctx.is_main:
                        self.save_checkpoint(states)
                    distributed.barrier(ctx)
        finally:
            bar.close()
            if ctx.is_main:
                self.csv_file.close()
                self.tensorboard.close()
        skipped = {}  # every process's reads: each skips the bad pairs of its own share
        for found in distributed.gather(ctx, dict(self.train_data.skipped)):
            skipped.update(found)
        return self._finish(time.perf_counter() - started, skipped) if ctx.is_main else {}

    def _finish(self, wall_s: float, skipped: dict) -> dict:
        """Write the final generator and ``summary.json``; returns the summary (with the
        loop's final evaluation, or a new one when a resumed run had no step left).
        ``skipped``: the training pairs that any process skipped, and why."""
        step, scores = self.last_evaluation
        if step != self.step:
            scores = self.evaluate()
        summary = {"steps": self.step, "wall_s": round(wall_s, 1), **scores}
        summary["generator"] = os.path.join(self.out_dir, "generator")
        summary["skipped_pairs"] = {p.mask: why for p, why in skipped.items()}
        summary["warnings"] = [w for w in (self.small_batch, *self.warnings) if w]
        # The end's judgement, of the surrogate the generator last learned against (before
        # any restart at this step), in the summary only: a longer resumed run still watches.
        found = self.end_found if step == self.step else self._dead_surrogate(scores)
        if found and self._advice(found) not in self.warnings:  # the watch's own, this step
            summary["warnings"].append(self._advice(found))
            logger.warning(summary["warnings"][-1])
        summary["surrogate_restarts"] = self.restarts
        save_generator(
            self.generator, self.gen_config, summary["generator"], self._generator_metadata()
        )
        text = json.dumps(summary, indent=2).encode()
        io.atomic_write_bytes(text, os.path.join(self.out_dir, "summary.json"))
        return summary


def train(cfg: TrainConfig, out_dir: str, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one training (single process, or one rank under ``torchrun``); ``resume`` and
    ``overwrite`` as in :meth:`Trainer.run`."""
    ctx = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, out_dir, ctx).run(resume=resume, overwrite=overwrite)
    finally:
        distributed.teardown(ctx)
