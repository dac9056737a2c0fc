"""Training configuration: one dataclass, stored as JSON (``trainer/configs/*.json``)."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field

from fiftyone_unseg.modeling import SamConfig, generator_configs
from fiftyone_unseg.settings import check_budget, check_budgets
from trainer.eot import KINDS as EOT_KINDS

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
OBJECTIVES = ("label_modification", "error_minimisation")
UNITS = ("epochs", "steps")
# What a resumed run may set differently from the run it continues: the machine (a local
# weights path included; the weights come from the checkpoint), the schedule's length and
# how often it logs, evaluates and checkpoints.
RESUMABLE_CHANGES = frozenset(
    {
        "device",
        "num_workers",
        "sam_checkpoint",
        "max_steps",
        "epochs",
        "log_every",
        "val_every",
        "val_images",
        "checkpoint_every",
        "keep_checkpoints",
    }
)


@dataclass
class TrainConfig:
    """Everything ``unseg train`` needs; defaults are the paper's reference settings.

    Phases alternate in blocks: ``surrogate_phase`` units train only the surrogate
    (noise detached), then ``generator_phase`` units train only the generator
    (surrogate frozen, gradients flow through it). ``unit`` is "epochs" or "steps".
    Budgets are fractions of the [0, 1] pixel range: a small one for training and the
    larger one recommended for generation ("epsilon generalisation").
    """

    generator: str | dict = "tiny"  # a registry name or a SamConfig dict
    # start from a trained generator ("default" or "robust": a shipped one, or a checkpoint
    # folder): its layout and weights replace ``generator``'s; adapting it to one's own data
    init: str | None = None
    sam_checkpoint: str | None = None  # official SAM weights for vit_* (local path)
    freeze_backbone: bool | None = None  # None: the generator config's own setting
    noise_highpass: int | None = None  # None: the generator config's own setting
    noise_colour: float | None = None  # None: the generator config's own setting
    pretrain_steps: int = 0  # train the generator's SAM part as a segmenter first
    pretrain_lr: float = 1e-4
    surrogate: str | dict = "tiny"  # a SAM layout (registry name or dict), or "cnn"
    surrogate_img_size: int | None = None  # None: the surrogate config's img_size
    data: list = field(default_factory=lambda: ["sample:400:0"])
    val_fraction: float = 0.1
    objective: str = "label_modification"
    eps_train: float = 1 / 255
    eps_bg_train: float = 0.25 / 255
    eps_generate: float = 8 / 255
    eps_bg_generate: float = 2 / 255
    unit: str = "epochs"
    surrogate_phase: int = 1
    generator_phase: int = 3
    epochs: int = 27
    # blocks; > 0 re-initialises the surrogate that often (its lr then never drops)
    surrogate_reset_every: int = 0
    max_steps: int | None = None  # caps the bilevel steps (after pretraining)
    lr: float = 1e-4
    surrogate_lr: float | None = None  # None: the same as lr
    # how often a surrogate found predicting nothing (two of its phases after it started)
    # starts afresh at a third of its learning rate; 0: only warn
    surrogate_restarts: int = 2
    lr_drop_at: int = 20  # in ``unit``s of the bilevel stage; lr *= lr_gamma from then on
    lr_gamma: float = 0.1
    batch_size: int = 4  # per process
    num_workers: int = 0
    num_points: int = 112 * 112
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    prompt_points: int = 10
    scale_range: tuple = (0.1, 2.0)
    # weight of the share of the noise's energy that one fixed texture per region and per
    # phase of the generator's patch grid explains over a batch (0: off); > 0 asks for
    # noise specific to each image, which an informed trainer cannot estimate and subtract
    shared_texture_weight: float = 0.0
    # counter-measures simulated in training, each drawn as often as it is listed
    eot: list = field(default_factory=list)
    eot_p: float = 0.5  # share of perturbed images that go through one of them
    # each acts on the image resized by a random factor in this range (its published size
    # over the generator's side: about 2 for photos of 480 px, 0.5 for 128 px thumbnails),
    # as on the published image; (1, 1): at the generator's side
    eot_scale: tuple = (1.0, 1.0)
    object_context: tuple | None = None  # e.g. (1.2, 3.0): object-centred crops first
    hflip: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = True  # bf16 autocast on GPU
    seed: int = 0
    log_every: int = 10
    val_every: int = 100
    val_images: int = 16
    checkpoint_every: int = 200
    keep_checkpoints: int = 2

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        self._check_types()
        for stage in ("train", "generate"):  # fractions of the range, as unseg protect's
            for name in (f"eps_{stage}", f"eps_bg_{stage}"):
                check_budget(getattr(self, name), name)
            check_budgets(getattr(self, f"eps_{stage}"), getattr(self, f"eps_bg_{stage}"))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.surrogate_phase < 1 or self.generator_phase < 1:
            raise ValueError("surrogate_phase and generator_phase must be at least 1")
        if self.shared_texture_weight < 0:
            raise ValueError(
                f"shared_texture_weight must be 0 or more, got {self.shared_texture_weight}"
            )
        small = [
            f"{name} must be at least 1, got {getattr(self, name)}"
            for name in (
                "batch_size",
                "num_points",
                "log_every",
                "val_every",
                "val_images",
                "checkpoint_every",
            )  # fmt: skip
            if getattr(self, name) < 1
        ]
        if small:
            raise ValueError("; ".join(small))
        if self.surrogate_restarts < 0:
            raise ValueError(f"surrogate_restarts must be 0 or more, got {self.surrogate_restarts}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                "keep_checkpoints must be at least 1 (the newest is what --resume continues "
                f"from), got {self.keep_checkpoints}"
            )
        unknown = sorted(set(self.eot) - set(EOT_KINDS))
        if unknown:
            raise ValueError(f"eot counter-measures must be some of {EOT_KINDS}, got {unknown}")
        self.scale_range = _range(self.scale_range, "scale_range")
        self.eot_scale = _range(self.eot_scale, "eot_scale")
        if self.object_context is not None and len(self.object_context) == 0:
            self.object_context = None  # [] said "off" before None did
        if self.object_context is not None:
            self.object_context = _range(self.object_context, "object_context")
        if self.surrogate_reset_every < 0:
            raise ValueError(
                f"surrogate_reset_every must be 0 (never) or more, got {self.surrogate_reset_every}"
            )
        if not 0 <= self.importance_ratio <= 1 or self.oversample_ratio < 1:
            raise ValueError(
                "importance_ratio must be in [0, 1] and oversample_ratio at least 1 (points "
                f"drawn per point kept), got {self.importance_ratio} and {self.oversample_ratio}"
            )
        if not 0 <= self.val_fraction < 1 or not 0 <= self.eot_p <= 1:
            raise ValueError(
                "val_fraction must be in [0, 1) and eot_p in [0, 1], got "
                f"{self.val_fraction} and {self.eot_p}"
            )
        frozen = self.freeze_backbone
        vit = isinstance(self.generator, str) and self.generator.startswith("vit_")
        if vit and not (self.init or self.pretrain_steps):
            frozen = _sam_config(self.generator).freeze_backbone if frozen is None else frozen
            if frozen and not self.sam_checkpoint:
                raise ValueError(
                    f"generator {self.generator} keeps SAM's image encoder frozen: give the "
                    "official SAM weights it needs (--sam-checkpoint FILE, a local "
                    f"sam_{self.generator}_*.pth; nothing is downloaded), or --init a trained "
                    "generator; without them it trains on a random, frozen encoder"
                )

    def _check_types(self) -> None:
        """ValueError naming each field whose value is not of its declared type (a
        ``--set`` value is JSON: ``--set eps_train=abc`` arrives as a string)."""
        hints = typing.get_type_hints(type(self))
        wrong = []
        for f in dataclasses.fields(self):
            value, kinds = getattr(self, f.name), _kinds(hints[f.name])
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join(k.__name__ for k in kinds)
                wrong.append(f"{f.name} must be {names}, got {value!r}")
        if wrong:
            raise ValueError("; ".join(wrong))

    def generator_config(self) -> SamConfig:
        config = init_generator(self.init).config if self.init else _sam_config(self.generator)
        for name in ("freeze_backbone", "noise_highpass", "noise_colour"):
            if getattr(self, name) is not None:
                config = dataclasses.replace(config, **{name: getattr(self, name)})
        return config

    def surrogate_config(self) -> SamConfig:
        config = _sam_config(self.surrogate)
        if self.surrogate_img_size:
            config = dataclasses.replace(config, img_size=self.surrogate_img_size)
        return dataclasses.replace(config, name=f"surrogate-{config.name}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resume_conflicts(self, saved: dict) -> dict:
        """key -> (saved value, this value) for each setting in which this config differs
        from ``saved`` (the config a checkpoint was trained with) other than
        :data:`RESUMABLE_CHANGES`."""
        try:
            earlier = TrainConfig.from_dict(saved).to_dict()
        except ValueError:  # saved before a check it fails: compared as it was written
            earlier = {**self.to_dict(), **saved}
        before, now = (json.loads(json.dumps(c)) for c in (earlier, self.to_dict()))
        return {
            k: (before[k], now[k])
            for k in now
            if k not in RESUMABLE_CHANGES and before[k] != now[k]
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**data)


def _kinds(hint) -> tuple:
    """The classes a value of type ``hint`` may have: an int for a float, a list for a
    tuple and the reverse (JSON has neither distinction), None for an optional."""
    if typing.get_args(hint) and typing.get_origin(hint) not in (list, tuple, dict):  # a union
        kinds = tuple(k for arg in typing.get_args(hint) for k in _kinds(arg))
    else:
        kinds = (typing.get_origin(hint) or hint,)
    also = {float: (int,), tuple: (list,), list: (tuple,)}
    return tuple(dict.fromkeys(kinds + tuple(k for kind in kinds for k in also.get(kind, ()))))


def init_generator(init: str):
    """The generator ``init`` names: "default" (the shipped one), another shipped
    generator ("robust") or a checkpoint folder, loaded safely (:func:`fiftyone_unseg.checkpoint.load_generator`)."""
    from fiftyone_unseg.checkpoint import load_generator

    try:
        return load_generator(None if init == "default" else init)
    except FileNotFoundError as error:
        raise ValueError(f"init {init!r}: {error}") from error


def _sam_config(spec: str | dict) -> SamConfig:
    if isinstance(spec, dict):
        return SamConfig.from_dict(spec)
    if spec not in generator_configs:
        raise ValueError(
            f"unknown model config {spec!r}; choose one of {sorted(generator_configs)}"
        )
    return generator_configs[spec]


def shipped_configs() -> list:
    """Names of the configs that ship with the trainer."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))


