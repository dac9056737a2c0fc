"""The generator that ships with the package is the one its model card describes, and
the experiment history (docs/GENERATOR_HISTORY.md) quotes its committed result files."""

import glob
import json
import os
import re

import numpy as np
import pytest
import torch

from fiftyone_unseg.checkpoint import (
    CONFIG_FILE,
    DEFAULT_GENERATOR_DIR,
    WEIGHTS_FILE,
    load_generator,
    shipped_generator_dir,
)
from fiftyone_unseg.modeling import NoiseGenerator
from fiftyone_unseg.sample_data import make_scene
from trainer.config import TrainConfig, load_config

CARD = DEFAULT_GENERATOR_DIR / "MODEL_CARD.md"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
HISTORY = os.path.join(RESULTS, "history")  # the older results the history doc quotes
HISTORY_DOC = os.path.join(REPO, "docs", "GENERATOR_HISTORY.md")
# The previous default, trained on generated scenes: the generator the history measured.
HISTORY_GENERATOR = "1b4125f7dc9a"
SCENE_AUDIT = os.path.join(HISTORY, f"effectiveness_{HISTORY_GENERATOR}.json")


def _plain(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))


def _card() -> str:
    return CARD.read_text()


def _history() -> str:
    return open(HISTORY_DOC).read()


def test_default_generator_loads_and_is_small():
    model = load_generator()
    assert model.config.name == "tiny" and model.img_size == 256
    assert (DEFAULT_GENERATOR_DIR / WEIGHTS_FILE).stat().st_size < 25 * 2**20
    assert model.generator_id in _card()


def _data_root_free(spec: str) -> str:
    """A ``--data`` spec with the real data folder written as the Makefile's ``$(DATA)``."""
    return re.sub(r"[^:]*/(ecssd|camvid|coco|pets)/", r"$(DATA)/\1/", spec)


def lineage(metadata: dict) -> list:
    """A generator's training stages, oldest first: each fine-tune's metadata records the
    generator it started from under ``init_generator``."""
    stages = []
    while metadata:
        stages.insert(0, metadata)
        metadata = metadata.get("init_generator")
    return stages


def _makefile() -> str:
    """The Makefile with its ``NAME = value`` variables written out where they are used."""
    text = open(os.path.join(REPO, "Makefile")).read()
    for name, value in re.findall(r"^([A-Z_]+) = (.+)$", text, flags=re.M):
        if name != "DATA":  # the data root stays $(DATA), as in the cards
            text = text.replace(f"$({name})", value)
    return text


