"""Realistic sample segmentation scenes, generated offline and deterministically.

Each scene is a background cut from a real photo or texture that ships with
scikit-image / scikit-learn, with objects of several classes pasted on it. An
object's class decides its silhouette family and its material (a real texture
or photo patch), so a segmentation model has something real to learn; sizes,
poses, colours, lighting and occlusion vary per object.

Scene ``i`` of seed ``s`` depends only on ``(s, i, style, size)``: generating
more scenes never changes the earlier ones.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass

import fiftyone as fo
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import transform

from fiftyone_unseg import folders
from fiftyone_unseg.io import atomic_write_image, is_temp_file

CLASSES = ("horse", "coin", "brick", "bush", "rock", "sign")
"""Object classes; semantic label of ``CLASSES[k]`` is ``k + 1`` (0 is background)."""

MIN_SIZE = 32  # scene side in pixels: below, objects are a few pixels
STYLES = ("photo", "texture", "clutter", "studio")
"""Scene styles: photo backgrounds, texture backgrounds, many small occluding
objects, and few large objects on a plain lit backdrop."""

DEFAULT_STYLES = ("photo", "texture")
SPLITS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


@dataclass(frozen=True)
class StyleSpec:
    """How many objects a style places and how large they are (fraction of the side)."""

    min_objects: int
    max_objects: int
    min_scale: float
    max_scale: float
    background: str  # "photo", "texture" or "plain"


_STYLE_SPECS = {
    "photo": StyleSpec(2, 5, 0.18, 0.45, "photo"),
    "texture": StyleSpec(2, 5, 0.18, 0.45, "texture"),
    "clutter": StyleSpec(6, 10, 0.10, 0.28, "photo"),
    "studio": StyleSpec(1, 3, 0.30, 0.60, "plain"),
}


@dataclass
class Scene:
    """One generated scene.

    Attributes:
        image: HxWx3 uint8 RGB image.
        semantic: HxW uint8 class map (0 background, k+1 for ``CLASSES[k]``).
        instance_masks: list of HxW bool visible masks, in paint order.
        instance_labels: class name of each instance.
        split: "train", "val" or "test".
    """

    image: np.ndarray
    semantic: np.ndarray
    instance_masks: list
    instance_labels: list
    split: str


def _rgb(im: np.ndarray) -> np.ndarray:
    im = np.asarray(im)
    if im.dtype == bool:
        im = im.astype(np.uint8) * 255
    if im.ndim == 2:
        im = np.stack([im] * 3, axis=-1)
    return im[..., :3].astype(np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def _photos() -> tuple:
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    names += ("immunohistochemistry", "retina", "camera", "moon")
    photos = [_rgb(getattr(skdata, n)()) for n in names]
    photos += [_rgb(im) for im in load_sample_images().images]
    return tuple(photos)


@functools.lru_cache(maxsize=1)
def _textures() -> dict:
    """Grayscale material textures in [0, 1], keyed by name."""
    tex = {n: _rgb(getattr(skdata, n)())[..., 0] for n in ("brick", "grass", "gravel")}
    tex["coins"] = _rgb(skdata.coins())[..., 0]
    tex["text"] = _rgb(skdata.text())[..., 0]
    tex["cell"] = _rgb(skdata.cell())[..., 0]
    return tex


@functools.lru_cache(maxsize=1)
def _horse() -> np.ndarray:
    return ~skdata.horse()  # the silhouette is False on a True background


# Class -> (texture names, base colours the texture is tinted with).
_MATERIALS = {
    "horse": (("gravel", "cell"), ((0.45, 0.30, 0.18), (0.15, 0.12, 0.10), (0.85, 0.80, 0.72))),
    "coin": (("coins",), ((0.85, 0.68, 0.25), (0.75, 0.75, 0.78), (0.70, 0.45, 0.25))),
    "brick": (("brick",), ((0.70, 0.25, 0.18), (0.55, 0.55, 0.55), (0.80, 0.60, 0.40))),
    "bush": (("grass",), ((0.20, 0.55, 0.15), (0.35, 0.50, 0.10), (0.15, 0.40, 0.25))),
    "rock": (("gravel",), ((0.50, 0.50, 0.48), (0.42, 0.38, 0.33), (0.60, 0.57, 0.52))),
    "sign": (("text",), ((0.90, 0.15, 0.10), (0.95, 0.85, 0.10), (0.10, 0.35, 0.80))),
}


def _crop_resized(rng, src: np.ndarray, h: int, w: int) -> np.ndarray:
    """A random crop of ``src`` (HxW or HxWxC float), resized to h x w."""
    sh, sw = src.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch, cw = max(8, int(sh * frac)), max(8, int(sw * frac))
    y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
    crop = src[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return transform.resize(crop, (h, w), order=1, anti_aliasing=True).astype(np.float32)


def _star_convex(rng, n: int, roughness: float, sides: int | None) -> np.ndarray:
    """An n x n bool mask of a star-convex shape (smooth blob, polygon or jagged rock)."""
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    if sides:  # regular polygon, randomly rotated
        phase = rng.uniform(0, 2 * np.pi)
        k = np.pi / sides
        r = np.cos(k) / np.cos(((theta + phase) % (2 * k)) - k)
    else:
        r = np.ones_like(theta)
        for f in range(2, 9):
            r += roughness * rng.normal() / f * np.cos(f * theta + rng.uniform(0, 2 * np.pi))
        r = np.clip(r, 0.35, None)
    r = r / r.max()
    yy, xx = np.mgrid[0:n, 0:n]
    c = (n - 1) / 2
    ang = np.arctan2(yy - c, xx - c) % (2 * np.pi)
    rad = np.hypot(yy - c, xx - c) / c
    return rad <= np.interp(ang, theta, r, period=2 * np.pi)


def _silhouette(rng, label: str, n: int) -> np.ndarray:
    """An n x n bool silhouette of an object of class ``label``."""
    if label == "horse":
        m = _horse()
        side = max(m.shape)
        pad = np.zeros((side, side), np.float32)
        oy, ox = (side - m.shape[0]) // 2, (side - m.shape[1]) // 2
        pad[oy : oy + m.shape[0], ox : ox + m.shape[1]] = m
        m = transform.resize(pad, (n, n), order=1) > 0.5
        m = m[:, ::-1] if rng.random() < 0.5 else m
        angle = rng.uniform(-20, 20)
        return ndimage.rotate(m.astype(np.float32), angle, reshape=False, order=1) > 0.5
    if label == "coin":
        yy, xx = np.mgrid[0:n, 0:n]
        c = (n - 1) / 2
        squash = rng.uniform(0.6, 1.0)  # coins seen at an angle are ellipses
        m = ((xx - c) / c) ** 2 + ((yy - c) / (c * squash)) ** 2 <= 1
    elif label == "brick":
        m = np.zeros((n, n), bool)
        h = int(n * rng.uniform(0.35, 0.6))
        m[(n - h) // 2 : (n + h) // 2, int(n * 0.05) : int(n * 0.95)] = True
    elif label == "bush":
        m = _star_convex(rng, n, roughness=1.2, sides=None)
    elif label == "rock":
        m = _star_convex(rng, n, roughness=0.6, sides=int(rng.integers(5, 8)))
        m &= _star_convex(rng, n, roughness=0.9, sides=None) | (rng.random() < 0.5)
    else:  # sign: triangle, diamond or octagon
        m = _star_convex(rng, n, roughness=0.0, sides=int(rng.choice([3, 4, 8])))
    angle = rng.uniform(-180, 180) if label != "sign" else rng.uniform(-15, 15)
    return ndimage.rotate(m.astype(np.float32), angle, reshape=False, order=1) > 0.5


def _material(rng, label: str, n: int) -> np.ndarray:
    """An n x n x 3 float texture for an object of class ``label``."""
    names, colours = _MATERIALS[label]
    tex = _crop_resized(rng, _textures()[names[int(rng.integers(len(names)))]], n, n)
    tex = (tex - tex.mean()) / (tex.std() + 1e-6)
    base = np.asarray(colours[int(rng.integers(len(colours)))], np.float32)
    base = np.clip(base * rng.uniform(0.8, 1.2) + rng.normal(0, 0.04, 3), 0, 1)
    contrast = rng.uniform(0.10, 0.22)
    # Light falls from one side: a linear shading ramp across the object.
    yy, xx = np.mgrid[0:n, 0:n] / max(n - 1, 1) - 0.5
    a = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.1, 0.35) * (np.cos(a) * xx + np.sin(a) * yy)
    return np.clip((base + contrast * tex[..., None]) * shade[..., None], 0, 1)


def _background(rng, kind: str, size: int) -> np.ndarray:
    if kind == "photo":
        photos = _photos()
        bg = _crop_resized(rng, photos[int(rng.integers(len(photos)))], size, size)
    elif kind == "texture":
        names = ("brick", "grass", "gravel", "cell")
        tex = _crop_resized(rng, _textures()[names[int(rng.integers(len(names)))]], size, size)
        tint = rng.uniform(0.35, 1.0, 3).astype(np.float32)
        bg = np.clip(tex[..., None] * tint + rng.uniform(0, 0.2), 0, 1)
    else:  # plain studio backdrop with a soft vignette
        yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        vignette = 1.0 - 0.8 * (xx**2 + yy**2)
        bg = rng.uniform(0.4, 0.95, 3).astype(np.float32) * vignette[..., None]
    return bg.astype(np.float32)


def _layout(rng, spec: StyleSpec, size: int) -> list:
    """Objects as (label, full HxW mask) in paint order, classes drawn without repeats first."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    order = [CLASSES[k] for k in rng.permutation(len(CLASSES))]
    labels = [order[i % len(order)] for i in range(count)]
    objects = []
    for label in labels:
        n = max(12, int(size * rng.uniform(spec.min_scale, spec.max_scale)))
        sil = _silhouette(rng, label, n)
        y, x = rng.integers(-n // 4, size - 3 * n // 4, size=2)
        full = np.zeros((size, size), bool)
        ys, xs = slice(max(y, 0), min(y + n, size)), slice(max(x, 0), min(x + n, size))
        full[ys, xs] = sil[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
        objects.append((label, full, (y, x, n)))
    return objects


def _visible(objects: list) -> list:
    """Visible part of each object: its mask minus everything painted after it."""
    covered = np.zeros_like(objects[0][1]) if objects else None
    visible = [None] * len(objects)
    for i in range(len(objects) - 1, -1, -1):
        visible[i] = objects[i][1] & ~covered
        covered = covered | objects[i][1]
    return visible


def make_scene(seed: int, index: int, size: int = 512, style: str = "photo") -> Scene:
    """Generate scene ``index`` of ``seed`` in the given ``style`` (see :data:`STYLES`)."""
    if style not in _STYLE_SPECS:
        raise ValueError(f"unknown scene style {style!r}; choose from {', '.join(STYLES)}")
    rng = np.random.default_rng([seed, index, STYLES.index(style)])
    spec = _STYLE_SPECS[style]
    min_area = max(16, int(0.002 * size * size))

    objects = _layout(rng, spec, size)
    # Drop objects that end up mostly hidden or tiny, then recompute visibility.
    vis = _visible(objects)
    objects = [o for o, v in zip(objects, vis) if v.sum() >= max(min_area, 0.25 * o[1].sum())]
    vis = _visible(objects)

    image = _background(rng, spec.background, size)
    semantic = np.zeros((size, size), np.uint8)
    for (label, full, (y, x, n)), v in zip(objects, vis):
        tex = np.zeros((size, size, 3), np.float32)
        ys, xs = slice(max(y, 0), min(y + n, size)), slice(max(x, 0), min(x + n, size))
        tex[ys, xs] = _material(rng, label, n)[
            ys.start - y : ys.stop - y, xs.start - x : xs.stop - x
        ]
        # A soft drop shadow, then the object with anti-aliased edges.
        shadow = ndimage.gaussian_filter(
            np.roll(full, (n // 20 + 1,) * 2, (0, 1)).astype(np.float32), n / 25
        )
        image *= 1.0 - 0.35 * shadow[..., None]
        alpha = ndimage.gaussian_filter(full.astype(np.float32), 0.7)[..., None]
        image = image * (1 - alpha) + tex * alpha
        semantic[v] = CLASSES.index(label) + 1

    # Global lighting: exposure, white balance, an illumination gradient, sensor noise.
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    a = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.4) * (np.cos(a) * xx + np.sin(a) * yy)
    image = image * light[..., None] * rng.uniform(0.9, 1.1, 3) * rng.uniform(0.8, 1.15)
    image = image ** rng.uniform(0.85, 1.2) + rng.normal(0, 0.012, image.shape)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)

    u, split = rng.random(), SPLITS[-1][0]
    for name, frac in SPLITS:
        if u < frac:
            split = name
            break
        u -= frac
    return Scene(image, semantic, vis, [o[0] for o in objects], split)


def write_scenes(
    out_dir: str, num: int, seed: int = 0, size: int = 512, styles=DEFAULT_STYLES, progress=None
) -> list:
    """Write ``num`` scenes as image / mask folders under ``out_dir``.

    Layout (readable by :func:`fiftyone_unseg.folders.find_pairs`)::

        out_dir/images/scene_00000.jpg        RGB image (JPEG, quality 95)
        out_dir/semantic/scene_00000.png      class map (0 background)
        out_dir/masks/scene_00000__00.png     one binary mask per instance (0 / 255)

    Styles are assigned round-robin. Scenes an earlier call left in ``out_dir`` are
    removed first (so no stale mask pairs with a new image); a folder that holds
    anything else is refused. Returns one dict per scene with the paths, the instance
    labels and the split. ``progress`` is an optional callable ``progress(done, total)``.
    """
    styles = tuple(styles)
    _clear_scenes(out_dir)
    records = []
    for i in range(num):
        style = styles[i % len(styles)]
        scene = make_scene(seed, i, size=size, style=style)
        stem = f"scene_{i:05d}"
        image_path = os.path.join(out_dir, "images", stem + ".jpg")
        semantic_path = os.path.join(out_dir, "semantic", stem + ".png")
        atomic_write_image(Image.fromarray(scene.image), image_path, quality=95)
        atomic_write_image(Image.fromarray(scene.semantic), semantic_path)
        mask_paths = []
        for k, m in enumerate(scene.instance_masks):
            path = os.path.join(out_dir, "masks", folders.instance_mask_name(stem, k))
            atomic_write_image(Image.fromarray(m.astype(np.uint8) * 255), path)
            mask_paths.append(path)
        records.append(
            {
                "image": image_path,
                "semantic": semantic_path,
                "masks": mask_paths,
                "labels": scene.instance_labels,
                "split": scene.split,
                "style": style,
            }
        )
        if progress is not None:
            progress(i + 1, num)
    return records


_SCENE_FILES = {
    "images": r"scene_\d{5}\.jpg",
    "semantic": r"scene_\d{5}\.png",
    "masks": r"scene_\d{5}__\d{2}\.png",
}


def _clear_scenes(out_dir: str) -> None:
    """Remove the scene folders of an earlier :func:`write_scenes` from ``out_dir``;
    ValueError naming the first other entry if it holds anything else
    (:func:`_check_scene_folder`)."""
    _check_scene_folder(out_dir)
    for sub in _SCENE_FILES:
        shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)


def _check_scene_folder(out_dir: str) -> None:
    """ValueError naming the first entry of ``out_dir`` that is not a generated scene
    file; nothing if it holds none or does not exist."""
    if not os.path.isdir(out_dir):
        return
    for entry in os.listdir(out_dir):
        path = os.path.join(out_dir, entry)
        pattern = _SCENE_FILES.get(entry)
        foreign = (
            [path]
            if pattern is None or not os.path.isdir(path)
            else [
                os.path.join(path, f)
                for f in os.listdir(path)
                if not re.fullmatch(pattern, f) and not is_temp_file(f)
            ]
        )
        if foreign:
            raise ValueError(
                f"{out_dir} holds files that are not generated scenes (e.g. {foreign[0]}); "
                "write the sample data to an empty or new folder"
            )


def default_dataset_dir(name: str) -> str:
    """Where :func:`create_sample_dataset` writes the files of dataset ``name``."""
    return os.path.join(fo.config.default_dataset_dir, "unseg", name)


def create_sample_dataset(
    name: str,
    num: int = 100,
    seed: int = 0,
    size: int = 512,
    styles=DEFAULT_STYLES,
    dataset_dir: str | None = None,
    overwrite: bool = False,
    persistent: bool = True,
    progress=None,
) -> fo.Dataset:
    """Create a FiftyOne dataset of generated scenes.

    Each sample has a semantic ``fo.Segmentation`` in ``ground_truth`` (mask on
    disk, the dataset's ``mask_targets`` name the classes), instance
    ``fo.Detections`` with masks in ``instances``, its scene ``style`` and a
    ``train`` / ``val`` / ``test`` tag. The files stay readable as image / mask
    folder pairs under ``dataset_dir`` (see :func:`write_scenes`).
    """
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px (room for objects), got {size}")
    unknown = set(styles) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown scene styles {sorted(unknown)}; choose from {', '.join(STYLES)}")
    if fo.dataset_exists(name) and not overwrite:
        raise ValueError(
            f"dataset {name!r} already exists; overwrite it (overwrite=True, "
            "`unseg sample-data --overwrite`) or pick another name"
        )
    dataset_dir = os.path.abspath(dataset_dir or default_dataset_dir(name))
    from fiftyone_unseg.protect import dataset_file_in, delete_protection_files

    found = dataset_file_in(dataset_dir, other_than=name)
    if found:
        raise ValueError(
            f"{dataset_dir} holds the images of dataset {found[0]!r}: writing scenes "
            "there would replace them; choose another folder"
        )
    _check_scene_folder(dataset_dir)  # before anything is deleted
    if fo.dataset_exists(name):  # the old scenes' copies go with them
        delete_protection_files(fo.load_dataset(name))
    records = write_scenes(dataset_dir, num, seed=seed, size=size, styles=styles, progress=progress)

    dataset = fo.Dataset(name, overwrite=overwrite, persistent=persistent)
    targets = {k + 1: c for k, c in enumerate(CLASSES)}
    dataset.mask_targets = {"ground_truth": targets}
    dataset.classes = {"instances": list(CLASSES)}
    dataset.info = {
        "generator": "fiftyone_unseg.sample_data",
        "seed": seed,
        "size": size,
        "styles": list(styles),
        "dataset_dir": dataset_dir,
    }
    samples = []
    for r in records:
        detections = [
            fo.Detection.from_mask(np.asarray(Image.open(m)) > 0, label=label)
            for m, label in zip(r["masks"], r["labels"])
        ]
        samples.append(
            fo.Sample(
                filepath=r["image"],
                tags=[r["split"]],
                style=r["style"],
                ground_truth=fo.Segmentation(mask_path=r["semantic"]),
                instances=fo.Detections(detections=detections),
            )
        )
    dataset.add_samples(samples, progress=False)
    dataset.save()
    return dataset
