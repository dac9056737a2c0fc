"""The noise generator, SAM weight loading and generator checkpoints (CPU, fast)."""

import copy
import dataclasses
import itertools
import json
import pickle
import re
import shutil

import pytest
import segment_anything
import torch
from safetensors.torch import save_file

from fiftyone_unseg import checkpoint
from fiftyone_unseg.checkpoint import load_generator, save_generator
from fiftyone_unseg.modeling import (
    NoiseGenerator,
    SamConfig,
    build_noise_generator,
    load_sam_weights,
    noise_decoder,
)

MICRO = SamConfig(
    name="micro",
    img_size=64,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    encoder_window_size=2,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    decoder_num_heads=4,
    freeze_backbone=False,
)
S = MICRO.img_size


def _prompts(seed: int, batch: int = 2) -> dict:
    """Random boxes, points (with -1 padding) and mask prompts for MICRO."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, 2, 2, generator=gen) * S
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    coords = torch.rand(batch, 4, 2, generator=gen) * S
    labels = torch.tensor([[1, 1, 0, -1], [1, -1, -1, -1]])[:batch]
    masks = (torch.rand(batch, 1, S // 4, S // 4, generator=gen) > 0.5).float()
    return {"boxes": boxes, "points": (coords, labels), "mask_prompts": masks}


@pytest.fixture(scope="module")
def micro() -> NoiseGenerator:
    torch.manual_seed(0)
    return build_noise_generator(MICRO)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def sam_vit_b_checkpoint(tmp_path_factory) -> tuple:
    """An official-format SAM ViT-B checkpoint (random weights) and its state dict."""
    state = segment_anything.build_sam_vit_b().state_dict()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(state, path)
    return path, state


class WritesMarker:
    """Unpickling this creates a marker file: a stand-in for malicious code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_noise_shape_and_range(name, micro):
    model = micro if name == "micro" else build_noise_generator("tiny")
    size = model.img_size
    boxes = torch.tensor([[4.0, 4.0, size / 2, size / 2]])
    with torch.no_grad():
        noise = model(torch.rand(1, 3, size, size), boxes=boxes)
    assert noise.shape == (1, 3, size, size)
    assert noise.abs().max() <= 1
    assert noise.std() > 0


def test_all_three_noise_channels_are_used(micro, images):
    noise = micro(images, boxes=_prompts(0)["boxes"])
    decoder = micro.mask_decoder
    for channel in range(3):
        micro.zero_grad()
        noise[:, channel].sum().backward(retain_graph=True)
        assert decoder.noise_tokens.weight.grad[channel].abs().sum() > 0
        assert all(p.grad.abs().sum() > 0 for p in decoder.noise_mlps[channel].parameters())
        assert noise[:, channel].std() > 0
    micro.zero_grad()


def test_every_prompt_combination_works_and_prompts_matter(micro, images):
    first, second = _prompts(2), _prompts(3)
    with torch.no_grad():
        for count in range(4):
            for kinds in itertools.combinations(first, count):
                noise = micro(images, **{kind: first[kind] for kind in kinds})
                assert noise.shape == images.shape and noise.abs().max() <= 1
        for kind in first:
            a = micro(images, **{kind: first[kind]})
            b = micro(images, **{kind: second[kind]})
            assert not torch.allclose(a, b), f"{kind} prompts do not change the noise"


def test_prompt_batch_must_match_images(micro, images):
    with pytest.raises(ValueError, match="boxes has batch size 1"):
        micro(images, boxes=_prompts(0)["boxes"][:1])
    with pytest.raises(ValueError, match="Bx3x64x64"):
        micro(torch.rand(1, 3, 32, 32))


