"""Bad inputs, full or read-only folders, untrusted checkpoints and output paths
(docs/RELIABILITY.md lists which test proves which case)."""

import errno
import importlib
import json
import os
import pickle
import subprocess
import sys

import cv2
import fiftyone as fo
import numpy as np
import pytest
import torch
from PIL import Image
from test_modeling import MICRO, WritesMarker
from test_protect import _dataset, _hashes, _labels, _texture, generators  # noqa: F401

from fiftyone_unseg import folders, io, protect, visualize_noise
from fiftyone_unseg.audit.evaluate import _readable
from fiftyone_unseg.audit.splits import Split
from fiftyone_unseg.audit.targets import resolve_targets
from fiftyone_unseg.checkpoint import load_generator, save_generator
from fiftyone_unseg.geometry import Frame
from fiftyone_unseg.labels import PromptSpec, fit_mask, resolve_prompt, segment_map
from fiftyone_unseg.modeling import build_noise_generator, load_sam_weights
from fiftyone_unseg.protect import _lock_path, default_output_dir, protected_name
from trainer.data import PairDataset, load_pairs

protect_module = importlib.import_module("fiftyone_unseg.protect")
GOOD = Image.fromarray(_texture(64, 64))
_REAL_FSYNC = os.fsync


def _truncated(path, image: Image.Image, fmt: str) -> str:
    image.save(path, fmt)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return str(path)


def _reasons(summary) -> dict:
    return {os.path.basename(f["filepath"]): f["reason"] for f in summary["failures"]}


def test_protect_reports_bad_files_and_converts_every_image_kind(tmp_path, generators):  # noqa: F811
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "données d'essai"
    images = {
        "gray.png": Image.fromarray(_texture(64, 64)[..., 0]),
        "palette.png": GOOD.convert("P"),
        "rgba.png": GOOD.convert("RGBA"),
        "deep.png": Image.fromarray(_texture(64, 64)[..., 0].astype(np.uint16) * 257),
        "cmyk.jpg": GOOD.convert("CMYK"),
        "één foto.png": GOOD,
        "写真" * 35 + ".png": GOOD,  # 214 bytes: a copy named by characters would exceed 255
    }
    dataset = _dataset("bad-inputs", folder, images)
    GOOD.save(folder / "rotated.jpg", exif=exif)  # shown 64 x 64 either way
    broken = {
        "truncated.png": _truncated(folder / "truncated.png", GOOD, "PNG"),
        "truncated.jpg": _truncated(folder / "truncated.jpg", GOOD, "JPEG"),
        "missing.png": str(folder / "missing.png"),
        "empty.png": str(folder / "empty.png"),
    }
    (folder / "empty.png").write_bytes(b"")
    other_shape = np.zeros((16, 64), np.uint8)  # a 4:1 mask on a 1:1 image
    other_shape[:8] = 1
    mismatched = fo.Sample(
        filepath=str(folder / "rotated.jpg"), seg_db=fo.Segmentation(mask=other_shape)
    )
    lost_mask = fo.Sample(filepath=str(folder / "één foto.png"))
    lost_mask["seg_db"] = fo.Segmentation(mask_path=str(folder / "no-such-mask.png"))
    dataset.add_samples([fo.Sample(filepath=p) for p in broken.values()])
    dataset.add_samples([mismatched, lost_mask])
    before = _hashes([p for p in dataset.values("filepath") if os.path.isfile(p)])

    summary = protect(dataset, "seg_db", generator=generators["random"])

    assert (summary["protected"], summary["failed"]) == (len(images) + 1, 5)
    reasons = {f["id"]: f["reason"] for f in summary["failures"]}
    by_file = _reasons(summary)
    assert (
        "cannot decode image" in by_file["truncated.png"]
        and "truncated" in by_file["truncated.png"]
    )
    assert "cannot decode image" in by_file["truncated.jpg"]
    assert "file not found" in by_file["missing.png"] and "0 bytes" in by_file["empty.png"]
    assert dataset[mismatched.id].unseg.num_segments == 1  # its 4:1 mask is stretched
    assert (
        "cannot read the mask" in reasons[lost_mask.id] and "no-such-mask" in reasons[lost_mask.id]
    )
    for sample in dataset.match(fo.ViewField("protected_filepath") != None):  # noqa: E711
        with Image.open(sample.protected_filepath) as out:  # converted, 8-bit RGB, same size
            assert (out.mode, out.format) == ("RGB", "PNG") and out.size == (64, 64)
    assert visualize_noise(dataset, amplified_field="noise_image")["failed"] == 0
    assert _hashes(before) == before


