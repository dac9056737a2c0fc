"""The benchmarks against a real MongoDB: their private sandbox and what their options train."""

import json
import os
import shutil
import subprocess
import sys

import fiftyone as fo
import pytest
from conftest import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")
# Open the sandbox, store one dataset, print the database and folder; with "clean", also
# call cleanup(); with "hang", wait to be killed.
SCRIPT = """
import sys, time
sys.path.insert(0, {benchmarks!r})
import sandbox
import fiftyone as fo
import pytest
fo.Dataset("probe").add_sample(fo.Sample(filepath="x.png"))
print(fo.config.database_name, sandbox.TMP, flush=True)
if sys.argv[1] == "clean":
    sandbox.cleanup()
else:
    time.sleep(600)
"""


def _sandbox(mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(benchmarks=BENCHMARKS), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_killed_benchmarks_database_and_folder_go_with_the_next_cleanup():
    client = fo.core.odm.get_db_client()
    killed, alive = _sandbox("hang"), _sandbox("hang")
    try:
        killed_db, killed_tmp = killed.stdout.readline().split()
        alive_db, alive_tmp = alive.stdout.readline().split()
        killed.kill()  # no chance to clean up
        killed.wait()
        assert killed_db in client.list_database_names() and os.path.isdir(killed_tmp)

        cleaner = _sandbox("clean")
        own_db, own_tmp = cleaner.stdout.readline().split()
        assert cleaner.wait(timeout=120) == 0
        names = client.list_database_names()
        assert own_db not in names and not os.path.exists(own_tmp)
        assert killed_db not in names and not os.path.exists(killed_tmp)
        assert alive_db in names and os.path.isdir(alive_tmp)  # still running: kept
    finally:
        alive.kill()
        alive.wait()
        client.drop_database(alive_db)
        shutil.rmtree(alive_tmp, ignore_errors=True)


# A benchmark whose --update merge refuses the file it would update.
REFUSED_MERGE = """
import sys, argparse
sys.path.insert(0, {benchmarks!r})
import sandbox

def refuse(old, new):
    raise SystemExit("--update: generator differs (a there, b now)")

args = argparse.Namespace(update=True, out={out!r})
sandbox.measure_and_publish(lambda args: {{"generator": "b", "ratio": 0.25}}, args, refuse, str)
"""


def test_results_a_refused_update_cannot_merge_are_kept(tmp_path):
    out = tmp_path / "results.json"
    out.write_text(json.dumps({"generator": "a"}))
    script = REFUSED_MERGE.format(benchmarks=BENCHMARKS, out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    kept = tmp_path / "results.unmerged.json"
    assert done.returncode != 0 and f"results are in {kept}" in done.stderr
    assert "generator differs" in done.stderr
    assert json.loads(kept.read_text()) == {"generator": "b", "ratio": 0.25}
    assert json.loads(out.read_text()) == {"generator": "a"}  # untouched


# Grey images whose class maps (random squares) they show only by a red shift of
# ``contrast`` (none: only the noise can tell a surrogate the classes). Prints the surrogate's pixel accuracy on clean and on
# perturbed images, the largest |noise| and the background's share of pixels.
MIN_MIN = """
import sys, argparse
sys.path.insert(0, {benchmarks!r})
import sandbox
import torch
from min_min import sample_wise_noise
torch.manual_seed(0)
classes = torch.zeros(8, 32, 32, dtype=torch.uint8)
for i in range(8):
    r, c = torch.randint(0, 16, (2,)).tolist()
    classes[i, r : r + 16, c : c + 16] = 1 + i % 2
classes[:, :4] = 255  # void: neither learnt nor scored
images = torch.full((8, 3, 32, 32), 0.5)
images[:, 0] += {contrast} * (classes == 1) - {contrast} * (classes == 2)
args = argparse.Namespace(objective={objective!r}, rounds=20, surrogate_steps=10, noise_steps=5,
                          step=0.15, batch=4, lr={lr}, surrogate="unet", crop={crop})
noise, accuracy, _ = sample_wise_noise(images, (classes > 0).float()[:, None], classes, 3,
                                         0, args)
sandbox.cleanup()
labelled = classes[classes != 255]
print(accuracy["clean"], accuracy["perturbed"], float(noise.abs().max()),
      float((labelled == 0).float().mean()), float((noise[:, :, 4:] == 0).float().mean()))
"""


def _min_min_script(objective="min-min", contrast=0.0, lr=1e-3, crop=None) -> str:
    return MIN_MIN.format(
        benchmarks=BENCHMARKS, objective=objective, contrast=contrast, lr=lr, crop=crop
    )


def _run_script(script: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [float(v) for v in out.stdout.split()[-5:]]


@pytest.mark.parametrize("objective", ["targeted", "untargeted"])
def test_adversarial_noise_makes_a_surrogate_trained_on_clean_images_misread_them(objective):
    """Adversarial poisoning: the surrogate learns the classes from the clean images' red
    shift, and the noise (within the budgets) makes it misread the perturbed ones."""
    clean, perturbed, largest, background, _ = _run_script(
        _min_min_script(objective=objective, contrast=0.05, lr=1e-2)
    )
    assert largest <= 1.0
    assert clean > background + 0.15  # it learnt the classes from clean images
    assert perturbed < clean - 0.15  # the noise steers it off them


@pytest.mark.parametrize("crop", [None, 24])
def test_sample_wise_error_minimising_noise_teaches_the_surrogate_what_images_do_not_show(crop):
    clean, perturbed, largest, background, untouched = _run_script(_min_min_script(crop=crop))
    assert largest <= 1.0  # within the budgets
    assert clean <= background + 0.02  # grey images: at best the majority class
    assert perturbed > clean + 0.15  # the noise carries the classes
    assert untouched < 0.05  # random crops reach every labelled pixel


def test_min_min_noise_travels_as_the_pixels_the_perturbed_frames_add(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    import min_min
    import torch

    from fiftyone_unseg.modeling import NoiseGenerator
    from fiftyone_unseg.settings import DEFAULT_EPS, DEFAULT_EPS_BG

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 20, 24), generator=generator).float() / 255
    classes = torch.randint(0, 3, (3, 20, 24), generator=generator).to(torch.uint8)
    classes[:, :2] = min_min.IGNORE
    noise = torch.rand(3, 3, 20, 24, generator=generator) * 2 - 1
    objects = min_min.object_mask(classes)
    assert not objects[:, 0, :2].any()  # void is no object: the background budget
    name = min_min.variant_name("min-min", 0)
    min_min.save_noise(tmp_path, name, min_min.pixel_noise(noise, objects), {"rounds_done": 3})
    pixels, record = min_min.load_noise(tmp_path, name)
    assert record == {"rounds_done": 3} and sorted(os.listdir(tmp_path)) == [
        "em_reset0.json",
        "em_reset0.npy",
    ]
    assert pixels.dtype.name == "int8" and pixels.shape == (3, 20, 24, 3)
    assert abs(pixels).max() == 8 and abs(pixels[:, :2]).max() == 2
    perturbed = NoiseGenerator.perturb(images, noise, objects, DEFAULT_EPS, DEFAULT_EPS_BG)
    expected = perturbed.mul(255).round().permute(0, 2, 3, 1)
    added = (images.mul(255).round().permute(0, 2, 3, 1) + torch.from_numpy(pixels)).clamp(0, 255)
    assert (added - expected).abs().max() <= 1 and (added != expected).float().mean() < 0.01


def test_effectiveness_without_baselines_trains_only_clean_and_protected_under_stress(tmp_path):
    out_file = tmp_path / "effectiveness.json"
    args = ["--quick", "--victims", "semantic", "--baselines", "--stress", "blur1"]
    out = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "effectiveness.py"), *args, "--out", out_file],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out_file.read_text())
    victim, stress = results["victims"]["semantic"], results["stress"]["blur1"]
    assert not {"random_ratio", "pattern_ratio"} & set(victim)
    assert set(stress) == {"victim", "countermeasure", "clean", "protected", "ratio"}
    assert stress["countermeasure"] == "blur:1.0"
    # One thread: the clean model trains identically in both audits, which is what lets
    # a new generator's audit reuse the baselines of a full run at the same settings.
    assert stress["clean"] == victim["clean"]
    assert "blur1" in out.stdout and "n/a" in out.stdout


def test_the_suite_answers_help_without_running_a_benchmark():
    """``benchmarks/run_all.py --help`` prints what the suite does; it ran every
    benchmark for hours before."""
    suite = os.path.join(BENCHMARKS, "run_all.py")
    done = subprocess.run(
        [sys.executable, suite, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "usage: python benchmarks/run_all.py" in done.stdout
    assert "===" not in done.stdout  # no benchmark started