def test_perturb_respects_eps_inside_and_outside():
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    noise = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    noise[..., :4, :] = torch.sign(noise[..., :4, :])  # exactly +-1 somewhere
    mask = (torch.rand(2, 1, 32, 32, generator=gen) > 0.5).float()
    eps, eps_bg = 8 / 255, 2 / 255
    out = NoiseGenerator.perturb(images, noise, mask, eps, eps_bg)
    eps_map = torch.where(mask.bool(), eps, eps_bg).expand_as(images)
    assert out.min() >= 0 and out.max() <= 1
    assert ((out - images).abs() <= eps_map + 1e-6).all()
    unclamped = images + noise * eps_map
    inside = (unclamped >= 0) & (unclamped <= 1)
    assert torch.allclose(out[inside], unclamped[inside])
    assert torch.equal(out[~inside], unclamped[~inside].clamp(0, 1))
    saturated = NoiseGenerator.perturb(
        torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4), mask[:1, :, :4, :4], eps, eps_bg
    )
    assert torch.equal(saturated, torch.ones(1, 3, 4, 4))


def test_freeze_leaves_only_noise_head_trainable():
    model = build_noise_generator(dataclasses.replace(MICRO, freeze_backbone=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {f"mask_decoder.{name}." for name in model.mask_decoder.NOISE_HEAD}
    assert trainable and all(name.startswith(tuple(head)) for name in trainable)
    assert {id(p) for p in model.noise_head_parameters()} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    assert len(trainable) == sum(1 for _ in model.noise_head_parameters())


def test_config_json_round_trip():
    for config in (MICRO, build_noise_generator("tiny").config):
        assert SamConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown generator config keys"):
        SamConfig.from_dict({**MICRO.to_dict(), "bogus": 1})
    for indexes in ([], [2]):  # none, or past the encoder's two blocks
        with pytest.raises(ValueError, match=r"'micro': encoder_global_attn_indexes .* 0\.\.1"):
            SamConfig.from_dict({**MICRO.to_dict(), "encoder_global_attn_indexes": indexes})


def test_official_sam_checkpoint_loads_unchanged(sam_vit_b_checkpoint):
    path, state = sam_vit_b_checkpoint
    model = build_noise_generator("vit_b", sam_checkpoint=path)
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not any(p.requires_grad for p in model.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.mask_decoder.transformer.parameters())
    assert all(p.requires_grad for p in model.noise_head_parameters())


def test_wrong_size_sam_checkpoint_is_rejected(sam_vit_b_checkpoint):
    path, _ = sam_vit_b_checkpoint
    with pytest.raises(ValueError, match=r"shape mismatch.*seems to be for 'vit_b'"):
        build_noise_generator("vit_l", sam_checkpoint=path)


def test_missing_sam_checkpoint_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_sam_weights(build_noise_generator(MICRO), tmp_path / "sam_vit_b_01ec64.pth")


def test_a_whole_generators_weights_give_its_sam_parts(micro, tmp_path):
    """``model.safetensors`` of a saved generator holds its noise head too: the SAM parts
    load, the head stays as built; a file whose values are not tensors is refused."""
    save_generator(micro, MICRO, tmp_path / "gen", {})
    other = build_noise_generator(MICRO)
    head = tuple(f"mask_decoder.{name}." for name in noise_decoder.NoiseMaskDecoder.NOISE_HEAD)
    head_before = {k: v.clone() for k, v in other.state_dict().items() if k.startswith(head)}
    assert head_before
    pos = "image_encoder.patch_embed.proj.weight"
    assert not torch.equal(other.state_dict()[pos], micro.state_dict()[pos])  # drawn apart
    load_sam_weights(other, tmp_path / "gen" / "model.safetensors")
    for key, value in other.state_dict().items():
        expected = head_before.get(key, micro.state_dict()[key])
        assert torch.equal(value, expected), key
    torch.save({"image_encoder.pos_embed": 3}, tmp_path / "plain.pth")
    with pytest.raises(
        ValueError, match=r"plain.pth: \['image_encoder.pos_embed'\] are not tensors"
    ):
        load_sam_weights(other, tmp_path / "plain.pth")


def test_save_load_round_trip(micro, images, tmp_path):
    prompts = _prompts(5)
    generator_id = save_generator(micro, MICRO, tmp_path / "gen", {"epochs": 3})
    save_generator(micro, MICRO, tmp_path / "gen", {"epochs": 3})  # overwrite in place
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    for path in (tmp_path / "gen", tmp_path / "gen" / "model.safetensors"):
        loaded = load_generator(path)
        assert not loaded.training
        assert loaded.config == MICRO and loaded.generator_id == generator_id
        with torch.no_grad():
            assert torch.equal(loaded(images, **prompts), micro(images, **prompts))
    info = json.loads((tmp_path / "gen" / "config.json").read_text())
    assert info["metadata"] == {"epochs": 3} and info["generator_id"] == generator_id


def test_pickles_are_never_unpickled(micro, tmp_path):
    marker = tmp_path / "marker"
    evil = pickle.dumps(WritesMarker(marker))
    (tmp_path / "evil.pth").write_bytes(evil)
    with pytest.raises(ValueError, match="never loaded"):
        load_generator(tmp_path / "evil.pth")
    save_generator(micro, MICRO, tmp_path / "gen")
    (tmp_path / "gen" / "model.safetensors").write_bytes(evil)
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_generator(tmp_path / "gen")
    torch.save(WritesMarker(marker), tmp_path / "evil_sam.pth")
    with pytest.raises(ValueError, match="not a plain SAM state dict"):
        load_sam_weights(micro, tmp_path / "evil_sam.pth")
    assert not marker.exists()


def test_weights_that_diverged_are_neither_saved_nor_loaded(micro, tmp_path):
    save_generator(micro, MICRO, tmp_path / "gen")
    broken = copy.deepcopy(micro)
    name, parameter = next(broken.named_parameters())
    with torch.no_grad():
        parameter.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=rf"generator to save: {re.escape(name)} hold NaN"):
        save_generator(broken, MICRO, tmp_path / "gen")
    assert load_generator(tmp_path / "gen").generator_id  # the earlier save, whole
    weights = tmp_path / "gen" / "model.safetensors"  # a stranger's file, ids made to match
    save_file({k: v.contiguous() for k, v in broken.state_dict().items()}, weights)
    config_path = tmp_path / "gen" / "config.json"
    info = json.loads(config_path.read_text())
    info["generator_id"] = checkpoint._file_id(weights)
    config_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"model.safetensors: {re.escape(name)} hold NaN"):
        load_generator(tmp_path / "gen")