def test_exif_rotated_images_use_the_displayed_orientation(tmp_path, generators):  # noqa: F811
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 72 high, displayed 72 wide x 64 high
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_texture(72, 64)).save(path, exif=exif, quality=95)
    dataset = fo.Dataset("exif", overwrite=True)
    dataset.add_sample(fo.Sample(filepath=str(path), **_labels(str(tmp_path), 64, 72)))
    summary = protect(dataset, "seg_db", generator=generators["saturated"])
    assert summary["protected"] == 1
    first = dataset.first()
    with Image.open(first.protected_filepath) as out:
        assert out.size == (72, 64) and not out.getexif().get(0x0112)
    noise = np.abs(io.read_rgb(first.protected_filepath) - io.read_rgb(str(path))).max(axis=2)
    objects = segment_map(first.seg_db, 64, 72, resolve_prompt(dataset, "seg_db")) > 0
    assert noise[objects].max() > 7 / 255 and noise[~objects].max() < 3 / 255  # as displayed


def test_one_pixel_and_empty_masks_and_empty_views(tmp_path, generators):  # noqa: F811
    dataset = _dataset("tiny-images", tmp_path, {"dot.png": Image.new("RGB", (1, 1), "red")})
    dataset.set_values("dets", [fo.Detections()])
    summary = protect(dataset, "dets", generator=generators["random"])
    assert (summary["protected"], summary["no_segments"]) == (1, 1)
    assert Image.open(dataset.first().protected_filepath).size == (1, 1)
    with pytest.raises(ValueError, match="no samples"):
        protect(dataset.limit(0), "dets", generator=generators["random"])
    summary = visualize_noise(dataset.limit(0))
    assert summary["visualized"] == 0 and summary["failures"] == []


def test_box_edges_round_as_fiftyones_coco_importer_and_empty_shapes_draw_nothing():
    """A COCO box from row 61.5 of a 480-row image starts at row 62, as the importer cuts
    its mask there; a polyline's empty shape (some converters write them) is skipped."""
    box = fo.Detection(label="a", bounding_box=[0.0, 61.5 / 480, 1.0, 10 / 480])
    spec = PromptSpec("dets", fo.Detections, "all")
    rows = np.flatnonzero(segment_map(fo.Detections(detections=[box]), 480, 8, spec).any(1))
    assert (rows[0], rows[-1]) == (62, 71)
    square = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    spec = PromptSpec("lines", fo.Polylines, "all")
    drawn = [
        segment_map(fo.Polylines(polylines=[fo.Polyline(label="a", points=shapes)]), 8, 8, spec)
        for shapes in ([[], square], [square])
    ]
    assert drawn[0].any() and np.array_equal(*drawn)


def test_masks_of_another_size_are_stretched_over_the_image_as_the_app_draws_them():
    mask = np.zeros((32, 48), np.uint8)
    mask[8:16, 12:24] = 1
    assert fit_mask(mask, 64, 96).sum() == 4 * mask.sum()
    stretched = fit_mask(mask, 32, 96)
    assert stretched.shape == (32, 96) and stretched.sum() == 2 * mask.sum()


