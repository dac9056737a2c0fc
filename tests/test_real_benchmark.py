"""The real-data benchmark: its data import, its table and JSON, and what it says without data.

Runs on a few images of ``../shared/data`` at run time (never copied into the repo) and
skips cleanly where that folder is missing.
"""

import hashlib
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import REPO

from fiftyone_unseg.audit.victims.sam import checkpoint_config

BENCHMARKS = os.path.join(REPO, "benchmarks")
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
needs_data = pytest.mark.skipif(
    not os.path.isdir(os.path.join(DATA, "camvid")), reason="no real data at ../shared/data"
)


def _bench(*args):
    return subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "real_effectiveness.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )


def test_without_data_it_names_the_public_datasets_to_download(tmp_path):
    proc = _bench("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json"))
    assert proc.returncode != 0 and not os.path.exists(tmp_path / "x.json")
    for name in ("CamVid", "COCO", "coco-2017", "ECSSD", "Oxford-IIIT Pet", "--data DIR"):
        assert name in proc.stderr, name


@needs_data
def test_a_quick_run_on_real_photos_writes_the_table_and_json(tmp_path):
    out = tmp_path / "real.json"
    proc = _bench(
        "--quick", "--victims", "semantic", "--stress", "jpeg75", "--seeds", "2",
        "--prompt", "instance", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    row = results["victims"]["semantic"]
    assert row["dataset"] == "camvid" and row["metric"] == "mIoU"
    for key in ("random_ratio", "random_flat_ratio", "pattern_ratio", "spread"):
        assert key in row
    assert len(row["runs"]["clean"]) == 2  # two victim seeds behind each number
    unseen = row["unseen_drive"]  # the test frames of the drive no training frame is from
    assert 0 < unseen["images"] < 8 and unseen["victim_seed"] == 0
    assert unseen["ratio"] == pytest.approx(unseen["protected"] / unseen["clean"])
    assert set(unseen) > {"clean", "protected", "random", "pattern_ratio"}
    if row["gain_ratio"] is not None:
        expected = (row["protected"] - row["chance"]) / (row["clean"] - row["chance"])
        assert row["gain_ratio"] == pytest.approx(expected)
    assert results["data"]["camvid"] == {"train": 8, "test": 8}
    assert results["prompt"] == "instance" and "prompt instance" in proc.stdout
    assert 25 < results["psnr"] < 60 and 0.5 < results["ssim"] <= 1
    stress = results["stress"]["jpeg75"]
    assert stress["victim"] == "semantic" and stress["countermeasure"] == "jpeg:75"
    assert {"ratio", "pattern_ratio", "countermeasure_ratio"} <= set(stress)
    assert "countermeasure_ratio" in stress["unseen_drive"]
    assert "semantic   camvid" in proc.stdout and "jpeg75" in proc.stdout
    # a third victim seed of the stress row joins the two it has; the victims stay
    proc = _bench(
        "--quick", "--victims", "--stress", "jpeg75", "--seeds", "1", "--victim-seed", "2",
        "--prompt", "instance", "--out", str(out), "--update", "--add-seeds",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    updated = json.loads(out.read_text())
    grown = updated["stress"]["jpeg75"]
    assert grown["victim_seeds"] == [0, 1, 2] and len(grown["runs"]["pattern"]) == 3
    assert grown["runs"]["clean"][:2] == stress["runs"]["clean"]
    assert grown["unseen_drive"] == stress["unseen_drive"]  # victim seed 0's, kept
    assert updated["victims"]["semantic"] == row and updated["victim_seed"] == 0


@needs_data
def test_image_size_sets_every_victims_input_and_the_published_side(tmp_path):
    out = tmp_path / "real.json"
    proc = _bench(
        "--quick", "--victims", "sam_point", "--baselines", "--seeds", "1",
        "--image-size", "64", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["victims"]["sam_point"]["settings"]["image_size"] == 64
    # no --stress: the default counter-measures are the semantic victim's, not asked for here
    assert results["stress"] == {} and "no stress rows: --stress-victim semantic" in proc.stdout
    assert results["data"]["pets"] == {"train": 8, "test": 8, "published_side": 64}


@needs_data
def test_a_sam_pretrained_on_other_photos_is_fine_tuned_and_scored_before_and_after(tmp_path):
    checkpoint = tmp_path / "sam_point.pth"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "pretrained_sam.py"), "--out", str(checkpoint),
         "--limit", "6", "--epochs", "1", "--image-size", "64"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_config(checkpoint).img_size == 64  # an official-format SAM state dict
    out = tmp_path / "real.json"
    proc = _bench(
        "--quick", "--victims", "sam_point", "--stress", "--baselines", "--seeds", "1",
        "--image-size", "64", "--sam-checkpoint", str(checkpoint), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    victims = json.loads(out.read_text())["victims"]
    assert list(victims) == ["sam_point_finetuned"]  # not the row of the victim from scratch
    row = victims["sam_point_finetuned"]
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:12]
    assert row["checkpoint"] == {"name": "sam_point.pth", "sha256": digest}
    assert 0 <= row["pretrained"] <= 1 and "before any fine-tuning" in proc.stdout
    assert row["pretrained"] != row["clean"]  # the weights alone, then fine-tuned on clean
    assert row["settings"] == {"epochs": 1, "image_size": 64, "batch_size": 16, "lr": 1e-4}


@needs_data
def test_real_sets_import_with_fiftyones_importers_and_keep_their_splits():
    sys.path.insert(0, BENCHMARKS)
    import real_data

    camvid = real_data.load_camvid(DATA, name="test-real-camvid", limit=3)
    assert camvid.count_sample_tags() == {"train": 3, "test": 3}
    assert camvid.mask_targets["ground_truth"][0] == "sky"
    coco = real_data.load_coco(DATA, name="test-real-coco", classes=["person"], limit=4)
    assert coco.count_sample_tags() == {"train": 4, "test": 4}
    train, test = (set(coco.match_tags(t).values("filepath")) for t in ("train", "test"))
    assert not train & test
    people = coco.distinct("person.detections.label")
    assert people == ["person"] and coco.count("instances.detections") > coco.count(
        "person.detections"
    )
    for dataset in (camvid, coco):
        assert all(p.startswith(DATA) for p in dataset.values("filepath"))  # read in place
        dataset.delete()


def test_copies_rescales_and_crops_of_a_photo_are_found_as_one_photo(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    import near_duplicates

    rng = np.random.default_rng(0)
    photos = [
        cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480)) for _ in "ab"
    ]
    cv2.imwrite(str(tmp_path / "a.jpg"), photos[0])
    crop = cv2.resize(photos[0][40:440, 60:600], (405, 300), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "a_crop.jpg"), crop, [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(tmp_path / "b.png"), photos[1])
    paths = sorted(str(p) for p in tmp_path.iterdir())
    assert near_duplicates.same_photo_groups(paths) == [["a", "a_crop"]]


@needs_data
def test_no_held_out_pet_photo_is_a_copy_of_a_training_photo():
    sys.path.insert(0, BENCHMARKS)
    import near_duplicates
    import real_data

    pets = real_data.load_pets(DATA, name="test-real-pets")
    stems = {os.path.splitext(os.path.basename(p))[0]: p for p in pets.values("filepath")}
    split = {s: tags[0] if tags else None for s, tags in zip(stems, pets.values("tags"))}
    for group in real_data.PETS_SAME_PHOTO:
        sides = {split[s] for s in group}
        assert sides in ({"train"}, {"test"}, {"train", None}), group  # a copy: one side
    assert pets.count_sample_tags() == {"train": 400, "test": 193}
    first, *rest = real_data.PETS_SAME_PHOTO[0]  # the list is what the scan finds
    assert near_duplicates.same_photo_groups([stems[first], *(stems[s] for s in rest)])
    pets.delete()


@needs_data
def test_published_copies_are_smaller_lossless_and_keep_labels_aligned(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    import real_data

    from fiftyone_unseg.labels import resolve_prompt, segment_map

    coco = real_data.load_coco(DATA, name="test-real-coco-small", limit=2)
    originals = coco.values("filepath")
    digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in originals]
    spec = resolve_prompt(coco, "instances")

    def objects(sample):
        return segment_map(sample.instances, sample.metadata.height, sample.metadata.width, spec)

    coco.compute_metadata()
    before = [objects(s) for s in coco]
    real_data.downscale(coco, 160, str(tmp_path))
    for sample, original, digest, full in zip(coco, originals, digests, before):
        assert sample.filepath.startswith(str(tmp_path)) and sample.filepath.endswith(".png")
        assert max(sample.metadata.width, sample.metadata.height) == 160
        assert hashlib.sha256(open(original, "rb").read()).hexdigest() == digest
        small = objects(sample)
        assert small.shape == (sample.metadata.height, sample.metadata.width)
        # the same objects cover the same share of the picture
        assert (small > 0).mean() == pytest.approx((full > 0).mean(), abs=0.03)
    coco.delete()


def test_each_victims_stress_rows_reach_the_card_and_only_that_victims_preset_table():
    sys.path.insert(0, BENCHMARKS)
    from real_report import card_table, preset_table

    def row(victim, countermeasure, ratio):
        return {
            "victim": victim, "dataset": {"semantic": "camvid", "yolo": "pets"}[victim],
            "countermeasure": countermeasure, "ratio": ratio,
            "gain_ratio": ratio, "pattern_ratio": 0.9, "countermeasure_ratio": 0.95, "seeds": 1,
        }  # fmt: skip

    semantic = {"ratio": 0.93, "seeds": 2, "pattern_ratio": 1.01}
    results = {
        "victims": {"semantic": semantic},
        "psnr": 33.4,
        "quality": {"camvid": {"psnr": 33.4}},
        "stress": {
            "jpeg75": row("semantic", "jpeg:75", 0.61),
            "yolo_jpeg75": row("yolo", "jpeg:75", 0.79),
        },
    }
    presets = preset_table({"default": results, "robust": results})
    assert "0.61 (1)" in presets and "0.79" not in presets
    assert "mean PSNR on CamVid (dB) | 33.4 | 33.4 |" in presets
    results["quality"]["pets"] = {"psnr": 38.2}
    yolo = preset_table({"default": results, "robust": {**results, "stress": {}}}, "yolo")
    assert "| `jpeg:75` | 0.79 (1) | n/a | 0.90 | 0.95 |" in yolo and "0.61" not in yolo
    assert "mean PSNR on the pets (dB) | 38.2 | 38.2 |" in yolo
    card = card_table({**results, "victims": {}})
    assert "| `jpeg:75` | semantic | 0.61 |" in card and "| `jpeg:75` | yolo | 0.79 |" in card


def test_results_measured_otherwise_lend_no_baselines_and_merge_with_none():
    sys.path.insert(0, BENCHMARKS)
    from machine import merge_results
    from real_rows import measurement_differences, pooled

    ours = {"eps": 8 / 255, "eps_bg": 2 / 255, "quick": False, "data": {"pets": {"test": 193}}}
    assert measurement_differences(ours, {**ours, "data": {"camvid": {"test": 233}}}) == []
    twice = {**ours, "eps": 16 / 255, "data": {"pets": {"test": 200}}}
    assert measurement_differences(ours, twice) == ["eps", "pets split"]
    assert measurement_differences(ours, {**ours, "quick": True}) == ["quick"]
    # an update on another pets split keeps no pets row it does not measure again
    from real_rows import other_splits, without_rows_on

    before = {
        "data": {"pets": {"test": 200}, "camvid": {"test": 233}},
        "victims": {"yolo": {"dataset": "pets"}, "semantic": {"dataset": "camvid"}},
        "stress": {"yolo_jpeg75": {"dataset": "pets"}},
    }
    after = {"data": {"pets": {"test": 193}}, "victims": {"yolo": {"dataset": "pets"}}}
    assert other_splits(before, after) == ["pets"]
    kept, dropped = without_rows_on(before, ["pets"], after)
    assert dropped == ["stress/yolo_jpeg75"] and set(kept["victims"]) == {"yolo", "semantic"}
    assert kept["stress"] == {} and before["stress"]  # the file read stays as it was
    quality = {"camvid": {"psnr": 33.0, "images": 300}, "pets": {"psnr": 39.0, "images": 100}}
    assert pooled(quality, "psnr") == pytest.approx(34.5)  # per image, not per dataset
    amd, intel = ({"victims": {}, "machine": {"cpu": c}} for c in ("AMD EPYC", "Intel Xeon"))
    assert merge_results(amd, {**amd, "victims": {"yolo": 1}}, (), ("victims",))["victims"]
    with pytest.raises(SystemExit, match="measured on AMD EPYC there, on Intel Xeon now"):
        merge_results(amd, {**intel, "victims": {"yolo": 1}}, (), ("victims",))


def test_a_quick_smoke_run_never_overwrites_the_committed_results(tmp_path):
    proc = _bench("--quick", "--victims", "semantic")
    assert proc.returncode == 2 and "--quick is a smoke run, not the benchmark" in proc.stderr


def test_a_second_victim_seed_joins_a_row_measured_at_the_first():
    sys.path.insert(0, BENCHMARKS)
    from real_rows import add_seeds, summary_row

    settings = {"epochs": 12, "image_size": 128}
    runs = {"clean": [0.30], "protected": [0.15], "pattern": [0.20], "none": [0.27]}
    first = {
        "victim": "yolo", "countermeasure": "jpeg:75",
        **summary_row("mAP", 0.05, runs, [0]), "settings": settings,
    }  # fmt: skip
    assert first["ratio"] == pytest.approx(0.5) and first["gain_ratio"] == pytest.approx(0.4)
    assert first["countermeasure_ratio"] == pytest.approx(0.9) and first["spread"] is None
    # as rows were stored before seeds were recorded: no runs for one seed
    stored = {k: v for k, v in first.items() if k != "victim_seeds"} | {"runs": {}}
    second = summary_row("mAP", 0.05, {k: [v[0] + 0.1] for k, v in runs.items()}, [1])
    row = add_seeds(stored, {**second, "settings": settings}, first_seed=0)
    assert row["victim_seeds"] == [0, 1] and row["seeds"] == 2
    assert row["runs"]["pattern"] == pytest.approx([0.20, 0.30])
    assert row["clean"] == pytest.approx(0.35) and row["ratio"] == pytest.approx(0.2 / 0.35)
    assert row["spread"] == pytest.approx(0.1 / 2**0.5)
    assert row["countermeasure_ratio"] == pytest.approx(0.32 / 0.35)
    assert row["victim"] == "yolo" and row["countermeasure"] == "jpeg:75"
    with pytest.raises(SystemExit, match=r"seeds \[1\] are already"):
        add_seeds(row, {**second, "settings": settings}, first_seed=0)
    with pytest.raises(SystemExit, match="settings differ"):
        add_seeds(stored, {**second, "settings": {**settings, "epochs": 40}}, first_seed=0)
    # victims fine-tuned from a checkpoint: it stays named, and another one does not join
    tuned = {**first, "checkpoint": {"name": "sam.pth", "sha256": "a1"}, "pretrained": 0.4}
    later = {**second, "settings": settings, "checkpoint": {"name": "sam.pth", "sha256": "a1"}}
    row = add_seeds(tuned, later, first_seed=0)
    assert row["checkpoint"]["sha256"] == "a1" and row["pretrained"] == 0.4
    with pytest.raises(SystemExit, match="another checkpoint"):
        add_seeds(tuned, {**later, "checkpoint": {"sha256": "b2"}}, first_seed=0)


# real_effectiveness.main with its measurements replaced by one row (in a process of its
# own: the benchmark's sandbox points FiftyOne at a private database as it is imported).
FIRST_UPDATE = """
import sys
sys.path.insert(0, {benchmarks!r})
import real_effectiveness
from real_rows import summary_row

def results(runs):
    row = {{"dataset": "pets", **summary_row("mAP", 0.05, runs, [0]), "settings": {{"epochs": 40}}}}
    return {{"generator": "b", "eps": 8 / 255, "eps_bg": 2 / 255, "quick": False,
            "data": {{"pets": {{"train": 4, "test": 2}}}}, "victim_seed": 0,
            "victims": {{"yolo": row}}, "stress": {{}}, "quality": {{}}}}

if sys.argv[1] == "donor":
    import json
    print(json.dumps(results({{"clean": [0.29], "protected": [0.2], "random": [0.3]}})))
    sys.exit(0)
real_effectiveness.run = lambda args: results({{"clean": [0.29], "protected": [0.01]}})
sys.exit(real_effectiveness.main(sys.argv[1:]))
"""


def test_baselines_are_borrowed_by_a_first_update_to_a_new_file(tmp_path):
    """--update to a file that does not exist yet has nothing to merge: the run's own
    results take the donor's baselines (they were published without them)."""
    script = FIRST_UPDATE.format(benchmarks=BENCHMARKS)

    def bench(*args):
        return subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
        )

    donor = tmp_path / "donor.json"
    donor.write_text(bench("donor").stdout)
    out = tmp_path / "new.json"
    bench("--victims", "yolo", "--update", "--out", str(out), "--baselines-from", str(donor))
    row = json.loads(out.read_text())["victims"]["yolo"]
    assert row["runs"]["random"] == [0.3] and row["random_ratio"] == pytest.approx(0.3 / 0.29)