def test_config_not_matching_tensors_is_rejected(micro, tmp_path):
    save_generator(micro, MICRO, tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    info = json.loads(config_path.read_text())
    info["config"]["encoder_depth"] = 3
    config_path.write_text(json.dumps(info))
    with pytest.raises(
        ValueError, match=r"does not match the tensors.*missing image_encoder\.blocks\.2"
    ):
        load_generator(tmp_path / "gen")


@pytest.mark.parametrize("folder", [None, "shipped"])
def test_an_edited_config_is_refused_not_passed_off_under_the_old_id(micro, tmp_path, folder):
    """Settings that change the noise (here the high-pass) edited into config.json after
    the save: the weights' hash alone would give the same id to another noise."""
    if folder is None:
        save_generator(micro, MICRO, tmp_path / "gen")
    else:  # a shipped generator, copied
        shutil.copytree(checkpoint.DEFAULT_GENERATOR_DIR, tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    info = json.loads(config_path.read_text())
    generator_id = load_generator(tmp_path / "gen").generator_id
    info["config"]["noise_highpass"] = 3
    config_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=rf"config.json: .*edited after the save.*{generator_id}"):
        load_generator(tmp_path / "gen")
    info["config"]["noise_highpass"] = MICRO.noise_highpass if folder is None else 5
    config_path.write_text(json.dumps(info, indent=4))  # the same settings, laid out anew
    assert load_generator(tmp_path / "gen").generator_id == generator_id


def test_missing_files_and_default_generator(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_generator(tmp_path / "nowhere")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_generator(tmp_path)
    monkeypatch.setattr(checkpoint, "DEFAULT_GENERATOR_DIR", tmp_path / "default")
    with pytest.raises(FileNotFoundError, match="unseg train --config tiny"):
        load_generator()


def test_highpass_noise_ignores_flat_offsets_and_survives_saving(images, tmp_path, monkeypatch):
    config = dataclasses.replace(MICRO, noise_highpass=5)
    model, plain = build_noise_generator(config), build_noise_generator(MICRO)
    plain.load_state_dict(model.state_dict())

    def noise(generator):
        with torch.no_grad():
            return generator.decode(*generator.encode(images), **_prompts(1))[0]

    before = {"highpass": noise(model), "plain": noise(plain)}
    real = noise_decoder.hyper_dot  # now shift every noise logit by a constant
    monkeypatch.setattr(
        noise_decoder,
        "hyper_dot",
        lambda mlps, tokens, x: real(mlps, tokens, x) + (2.0 if len(mlps) == 3 else 0.0),
    )
    assert torch.allclose(noise(model), before["highpass"], atol=1e-5)
    assert not torch.allclose(noise(plain), before["plain"], atol=1e-2)
    monkeypatch.undo()
    save_generator(model, config, tmp_path / "gen", {})
    loaded = load_generator(tmp_path / "gen")
    assert loaded.config.noise_highpass == 5
    with torch.no_grad():
        assert torch.equal(loaded(images, **_prompts(1)), model(images, **_prompts(1)))
    with pytest.raises(ValueError, match="odd kernel"):
        build_noise_generator(dataclasses.replace(MICRO, noise_highpass=4))


def test_grey_noise_is_all_luma_and_survives_saving(images, tmp_path):
    """noise_colour=0: the same change on R, G and B, so JPEG's chroma channels see none
    of it; 0.5 halves the colour part; the setting is saved with the generator."""
    from trainer.eot import _RGB_TO_YCBCR

    rgb_to_ycc = torch.tensor(_RGB_TO_YCBCR)
    model = build_noise_generator(MICRO)
    chroma = {}
    for colour in (1.0, 0.5, 0.0):
        config = dataclasses.replace(MICRO, noise_colour=colour)
        grey = build_noise_generator(config)
        grey.load_state_dict(model.state_dict())
        with torch.no_grad():
            noise = grey(images, **_prompts(1))
        ycc = torch.einsum("ij,bjhw->bihw", rgb_to_ycc, noise)
        chroma[colour] = float(ycc[:, 1:].abs().mean())
    assert chroma[1.0] > 0.01 and chroma[0.0] < 1e-6
    assert chroma[0.0] < chroma[0.5] < chroma[1.0]
    save_generator(grey, config, tmp_path / "gen", {})
    assert load_generator(tmp_path / "gen").config.noise_colour == 0.0
    with pytest.raises(ValueError, match="noise_colour"):
        build_noise_generator(dataclasses.replace(MICRO, noise_colour=1.5))


def test_encode_from_two_threads_keeps_each_callers_early_features(micro, images):
    """Concurrent ``encode`` calls on one model (two protect runs in one process) each get
    their own images' early features, though each call's capture hook sees both."""
    import threading

    expected = [micro.encode(images[i : i + 1])[1] for i in range(2)]
    both_registered = threading.Barrier(2)  # both calls' hooks are on before either runs

    def wait_for_the_other(_module, _inputs):  # returns None: the inputs stay as they are
        both_registered.wait(timeout=30)

    gate = micro.image_encoder.blocks[0].register_forward_pre_hook(wait_for_the_other)
    got = [None, None]

    def run(i):
        with torch.no_grad():
            got[i] = micro.encode(images[i : i + 1])[1]

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gate.remove()
    for i in range(2):
        assert torch.allclose(got[i], expected[i], atol=1e-5)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)