def test_large_images_are_composed_in_bands_with_bounded_memory(tmp_path, generators):  # noqa: F811
    """A real 6000 x 4500 JPEG: the noise is upsampled band by band, so the run's peak
    memory stays under 24 bytes per pixel (its float32 RGB copy alone is 12; measured
    19.7 here, with Pillow 13 and numpy 2.4)."""
    frame = Frame(300, 97, 64)
    noise = torch.rand(3, 16, 16)
    full = torch.nn.functional.interpolate(noise[None], (64, 64), mode="bilinear")[..., :64, :21]
    reference = torch.nn.functional.interpolate(full, (300, 97), mode="bilinear")[0]
    assert torch.allclose(frame.from_model(noise), reference, atol=1e-5)
    assert torch.allclose(
        frame.from_model(noise, slice(100, 140)), reference[:, 100:140], atol=1e-5
    )

    height, width = 4500, 6000
    path = tmp_path / "big.jpg"
    ramp = np.linspace(60, 200, width, dtype=np.float32).astype(np.uint8)
    Image.fromarray(np.broadcast_to(ramp, (height, width))).convert("RGB").save(path, quality=50)
    script = f"""
import resource, sys
import fiftyone as fo
import importlib
p = importlib.import_module("fiftyone_unseg.protect")
dataset = fo.Dataset("large-image", overwrite=True)
dataset.add_sample(fo.Sample(filepath={str(path)!r}, dets=fo.Detections(detections=[
    fo.Detection(label="thing", bounding_box=[0.2, 0.2, 0.5, 0.5])])))
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = p.protect(dataset, "dets", generator={generators["random"]!r})
print(summary["protected"], len(summary["failures"]), start,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    protected, failures, start, peak = proc.stdout.split("\n")[-2].rsplit(" ", 3)
    assert (protected, failures) == ("1", "0")
    growth = (int(peak) - int(start)) * 1024 / (height * width)  # ru_maxrss is in KiB
    assert growth < 24, f"{growth:.1f} bytes per pixel"


def _corrupt_copy(path, folder) -> str:
    data = open(path, "rb").read()
    target = os.path.join(folder, "corrupt-" + os.path.basename(path))
    open(target, "wb").write(data[: len(data) // 3])
    return target


def test_visualize_reports_bad_files_and_keeps_going(tmp_path, generators):  # noqa: F811
    images = {f"v{i}.png": Image.fromarray(_texture(64, 64, i)) for i in range(4)}
    dataset = _dataset("visualize-bad", tmp_path, images)
    protect(dataset, "dets", generator=generators["random"])
    ids, protected = dataset.values("id"), dataset.values("protected_filepath")
    dataset.set_values(
        "protected_filepath", {ids[0]: _corrupt_copy(protected[0], tmp_path)}, key_field="id"
    )
    os.remove(dataset.values("filepath")[1])
    foreign = os.path.join(os.path.dirname(protected[2]), "noise")
    os.makedirs(foreign)
    stem = os.path.splitext(os.path.basename(protected[2]))[0]
    Image.new("L", (4, 4)).save(os.path.join(foreign, f"{stem}-magnitude.png"))
    summary = visualize_noise(dataset)
    # ids[1]'s original is gone: its copy can no longer be shown current, so it is left out
    assert (summary["visualized"], summary["failed"], summary["not_protected"]) == (1, 2, 1)
    reasons = {f["id"]: f["reason"] for f in summary["failures"]}
    assert "cannot decode image" in reasons[ids[0]] and ids[1] not in reasons
    assert "was not written for this sample" in reasons[ids[2]]
    assert dataset.values("unseg_noise")[3] is not None


def _fail_writes_after(monkeypatch, count: int, code: int) -> None:
    """Make the io edge fail like a full (ENOSPC) or read-only (EROFS) disk after
    ``count`` files."""
    real, done = os.fsync, []

    def fsync(fd):
        if len(done) >= count:
            raise OSError(code, os.strerror(code))
        done.append(fd)
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)


@pytest.mark.parametrize("overlap", [False, True], ids=["taking-turns", "overlapping"])
@pytest.mark.parametrize("batch_pixels", [16_000_000, 1], ids=["pipelined", "one-at-a-time"])
def test_full_output_folder_stops_the_run_and_a_rerun_finishes(
    tmp_path,
    generators,  # noqa: F811
    monkeypatch,
    batch_pixels,
    overlap,
):
    images = {f"f{i}.png": Image.fromarray(_texture(64, 64, i)) for i in range(7)}
    dataset = _dataset(f"full-disk-{batch_pixels}-{overlap}", tmp_path, images)
    monkeypatch.setattr(protect_module, "_BATCH_PIXELS", batch_pixels)  # 1: images run alone
    monkeypatch.setattr(protect_module, "_overlaps", lambda device: overlap)  # as on a GPU
    _fail_writes_after(monkeypatch, 2, errno.ENOSPC)
    summary = protect(dataset, "dets", generator=generators["random"], batch_size=2)
    assert summary["protected"] == 2 and summary["failed"] == 5
    assert "No space left on device" in summary["stopped"]
    assert all("No space left on device" in f["reason"] for f in summary["failures"])
    output = default_output_dir(dataset)
    assert len(os.listdir(output)) == 2  # no temporary files left behind
    for path in dataset.exists("protected_filepath").values("protected_filepath"):
        Image.open(path).load()
    monkeypatch.setattr(io.os, "fsync", _REAL_FSYNC)
    assert protect(dataset, "dets", generator=generators["random"])["protected"] == 5


def test_read_only_output_folder_is_refused_up_front(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _dataset("read-only", tmp_path, {"a.png": GOOD})

    def mkstemp(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)
    with pytest.raises(ValueError, match="cannot write to the output folder .*Read-only"):
        protect(dataset, "dets", generator=generators["random"], output_dir=str(tmp_path / "ro"))
    monkeypatch.undo()
    protect(dataset, "dets", generator=generators["random"])
    _fail_writes_after(monkeypatch, 0, errno.EROFS)
    summary = visualize_noise(dataset)
    assert summary["failed"] == 1 and "Read-only file system" in summary["failures"][0]["reason"]


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_unmarked_bytes_keep_the_pixels_and_drop_only_the_owner(tmp_path, image_format):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    marked = io.encode_marked(pixels, "5f1d" * 6, image_format, quality=90)
    plain = io.unmarked(marked)
    for name, data in (("marked", marked), ("plain", plain)):
        (tmp_path / f"{name}.{image_format}").write_bytes(data)
    assert io.marker(str(tmp_path / f"marked.{image_format}")) == "5f1d" * 6
    assert io.marker(str(tmp_path / f"plain.{image_format}")) is None
    assert io.MARKER_KEY.encode() not in plain and len(plain) < len(marked)
    assert np.array_equal(
        io.read_rgb(str(tmp_path / f"plain.{image_format}")),
        io.read_rgb(str(tmp_path / f"marked.{image_format}")),
    )
    assert io.unmarked(b"not an image") == b"not an image"


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3), (7, 1, 3), (3, 5), (1100, 977, 3), (2100, 600)],  # the last two: several bands each
)
def test_written_pngs_decode_to_the_exact_pixels_everywhere(tmp_path, shape):
    pixels = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 16  # runs and repeats, not only noise, for the compressor
    path = tmp_path / "x.png"
    path.write_bytes(io.encode_marked(pixels, "owner-1"))
    with Image.open(path) as im:
        im.verify()  # every chunk's CRC and the zlib stream's checksum
    with Image.open(path) as im:
        assert im.mode == ("RGB" if len(shape) == 3 else "L")
        assert np.array_equal(np.asarray(im), pixels)
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # libpng, strict about chunks
    assert np.array_equal(decoded[..., ::-1] if len(shape) == 3 else decoded, pixels)
    assert io.marker(str(path)) == "owner-1"


def test_an_unusable_lock_folder_is_refused_up_front(tmp_path, generators, monkeypatch):  # noqa: F811
    dataset = _dataset("no-locks", tmp_path, {"a.png": GOOD})
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setattr(fo.config, "default_dataset_dir", str(tmp_path / "not-a-folder"))
    output = tmp_path / "out"
    with pytest.raises(ValueError, match="cannot write to the lock folder .*not-a-folder"):
        protect(dataset, "dets", generator=generators["random"], output_dir=str(output))
    assert not dataset.exists("protected_filepath") and os.listdir(output) == []


def test_a_sample_locked_by_another_run_is_left_to_it(tmp_path, generators):  # noqa: F811
    dataset = _dataset("locked", tmp_path, {"a.png": GOOD, "b.png": GOOD})
    first = dataset.first().id
    lock = io.try_lock(_lock_path(dataset, first))
    assert io.try_lock(_lock_path(dataset, first)) is None  # exclusive, even in-process
    summary = protect(dataset, "dets", generator=generators["random"])
    assert (summary["protected"], summary["busy"], summary["failed"]) == (1, 1, 0)
    assert dataset.first().protected_filepath is None
    io.unlock(lock, _lock_path(dataset, first))
    assert protect(dataset, "dets", generator=generators["random"])["protected"] == 1


def test_output_names_stay_in_the_output_folder_and_links_are_never_followed(tmp_path, generators):  # noqa: F811
    outside = tmp_path / "outside.png"
    GOOD.save(outside)
    before = _hashes([str(outside)])
    dataset = _dataset("paths", tmp_path / "in", {"x.png": GOOD, "y.png": GOOD, "z.png": GOOD})
    ids = dataset.values("id")
    sneaky = {
        ids[0]: str(tmp_path / "in" / ".." / "in" / "x.png"),
        ids[1]: "/" + str(tmp_path / "in" / "y.png"),
    }
    dataset.set_values("filepath", sneaky, key_field="id")
    output = tmp_path / "out"
    target = output / protected_name(dataset.values("filepath")[2], ids[2], "png")
    output.mkdir()
    os.symlink(outside, target)
    summary = protect(dataset, "dets", generator=generators["random"], output_dir=str(output))
    assert summary["protected"] == 2 and "symbolic link" in summary["failures"][0]["reason"]
    for path in dataset.exists("protected_filepath").values("protected_filepath"):
        assert os.path.dirname(os.path.realpath(path)) == os.path.realpath(output)
    assert os.path.islink(target) and _hashes([str(outside)]) == before
    assert protected_name("/abs/../../etc/passwd", "5f1d", "png") == "passwd-5f1d.png"


def test_foreign_file_appearing_while_writing_is_not_overwritten(tmp_path):
    target = tmp_path / "out.png"
    real_link = os.link

    def link(source, destination):  # another program creates the file at the last moment
        Image.new("L", (2, 2)).save(destination)
        return real_link(source, destination)

    data = io.encode_marked(np.zeros((4, 4, 3), np.uint8), "me")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io.os, "link", link)
        with pytest.raises(ValueError, match="appeared while writing"):
            io.write_owned(data, str(target), "me")
    assert io.marker(str(target)) is None and os.listdir(tmp_path) == ["out.png"]
    io.write_owned(data, str(target.with_name("new.png")), "me")
    io.write_owned(data, str(target.with_name("new.png")), "me")  # its own file: replaced
    assert io.marker(str(target.with_name("new.png"))) == "me"


def test_a_foreign_png_with_a_text_comment_is_refused_not_a_crash(tmp_path):
    """Pillow gives PNG text as str (JPEG comments as bytes): either is read."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "made by another tool")
    target = tmp_path / "taken.png"
    Image.new("RGB", (4, 4)).save(target, pnginfo=info)
    assert io.marker(str(target)) is None
    data = io.encode_marked(np.zeros((4, 4, 3), np.uint8), "me")
    with pytest.raises(ValueError, match="taken.png exists and was not written for this"):
        io.write_owned(data, str(target), "me")