def test_a_new_generators_row_borrows_baselines_only_from_identical_clean_trainings():
    sys.path.insert(0, BENCHMARKS)
    from real_rows import borrow_baselines, summary_row

    settings = {"epochs": 40, "image_size": 128}

    def row(runs):
        return {"dataset": "pets", **summary_row("mAP", 0.05, runs, [0, 1]), "settings": settings}

    clean = [0.29, 0.28]
    old = row({"clean": clean, "protected": [0.10, 0.13], "random": [0.30, 0.29]})
    new = row({"clean": clean, "protected": [0.01, 0.04]})
    done, taken = borrow_baselines(new, old)
    assert taken == ["random"] and done["runs"]["protected"] == [0.01, 0.04]
    assert done["random_ratio"] == pytest.approx(0.295 / 0.285)
    assert done["ratio"] == pytest.approx(0.025 / 0.285) and done["dataset"] == "pets"
    # another machine's clean trainings, other settings or seeds: nothing carries over
    for other in (
        row({**old["runs"], "clean": [0.29, 0.27]}),
        {**old, "settings": {**settings, "epochs": 12}},
        {**old, "victim_seeds": [1, 2]},
    ):
        assert borrow_baselines(new, other) == (new, [])
    assert borrow_baselines(done, old) == (done, [])  # nothing missing
    # a one-seed row takes the baselines at its seed from a two-seed row
    seed1 = {**summary_row("mAP", 0.05, {"clean": [0.28], "protected": [0.02]}, [1])}
    done, taken = borrow_baselines({**seed1, "settings": settings}, old)
    assert taken == ["random"] and done["random_ratio"] == pytest.approx(0.29 / 0.28)
    assert done["victim_seeds"] == [1] and done["runs"]["random"] == [0.29]
    assert borrow_baselines(new, None) == (new, [])
    # a one-seed row stored before per-seed scores were: its means are seed 0's scores
    legacy = summary_row(
        "mAP", 0.05, {"clean": [0.29], "protected": [0.2], "pattern": [0.26], "none": [0.28]}, [0]
    )
    legacy = {k: v for k, v in legacy.items() if k != "victim_seeds"} | {
        "runs": {},
        "settings": settings,
    }
    one = summary_row("mAP", 0.05, {"clean": [0.29], "protected": [0.08]}, [0]) | {
        "settings": settings
    }
    done, taken = borrow_baselines(one, legacy, first_seed=0)
    assert taken == ["pattern", "none"] and done["countermeasure_ratio"] == pytest.approx(
        0.28 / 0.29
    )
    assert borrow_baselines(one, legacy, first_seed=1) == (one, [])