def _range(value, name: str) -> tuple:
    """A (lo, hi) setting as a tuple, refused unless 0 < lo <= hi."""
    pair = tuple(value)
    if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
        raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {list(pair)}")
    return pair


def load_config(name_or_path: str, explicit: dict | None = None, **overrides) -> TrainConfig:
    """A shipped config by name (``tiny``, ``vit_b``) or a JSON file, with overrides applied.

    A config with a ``base`` (another config's name or path) holds only what differs from
    that one. ``overrides`` whose value is None are ignored (options not given);
    ``explicit`` values are set as they are, None included (``--set KEY=null``).
    """
    data = _config_data(name_or_path, ())
    data.update({k: v for k, v in overrides.items() if v is not None})
    data.update(explicit or {})
    return TrainConfig.from_dict(data)


def _config_data(name_or_path: str, seen: tuple, folder: str | None = None) -> dict:
    """The fields of a config file, its ``base``'s first (``seen``: the real paths of the
    configs that named this one as their base). A base is looked for beside the config
    that names it (``folder``), then among the shipped configs, then as given."""
    near = os.path.join(folder, name_or_path) if folder else None
    shipped = os.path.join(CONFIG_DIR, f"{name_or_path}.json")
    candidates = [near] if near else []
    candidates += [shipped, name_or_path] if folder else [name_or_path, shipped]
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        raise ValueError(
            f"config {name_or_path!r} is neither a file nor a shipped config "
            f"({', '.join(shipped_configs())})"
        )
    real = os.path.realpath(path)
    if real in seen:
        raise ValueError(f"config bases form a loop: {' -> '.join((*seen, real))}")
    with open(path) as f:
        data = json.load(f)
    data.pop("_comment", None)
    base = data.pop("base", None)
    if not base:
        return data
    return {**_config_data(base, (*seen, real), os.path.dirname(real)), **data}