def test_sixteen_bit_pgm_reads_on_its_own_scale_however_dark(tmp_path):
    """Pillow opens 16-bit PGM as mode "I": its range is 0..65535 even when every value
    is under 256."""
    values = np.full((4, 4), 200, np.uint16)
    values[0, 0] = 100
    path = tmp_path / "dark.pgm"
    path.write_bytes(b"P5\n4 4\n65535\n" + values.astype(">u2").tobytes())
    assert Image.open(path).mode == "I"
    rgb = io.read_rgb(str(path))
    assert np.allclose(rgb[..., 0], values / 65535, atol=1e-7)


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_a_photos_colour_profile_and_exif_go_with_its_protected_copy(
    tmp_path,
    generators,  # noqa: F811
    image_format,
):
    """A wide-gamut camera photo's copy keeps its profile and its EXIF (author, copyright,
    GPS), in the file and in the export, but not the orientation: the copy is stored
    upright. A profile of another colour space (here Lab) never goes on an RGB copy."""
    from PIL import ExifTags, ImageCms

    from fiftyone_unseg import export_protected

    profiles = {
        space: ImageCms.ImageCmsProfile(ImageCms.createProfile(space)).tobytes()
        for space in ("sRGB", "LAB")
    }
    profile = profiles.get  # made once: a profile's header holds its creation time
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned a quarter clockwise
    exif[ExifTags.Base.Artist] = "Alice"
    exif[ExifTags.Base.Copyright] = "(c) Alice 2026"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] = "N"

    images = {name: Image.fromarray(_texture(64, 64, i)) for i, name in enumerate("abc")}
    images = {"wide.jpg": images["a"], "lab.jpg": images["b"], "plain.png": images["c"]}
    dataset = _dataset(f"icc-{image_format}", tmp_path / "originals", images)
    for name, space in (("wide.jpg", "sRGB"), ("lab.jpg", "LAB")):  # the photos' profiles
        extra = {"exif": exif} if name == "wide.jpg" else {}
        images[name].save(tmp_path / "originals" / name, icc_profile=profile(space), **extra)
    with Image.open(tmp_path / "originals" / "wide.jpg") as original:
        assert original.info["icc_profile"] == profile("sRGB")
        upright = np.asarray(original.transpose(Image.Transpose.ROTATE_270), np.float32)
    protect(dataset, "seg_db", generator=generators["random"], image_format=image_format)
    copies = dict(
        zip(map(os.path.basename, dataset.values("filepath")), dataset.values("protected_filepath"))
    )
    assert Image.open(copies["wide.jpg"]).info.get("icc_profile") == profile("sRGB")
    assert "icc_profile" not in Image.open(copies["lab.jpg"]).info
    assert "icc_profile" not in Image.open(copies["plain.png"]).info
    assert not Image.open(copies["lab.jpg"]).getexif()
    export_protected(dataset, str(tmp_path / "out"), "images")
    exported = tmp_path / "out" / f"wide.{image_format}"
    assert Image.open(exported).info.get("icc_profile") == profile("sRGB")
    for path in (copies["wide.jpg"], exported):
        with Image.open(path) as copy:
            carried = copy.getexif()
            pixels = np.asarray(copy.convert("RGB"), np.float32)
        assert np.abs(pixels - upright).mean() < 10  # the stored pixels are the upright ones
        assert ExifTags.Base.Orientation not in carried
        assert carried[ExifTags.Base.Artist] == "Alice"
        assert carried[ExifTags.Base.Copyright] == "(c) Alice 2026"
        assert carried.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"