@needs_data
def test_texture_share_shows_both_shipped_generators_make_noise_specific_to_each_image(
    tmp_path,
):
    out = tmp_path / "share.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "texture_share.py"), "--limit", "12",
         "--every", "10", "--generators", "default", "robust", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    default, robust = (results["generators"][name] for name in ("default", "robust"))
    assert results["frames"] == 12 and "| default |" in proc.stdout and "| robust |" in proc.stdout
    # Both were trained against one texture repeated over images (shared_texture_weight=1;
    # 0.17 and 0.22 on 123 frames), which the informed attack would estimate and remove:
    # the generators shipped before them had 0.82 and 0.87 of their noise in that texture
    # (the robust one kept 0.59 of its energy after the attack). Frames 10 apart:
    # neighbouring video frames look alike, and so does their noise.
    for row in (default, robust):
        assert row["shared"] < 0.5 and row["left_after_attack"] > 0.75
    assert all(30 < row["psnr"] < 40 for row in (default, robust))
    # On 480 px frames the noise is the generator's 256 px output enlarged: JPEG 75's 8x8
    # blocks keep most of it (0.94 on 6 frames, colour included).
    assert results["dataset"] == "camvid" and default["kept_jpeg75"] > 0.8
    assert all(0 < row["grey"] <= 1 for row in (default, robust))