@pytest.mark.parametrize("preset", ["default", "robust"])
def test_card_names_the_commands_and_configs_that_made_the_weights(preset):
    """One `unseg train` line per training stage, first to last: each rebuilds the config
    of its stage in the checkpoint's lineage (the last one: the shipped weights; each
    before it: the generator the next started from), and the Makefile runs them all."""
    folder = shipped_generator_dir(preset)
    if not (folder / CONFIG_FILE).is_file():
        pytest.skip(f"no {preset} generator shipped")
    info = json.loads((folder / CONFIG_FILE).read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    block = re.search(r"```\n((?:unseg train [^\n]+\n)+)```", card).group(1)
    commands = block.splitlines()
    stages = lineage(info["metadata"])
    if len(stages) > len(commands):  # the stages before the card's first command: its init,
        default = load_generator()  # one of the default's stages (the robust preset's case)
        shipped = {s["generator_id"] for s in lineage(default.metadata) if "generator_id" in s}
        assert stages[-len(commands) - 1]["generator_id"] in shipped | {default.generator_id}
        stages = stages[-len(commands) :]
    assert len(stages) == len(commands)
    makefile = _makefile()
    machine = {"device", "num_workers"}  # where it ran, not what it is
    previous_out = None
    for command, stage in zip(commands, stages):
        trained = _plain(TrainConfig.from_dict(stage["train_config"]))
        config = re.search(r"--config (\S+)", command).group(1)
        sets = dict(item.split("=", 1) for item in re.findall(r"--set (\S+)", command))
        sets.update(re.findall(r"--(seed) (\d+)", command))
        described = _plain(load_config(config, **{k: json.loads(v) for k, v in sets.items()}))
        described["data"] = re.findall(r"--data (\S+)", command)
        trained["data"] = [_data_root_free(spec) for spec in trained["data"]]
        init = re.search(r"--init (\S+)", command)
        if previous_out:  # a later stage starts from the stage before it
            assert init and init.group(1) == f"{previous_out}/generator", command
            machine.add("init")  # that run's folder, wherever it was
        assert {k: v for k, v in described.items() if k not in machine} == {
            k: v for k, v in trained.items() if k not in machine
        }, command
        previous_out = re.search(r" --out (\S+)", command).group(1)
        recipe = re.sub(r" --out \S+", "", command).removeprefix("unseg train")
        assert f"/unseg train{recipe} --out" in makefile, recipe
    assert f"{info['metadata']['step']} steps" in card


@pytest.mark.parametrize("preset", ["default", "robust"])
def test_card_is_at_most_10_kb(preset):
    card = DEFAULT_GENERATOR_DIR.parent / preset / "MODEL_CARD.md"
    size = card.stat().st_size
    assert size <= 10 * 1024, f"{preset}'s MODEL_CARD.md is {size} bytes; the history goes in docs/"


def test_card_quotes_the_real_data_benchmark_and_points_to_the_history():
    import sys

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    from real_report import card_table

    results = json.loads(open(os.path.join(RESULTS, "real", "effectiveness.json")).read())
    card = _card()
    assert card_table(results) in card  # the table, as the benchmark writes it
    more = os.path.join(RESULTS, "real", "more_countermeasures", "default.json")
    assert card_table(json.loads(open(more).read())) in card  # rows of their own runs
    default = results["generators"][load_generator().generator_id]
    assert default["ratio"] == results["victims"]["semantic"]["ratio"]
    assert f"| `{load_generator().generator_id}` (shipped) |" in card
    assert "docs/GENERATOR_HISTORY.md" in card and os.path.isfile(HISTORY_DOC)
    assert f"`{HISTORY_GENERATOR}`" in card


def test_history_quotes_the_committed_benchmark():
    results = json.loads(open(SCENE_AUDIT).read())
    assert results["generator"] == HISTORY_GENERATOR
    card = _history()
    assert f"class_mix={results.get('class_mix', 0.0)}" in card  # the protection measured
    for name, victim in results["victims"].items():
        row = next(x for x in card.splitlines() if x.startswith(f"| {name} ("))
        for key in ("ratio", "random_ratio", "pattern_ratio", "class_pattern_ratio"):
            assert key not in victim or f"{victim[key]:.2f}" in row, (name, key)
    for name, stress in results["stress"].items():
        row = next(x for x in card.splitlines() if x.startswith(f"| `{stress['countermeasure']}`"))
        for key in ("ratio", "pattern_ratio", "class_pattern_ratio", "countermeasure_ratio"):
            assert key not in stress or f"{stress[key]:.2f}" in row, (name, key)
    assert f"{results['psnr']:.1f}" in card
    others = ("effectiveness_*_victim_seed*.json", "effectiveness_class_mix*.json")
    paths = [p for name in others for p in glob.glob(os.path.join(HISTORY, name))]
    assert len(paths) >= len(others)
    for path in paths:
        other = json.loads(open(path).read())  # other victim seeds, other class mixes
        assert other["generator"] == results["generator"], path
        start = f"| {other.get('class_mix', 0.0)} | {other['victim_seed']} |"
        tests = {**other["victims"], **other["stress"]}
        for name, result in tests.items():
            row = next(x for x in card.splitlines() if x.startswith(f"{start} {name} |"))
            for key in ("ratio", "pattern_ratio", "class_pattern_ratio", "countermeasure_ratio"):
                if key in result:
                    assert f"{result[key]:.2f}" in row, (path, name, key)


def test_history_quotes_the_benchmark_on_each_cpu():
    main = SCENE_AUDIT
    paths = [main, *glob.glob(os.path.join(HISTORY, "cross_cpu", "*.json"))]
    assert len(paths) > 1
    card = _history()
    for path in paths:
        results = json.loads(open(path).read())
        assert results["generator"] == HISTORY_GENERATOR, path
        cpu = results["machine"]["cpu"]
        for name, result in {**results["victims"], **results["stress"]}.items():
            row = next(x for x in card.splitlines() if x.startswith(f"| {cpu} | {name} |"))
            assert f"| {result['clean']:.3f} |" in row, (path, name)
            for key in ("ratio", "random_ratio", "pattern_ratio", "countermeasure_ratio"):
                if key in result:
                    assert f"{result[key]:.2f}" in row, (path, name, key)


def test_history_quotes_the_committed_spread_of_its_recipe():
    path = os.path.join(HISTORY, "recipe_spread.json")
    results = json.loads(open(path).read())
    card = _history()
    assert HISTORY_GENERATOR in results["generators"]
    for generator_id, row in results["generators"].items():
        line = next(x for x in card.splitlines() if f"| `{generator_id}` |" in x)
        for scenes in ("validation", "benchmark"):
            if scenes in row:
                assert f"{row[scenes]['ratio']:.3f}" in line, (generator_id, scenes)
    spread = results["spread"]["validation"]
    assert f"mean {spread['mean']:.3f}, sample sd {spread['sd']:.3f}" in card
    assert "Choosing on validation scenes gave seed" in card and f"`{results['chosen']}`" in card
    assert results["chosen"] == HISTORY_GENERATOR  # the previous default was the chosen draw


def test_default_noise_is_bounded_and_follows_the_mask():
    model = load_generator()
    scene = make_scene(7, 0, 256, "studio")
    image = torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255
    mask = torch.from_numpy(np.any(np.stack(scene.instance_masks), axis=0)).float()[None, None]
    prompt = torch.nn.functional.interpolate(mask, size=64, mode="nearest")
    with torch.no_grad():
        noise = model(image, mask_prompts=prompt)
        protected = NoiseGenerator.perturb(image, noise, mask, 8 / 255, 2 / 255)
    delta = (protected - image).abs()
    inside, outside = delta[mask.expand_as(delta) > 0], delta[mask.expand_as(delta) == 0]
    assert inside.max() <= 8 / 255 + 1e-6 and outside.max() <= 2 / 255 + 1e-6
    assert inside.mean() > 2 * outside.mean()


def test_history_quotes_the_class_key_attack():
    results = json.loads(open(os.path.join(HISTORY, "class_key_attack.json")).read())
    line = next(x for x in _history().splitlines() if "class_key_attack.json" in x and "|" in x)
    assert f"{results['attacked_ratio']:.2f}" in line
    assert f"{min(results['sign_agreement'].values()):.2f}" in line


def test_history_quotes_the_random_noise_controls():
    card = _history().splitlines()
    scenes = json.loads(open(SCENE_AUDIT).read())["dataset"]
    paths = glob.glob(os.path.join(HISTORY, "random_budget*.json"))
    assert paths
    runs = []
    for path in paths:
        results = json.loads(open(path).read())
        assert results["dataset"] == scenes, path  # the effectiveness benchmark's scenes
        runs += [(path, run) for run in results["runs"]]
    for path in glob.glob(os.path.join(HISTORY, "effectiveness_*_victim_seed*.json")):
        results = json.loads(open(path).read())  # main audits run with --random-flat
        for name, victim in results["victims"].items():
            if "random_flat_ratio" in victim:
                runs.append((path, dict(victim, victim=name, victim_seed=results["victim_seed"])))
    for path, run in runs:
        start = f"| {run['victim']} | {run['victim_seed']} |"
        row = next(x for x in card if x.startswith(start))
        assert f"{run['clean']:.3f}" in row, (path, start)
        for key in ("random_ratio", "random_flat_ratio"):
            assert f"{run[key]:.2f}" in row, (path, start, key)


def test_history_quotes_the_sample_wise_error_minimising_bound():
    results = json.loads(open(os.path.join(HISTORY, "sample_wise_em.json")).read())
    scenes = json.loads(open(SCENE_AUDIT).read())["dataset"]
    assert results["dataset"] == scenes  # the effectiveness benchmark's scenes
    card = _history().splitlines()
    for variant in results["variants"]:
        start = f"| min-min, reset every {variant['reset_every']} "
        row = next(x for x in card if x.startswith(start))
        assert f"{variant['ratio']:.2f}" in row and f"{variant['psnr']:.1f} dB" in row
        assert f"{variant['clean']:.3f}" in row and f"{variant['protected']:.3f}" in row
        accuracy = variant["surrogate_accuracy"]
        assert f"{accuracy['clean']:.3f} / {accuracy['perturbed']:.3f}" in row


def _assert_history_quotes_audit(card: list, path: str, results: dict) -> None:
    """Each victim and stress test of an audit of ``path`` has a history row that starts with
    the generator's id and names the test and victim seed, quoting its scores."""
    start, seed = f"| `{results['generator']}`", results["victim_seed"]
    for name, victim in results["victims"].items():
        row = next(x for x in card if x.startswith(start) and f"| {name} | {seed} |" in x)
        assert f"{victim['clean']:.3f}" in row and f"{results['psnr']:.1f} dB" in row
        for ratio in ("ratio", "random_ratio", "pattern_ratio"):
            assert ratio not in victim or f"{victim[ratio]:.2f}" in row, (path, name, ratio)
    for stress in results["stress"].values():
        key = f"| `{stress['countermeasure']}` | {seed} |"
        row = next(x for x in card if x.startswith(start) and key in x)
        for ratio in ("ratio", "pattern_ratio", "countermeasure_ratio"):
            assert ratio not in stress or f"{stress[ratio]:.2f}" in row, (path, key, ratio)


def test_history_quotes_the_protection_at_one_budget_everywhere():
    card = _history().splitlines()
    scenes = json.loads(open(SCENE_AUDIT).read())["dataset"]
    shipped = glob.glob(os.path.join(HISTORY, "effectiveness_flat_budget*.json"))
    trained_flat = glob.glob(os.path.join(HISTORY, "flat_trained", "*.json"))
    assert shipped and trained_flat
    for path in shipped + trained_flat:
        results = json.loads(open(path).read())
        assert results["eps_bg"] == results["eps"] and results["dataset"] == scenes, path
        assert (results["generator"] == HISTORY_GENERATOR) == (path in shipped)
        for stress in results["stress"].values():  # the full stress audit
            assert {"pattern_ratio", "countermeasure_ratio"} <= set(stress), path
        _assert_history_quotes_audit(card, path, results)


def test_history_quotes_the_generators_trained_through_countermeasures():
    card = _history().splitlines()
    scenes = json.loads(open(SCENE_AUDIT).read())["dataset"]
    paths = glob.glob(os.path.join(HISTORY, "eot_trained", "*.json"))
    assert paths
    for path in paths:
        results = json.loads(open(path).read())
        assert results["dataset"] == scenes and results["generator"] != HISTORY_GENERATOR
        _assert_history_quotes_audit(card, path, results)


def test_readme_quotes_the_budget_trade_off_from_the_committed_audits():
    """The README's "Budgets" bullet: the shipped generator's semantic ratios at the
    default and at one budget everywhere, each a mean over the audited victim seeds."""
    shipped = HISTORY_GENERATOR
    ratios = {}  # (background budget /255, test) -> {victim seed: ratio}
    audits = [SCENE_AUDIT]
    audits += glob.glob(os.path.join(HISTORY, "effectiveness_*.json"))
    for path in audits:
        results = json.loads(open(path).read())
        if results["generator"] != shipped or results.get("class_mix"):
            continue
        tests = {"semantic": results["victims"].get("semantic")}
        tests.update({k: v for k, v in results["stress"].items() if v["victim"] == "semantic"})
        budget = round(results["eps_bg"] * 255)
        for test, scores in tests.items():
            if scores:
                seeds = ratios.setdefault((budget, test), {})
                seed = results.get("victim_seed") or 0
                assert seeds.setdefault(seed, scores["ratio"]) == scores["ratio"], path
    mean = {key: f"{np.mean(list(by_seed.values())):.2f}" for key, by_seed in ratios.items()}
    assert len(ratios[(8, "jpeg75")]) == 3 and len(ratios[(2, "jpeg75")]) == 1
    bullet = re.search(
        r"- \*\*Budgets\*\*.*?(?=\n- )", open(os.path.join(REPO, "README.md")).read(), re.S
    )
    text = " ".join(bullet.group(0).split())
    for test in ("semantic", "jpeg75", "half_scale"):
        assert f"{mean[(8, test)]} against {mean[(2, test)]}" in text, test
    flat = json.loads(open(os.path.join(HISTORY, "effectiveness_flat_budget.json")).read())
    default = json.loads(open(SCENE_AUDIT).read())
    assert f"{flat['psnr']:.1f} dB" in text and f"{default['psnr']:.1f} dB" in text


def test_history_quotes_the_victims_trained_on_more_scenes():
    """Each audit of ``benchmarks/results/history/victim_scale/`` has a history row: held-out
    scenes, victim seed, epochs, clean mIoU and the three ratios."""
    card = _history()
    main = json.loads(open(SCENE_AUDIT).read())["dataset"]
    paths = glob.glob(os.path.join(HISTORY, "victim_scale", "*.json"))
    assert len(paths) >= 4
    for path in paths:
        results = json.loads(open(path).read())
        scenes, victim = results["dataset"], results["victims"]["semantic"]
        assert results["generator"] == HISTORY_GENERATOR, path
        assert {**scenes, "num": main["num"]} == main and scenes["num"] > main["num"], path
        row = (
            f"| {scenes['num']} | {results['victim_seed']} | {victim['settings']['epochs']} | "
            f"{victim['clean']:.3f} | {victim['ratio']:.2f} | {victim['random_flat_ratio']:.2f} "
            f"| {victim['pattern_ratio']:.2f} |"
        )
        assert row in card, (path, row)