def test_carried_exif_describes_the_upright_copy_and_never_a_tiffs_layout(tmp_path):
    """A turned photo's EXIF dimensions become the upright copy's; a TIFF's tags describe
    its own strips and compression, so none of them goes on a PNG or JPEG copy; the maker
    note, where some cameras keep a preview of the photo, never goes."""
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    exif[ExifTags.Base.Artist] = "Alice"
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[ExifTags.Base.ExifImageWidth], details[ExifTags.Base.ExifImageHeight] = 60, 40
    details[ExifTags.Base.MakerNote] = b"Nikon\0preview:\xff\xd8" + bytes(64)
    details[ExifTags.Base.ExposureTime] = 0.01
    photo = Image.fromarray(_texture(40, 60))
    photo.save(tmp_path / "turned.jpg", exif=exif)
    photo.save(tmp_path / "scan.tif", exif=exif)
    carried = Image.Exif()
    carried.load(b"Exif\0\0" + io.carried_metadata(str(tmp_path / "turned.jpg")).exif)
    assert ExifTags.Base.Orientation not in carried and carried[ExifTags.Base.Artist] == "Alice"
    details = carried.get_ifd(ExifTags.IFD.Exif)
    assert (details[ExifTags.Base.ExifImageWidth], details[ExifTags.Base.ExifImageHeight]) == (
        40,
        60,
    )
    assert ExifTags.Base.MakerNote not in details and details[ExifTags.Base.ExposureTime] == 0.01
    assert io.carried_metadata(str(tmp_path / "scan.tif")).exif is None