PARSE = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import real_effectiveness

out = []
for argv in json.loads(sys.argv[1]):
    try:
        a = real_effectiveness.parse_args(argv)
        out.append([a.generator, a.class_mix, a.class_style, a.preset, a.out])
    except SystemExit as error:
        out.append(error.code)
print(json.dumps(out))
"""


def test_a_preset_sets_what_the_benchmark_protects_with_and_the_file_it_writes():
    argvs = [
        [],
        ["--preset", "semantic"],
        ["--preset", "semantic", "--class-mix", "0.5"],
        ["--preset", "robust"],
        ["--generator", "runs/x/generator", "--class-mix", "0.3"],
        ["--preset", "robust", "--generator", "runs/x/generator"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", PARSE.format(benchmarks=BENCHMARKS), json.dumps(argvs)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = os.path.join(BENCHMARKS, "results", "real")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [
        [None, 0.0, "texture", None, os.path.join(results, "effectiveness.json")],
        ["default", 1.0, "colour", "semantic", os.path.join(results, "semantic.json")],
        ["default", 0.5, "colour", "semantic", os.path.join(results, "semantic.json")],
        ["robust", 0.0, "texture", "robust", os.path.join(results, "robust.json")],
        ["runs/x/generator", 0.3, "texture", None, os.path.join(results, "effectiveness.json")],
        2,  # a preset and a generator: refused
    ]
    assert "a generator or a preset ('robust'), not both" in proc.stderr


def test_seeds_added_under_class_keys_pool_each_keys_quality():
    """Each run of a class-key preset draws keys of its own: seeds added to a file keep
    every key's PSNR, where the last run's used to replace them."""
    sys.path.insert(0, BENCHMARKS)
    from real_rows import merge

    quality = {"psnr": 32.0, "ssim": 0.98, "images": 367}
    old = {
        "generator": "none", "eps": 8 / 255, "eps_bg": 2 / 255, "class_mix": 1.0,
        "class_style": "colour", "prompt": "all", "quick": False, "victim_seed": 0,
        "victims": {}, "stress": {}, "data": {"camvid": {"test": 233}}, "seconds": 1.0,
        "quality": {"camvid": {**quality, "keys": 2, "per_key": [
            {"psnr": 32.0, "ssim": 0.98}, {"psnr": 34.0, "ssim": 0.96}]}},
    }  # fmt: skip
    new = {**old, "victim_seed": 5, "quality": {"camvid": {**quality, "psnr": 35.0}}}
    merged = merge(old, new, add=True)
    camvid = merged["quality"]["camvid"]
    assert camvid["keys"] == 3 and camvid["psnr"] == pytest.approx((32 + 34 + 35) / 3)
    assert camvid["ssim"] == pytest.approx((0.98 + 0.96 + 0.98) / 3)
    assert merged["psnr"] == pytest.approx(camvid["psnr"])
    plain = {**old, "class_mix": 0.0, "quality": {"camvid": quality}}
    again = merge(plain, {**plain, "victim_seed": 5}, add=True)  # one noise: nothing to pool
    assert again["quality"]["camvid"] == quality