def test_exif_pillow_cannot_rewrite_is_left_out_and_the_photo_still_protected(
    tmp_path,
    monkeypatch,
    generators,  # noqa: F811
):
    """Damaged EXIF that Pillow reads but fails to write again (a TypeError from its TIFF
    writer, found by mutating EXIF bytes) costs the copy its EXIF, never its protection."""
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = "Alice"
    dataset = _dataset("damaged-exif", tmp_path / "originals", {"a.jpg": GOOD, "b.jpg": GOOD})
    GOOD.save(dataset.first().filepath, exif=exif)
    exif[ExifTags.Base.Orientation] = 6  # turning it must not need the EXIF rewritten
    wide = Image.fromarray(_texture(48, 64))
    wide.save(dataset.last().filepath, exif=exif)

    def fails(self, offset=8):
        raise TypeError("ImageFileDirectory_v2.write_string() takes 2 positional arguments")

    monkeypatch.setattr(Image.Exif, "tobytes", fails)
    summary = protect(dataset, "seg_db", generator=generators["random"])
    assert summary["failed"] == 0 and summary["protected"] == 2
    monkeypatch.undo()
    for sample, size in zip(dataset, (GOOD.size, wide.size[::-1])):
        with Image.open(sample.protected_filepath) as copy:
            assert not copy.getexif() and copy.size == size


@pytest.mark.parametrize("turn", range(1, 9))
def test_images_are_read_as_shown_under_every_exif_orientation(tmp_path, turn):
    """8-bit colour, 16-bit grey and float files, each as a whole array torch takes."""
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = turn
    images = {
        "turned.png": Image.fromarray(_texture(6, 10)),
        "deep.png": Image.fromarray(_texture(6, 10)[..., 0].astype(np.uint16) * 257),
        "float.tif": Image.fromarray(_texture(6, 10)[..., 0].astype(np.float32) / 255, "F"),
    }
    for name, image in images.items():
        image.save(tmp_path / name, exif=exif)
        with Image.open(tmp_path / name) as im:
            shown = np.asarray(ImageOps.exif_transpose(im), np.float32)
        shown = shown / (65535 if name == "deep.png" else 255 if name == "turned.png" else 1)
        read = io.read_rgb(str(tmp_path / name))
        assert np.allclose(read if read.ndim == shown.ndim else read[..., 0], shown), name
        assert torch.from_numpy(read).shape == read.shape  # no negative strides


def test_trainer_skips_bad_pairs_with_reasons(tmp_path):
    im, gt = tmp_path / "my images" / "im", tmp_path / "my images" / "gt"
    im.mkdir(parents=True)
    gt.mkdir()
    full = Image.new("L", (32, 32), 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_texture(32, 48)).save(im / "rotated.jpg", exif=exif)  # shown 32 x 48
    Image.new("L", (32, 48), 255).save(gt / "rotated.png")  # masks as displayed
    good = {
        "ñandú.png": GOOD.resize((32, 32)),
        "gray.png": full,
        "deep.png": Image.new("I;16", (32, 32), 40000),
    }
    for name, image in good.items():
        image.save(im / name)
        full.save(gt / name)
    _truncated(im / "truncated.png", GOOD.resize((32, 32)), "PNG")
    full.save(gt / "truncated.png")
    (im / "empty.png").write_bytes(b"")
    full.save(gt / "empty.png")
    GOOD.resize((32, 32)).save(im / "nomask.png")
    (gt / "nomask.png").write_bytes(b"")
    GOOD.resize((32, 32)).save(im / "blank.png")
    Image.new("L", (32, 32), 0).save(gt / "blank.png")
    pairs = load_pairs(f"{im}:{gt}")
    pairs.append(folders.Pair(str(im / "gone.png"), str(gt / "gray.png")))
    data = PairDataset(pairs, 32, augment=False)
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 32, 32) and mask.sum() > 0
    reasons = {os.path.basename(p.image): why for p, why in data.skipped.items()}
    assert set(reasons) == {"truncated.png", "empty.png", "nomask.png", "blank.png", "gone.png"}
    assert "cannot decode image" in reasons["truncated.png"] and "0 bytes" in reasons["empty.png"]
    assert "mask file is empty" in reasons["nomask.png"] and "mask is empty" in reasons["blank.png"]
    assert "image file not found" in reasons["gone.png"]
    (tmp_path / "none" / "images").mkdir(parents=True)
    (tmp_path / "none" / "masks").mkdir()
    with pytest.raises(ValueError, match="has no \\(image, mask\\) pairs"):
        load_pairs(str(tmp_path / "none"))


def test_audit_leaves_out_unreadable_samples_and_names_unreadable_masks(tmp_path):
    images = {f"a{i}.png": Image.fromarray(_texture(64, 64, i)) for i in range(4)}
    dataset = _dataset("audit-bad", tmp_path, images)
    ids = dataset.values("id")
    os.remove(dataset.values("filepath")[1])
    dataset.set_values(
        "protected_filepath", dict(zip(ids, dataset.values("filepath"))), key_field="id"
    )
    corrupt = _corrupt_copy(dataset.values("filepath")[2], tmp_path)
    dataset.set_values("protected_filepath", {ids[2]: corrupt}, key_field="id")
    split, skipped = _readable(
        dataset, Split(tuple(ids[:3]), (ids[3],), "test"), "protected_filepath"
    )
    assert split.train_ids == (ids[0],) and split.test_ids == (ids[3],)
    assert {s["id"]: s["reason"] for s in skipped}.keys() == {ids[1], ids[2]}
    assert "file not found" in skipped[0]["reason"] and "cannot decode" in skipped[1]["reason"]
    with pytest.raises(ValueError, match="no training or no test samples"):
        _readable(dataset, Split((ids[1],), (ids[3],), "test"), None)
    targets = resolve_targets(dataset, "seg_db")
    lost = {"seg_db": fo.Segmentation(mask_path=str(tmp_path / "lost.png"))}
    with pytest.raises(ValueError, match="cannot read the mask .*lost.png"):
        targets.semantic(lost, 64, 64)
    # A sample whose mask file is gone is left out of the audit and named, like a bad image.
    sample = dataset[ids[0]]
    sample["seg_db"] = lost["seg_db"]
    sample.save()
    targets = resolve_targets(dataset, "seg_db")
    split, skipped = _readable(dataset, Split((ids[0], ids[2]), (ids[3],), "test"), None, targets)
    assert split.train_ids == (ids[2],) and [s["id"] for s in skipped] == [ids[0]]
    assert "cannot read the mask" in skipped[0]["reason"] and "lost.png" in skipped[0]["filepath"]
    # A sample never annotated is neither trained on (as all background) nor tested.
    sample = dataset[ids[2]]
    sample["seg_db"] = None
    sample.save()
    with pytest.raises(ValueError, match="no 'seg_db' label: unlabelled, neither trained"):
        _readable(dataset, Split((ids[2],), (ids[3],), "test"), None, targets)
    # A detection's mask file that is gone leaves its sample out too, named by the file.
    sample = dataset[ids[3]]
    detection = sample.dets.detections[0]
    detection.mask, detection.mask_path = None, str(tmp_path / "lost-detection.png")
    sample.save()
    targets = resolve_targets(dataset, "dets")
    split, skipped = _readable(dataset, Split((ids[0],), (ids[3], ids[2]), "test"), None, targets)
    assert split.test_ids == (ids[2],) and [s["id"] for s in skipped] == [ids[3]]
    assert skipped[0]["filepath"].endswith("lost-detection.png")
    # An RGB class map (colours, not class indices) leaves its sample out, named by file.
    rgb = str(tmp_path / "colours.png")
    Image.fromarray(_texture(64, 64, 7)).save(rgb)
    sample = dataset[ids[0]]
    sample["seg_db"] = fo.Segmentation(mask_path=rgb)
    sample.save()
    targets = resolve_targets(dataset, "seg_db")
    with pytest.raises(ValueError, match=f"e.g. sample {ids[0]}: .*colours.png: an RGB mask"):
        _readable(dataset, Split((ids[0],), (ids[3],), "test"), None, targets)


def test_an_audit_of_a_view_without_the_protection_fields_still_reads_originals_and_budgets(
    tmp_path,
    generators,  # noqa: F811
):
    """Protected with ``replace_filepath``, then audited through a view that leaves out
    ``original_filepath`` and ``unseg``: the clean images are still the originals and the
    baselines still keep to each sample's recorded budgets."""
    from fiftyone_unseg.audit.variants import training_images

    images = {f"v{i}.png": Image.fromarray(_texture(64, 64, i)) for i in range(2)}
    dataset = _dataset("audit-view", tmp_path / "in", images)
    originals = dataset.values("filepath")
    protect(dataset, "dets", generator=generators["random"], eps=4 / 255, eps_bg=1 / 255,
            replace_filepath=True, output_dir=str(tmp_path / "out"))  # fmt: skip
    assert dataset.values("filepath") != originals
    view = dataset.select_fields("dets")
    ids = view.values("id")
    targets = resolve_targets(view, "dets")
    paths = training_images(view, ids, targets, ["clean", "random"], str(tmp_path / "train"),
                            protected_field=None)  # fmt: skip
    assert [paths["clean"][i] for i in ids] == originals
    for sample_id, original in zip(ids, originals):
        change = np.abs(_uint8(paths["random"][sample_id]) - _uint8(original))
        assert change.max() == 4  # the recorded budget, not the default 8/255


def _uint8(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def test_pickled_code_never_runs_anywhere_a_checkpoint_is_loaded(tmp_path, generators, unseg):  # noqa: F811
    from test_trainer import micro_config

    from trainer import distributed
    from trainer.loop import Trainer

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"weights": WritesMarker(marker)}, evil)
    gen = tmp_path / "gen"
    save_generator(build_noise_generator(MICRO), MICRO, gen)
    (gen / "model.safetensors").write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(ValueError, match="never loaded"):
        load_generator(evil)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_generator(gen)
    with pytest.raises(ValueError, match="never pickled code.*(?i:unsupported global)"):
        load_sam_weights(build_noise_generator(MICRO), evil)
    out = tmp_path / "run"
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    trainer = Trainer(micro_config(max_steps=2, checkpoint_every=2), str(out), ctx)
    trainer.run()
    state = out / "checkpoints" / "step_00000002" / "trainer_state.pt"
    state.write_bytes(evil.read_bytes())
    with pytest.raises(ValueError, match="trainer_state.pt is not a plain trainer state"):
        Trainer(micro_config(max_steps=4), str(out), ctx).run(resume=True)
    dataset = _dataset("evil-cli", tmp_path / "images", {"a.png": GOOD})
    proc = unseg(
        "protect",
        "--dataset",
        dataset.name,
        "--label-field",
        "dets",
        "--generator",
        str(evil),
        check=False,
    )
    assert proc.returncode == 2 and "never loaded" in proc.stderr
    assert not marker.exists()


def test_checkpoint_whose_config_does_not_fit_its_tensors_is_refused_before_building(tmp_path):
    save_generator(build_noise_generator(MICRO), MICRO, tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    info = json.loads(config_path.read_text())
    info["config"].update(encoder_embed_dim=65536, encoder_depth=64, img_size=16384)
    config_path.write_text(json.dumps(info))  # ~10^12 parameters if it were built
    with pytest.raises(
        ValueError, match="does not match the tensors.*missing image_encoder.blocks"
    ):
        load_generator(tmp_path / "gen")


def test_written_files_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    """Atomic writes go through mkstemp (0600); outputs must be readable like open()'s."""
    umask = os.umask(0o022)
    os.umask(umask)
    io.atomic_write_bytes(b"x", str(tmp_path / "out.bin"))
    save_generator(build_noise_generator(MICRO), MICRO, tmp_path / "gen")
    for path in (
        tmp_path / "out.bin",
        tmp_path / "gen/model.safetensors",
        tmp_path / "gen/config.json",
    ):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_files_with_the_longest_names_are_written_atomically(tmp_path):
    """A file name may have 255 bytes; its temporary file's name adds about 20."""
    names = ["n" * 255, "é" * 127]  # the most bytes, in ASCII and in two-byte letters
    for name in names:
        io.atomic_write_bytes(name.encode(), str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == name.encode()
    assert sorted(os.listdir(tmp_path)) == sorted(names)  # no temporary file left
    for name in names:  # what a killed write leaves is found by the file it was for
        stem = io.temp_stem(name)
        left = tmp_path / f".{stem}.abcdefgh.unseg-tmp"
        left.write_bytes(b"")
        assert len(left.name.encode()) <= 255
        assert io.stale_temp_files(str(tmp_path))[stem] == [str(left)]
        left.unlink()
    assert io.temp_stem("n" * 255) != io.temp_stem("n" * 254 + "m")
