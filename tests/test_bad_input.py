"""Bad input: each is an error naming the field, the value and what is allowed, raised before model work."""

from __future__ import annotations

import pytest

from videosys import (
    ConfigError,
    ModelRegistry,
    ModelSpec,
    RequestError,
    UnknownModelError,
    VideoSysEngine,
    WeightsNotFoundError,
)


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(UnknownModelError, match=r"model: 'sora' is not registered \(allowed: latte"):
        VideoSysEngine("sora")


def test_unknown_pab_preset(tiny_latte_dir):
    with pytest.raises(RequestError, match=r"pab.*'pab999'.*allowed: none, pab236, pab347, pab469"):
        VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu", pab="pab999")
    engine = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu")
    with pytest.raises(RequestError, match="pab999"):
        engine.generate("a cat", pab="pab999")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"frames": 17}, r"frames: 17 not allowed \(allowed: 1, 4 for latte\)"),
        ({"height": 64, "width": 64}, r"height x width: '64x64' not allowed \(allowed: 32x32, 32x48 for latte\)"),
        ({"steps": 0}, r"steps: 0 not allowed \(allowed: an integer from 1 to 1000 for latte\)"),
        ({"steps": -3}, r"steps: -3 not allowed"),
        ({"steps": 2.5}, r"steps: 2.5 not allowed"),
        ({"guidance": -1.0}, r"guidance: -1.0 not allowed \(allowed: a finite number >= 0"),
        ({"guidance": float("nan")}, r"guidance: nan not allowed"),
        ({"seed": -1}, r"seed: -1 not allowed"),
        ({"fps": 0}, r"fps: 0 not allowed"),
        ({"resolution": "480p"}, r"resolution: '480p' not allowed \(allowed: height and width for latte"),
        ({"quality": "high"}, r"quality: 'high' not allowed \(allowed: overrides negative_prompt"),
        ({"frames": "2s"}, r"frames: '2s' not allowed \(allowed: 1, 4 for latte\)"),
    ],
)
def test_bad_request_fields(tiny_engine, overrides, pattern):
    with pytest.raises(RequestError, match=pattern):
        tiny_engine.generate("a cat", **overrides)


@pytest.mark.parametrize("prompt", ["", "   ", None, 3])
def test_empty_or_non_string_prompt(tiny_engine, prompt):
    with pytest.raises(RequestError, match=r"prompt: .* not allowed \(allowed: a non-empty string"):
        tiny_engine.generate(prompt)


def test_bad_prompt_in_a_list_names_its_index_and_nothing_runs(tiny_latte_dir):
    engine = VideoSysEngine("latte", weights=tiny_latte_dir, device="cpu")
    with pytest.raises(RequestError, match=r"prompt\[1\].prompt: ''"):
        engine.generate(["a cat", ""])
    assert engine._executor._pipeline is None  # validation happened before any model was loaded
    with pytest.raises(RequestError, match="non-empty list"):
        engine.generate([])


def test_missing_weights_folder_says_how_to_provide_it(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"folder '.*nowhere' does not exist; download it .*maxin-cn/Latte-1"):
        VideoSysEngine("latte", weights=str(tmp_path / "nowhere"))


def test_incomplete_checkpoint_lists_missing_folders(tiny_latte_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_latte_dir, broken)
    shutil.rmtree(broken / "vae")
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(WeightsNotFoundError, match=r"missing folder\(s\) vae/, tokenizer/"):
        VideoSysEngine("latte", weights=broken)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WeightsNotFoundError, match=r"'maxin-cn/Latte-1' is not a local folder and offline"):
        VideoSysEngine("latte", weights="maxin-cn/Latte-1")


def _registry_with(config_path):
    registry = ModelRegistry()
    registry.register(ModelSpec("mymodel", "videosys.pipelines.latte:LattePipeline", config_path))
    return registry


def test_malformed_model_yaml(tmp_path, tiny_latte_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: mymodel\nsampling: {steps: 50\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML"):
        VideoSysEngine("mymodel", weights=tiny_latte_dir, registry=_registry_with(bad))


def test_model_yaml_with_unknown_key_and_wrong_type(tmp_path, tiny_latte_dir):
    from videosys.config import project_root

    text = (project_root() / "configs" / "latte.yaml").read_text()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(text + "sampler: ddim\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sampler'\]"):
        VideoSysEngine("mymodel", weights=tiny_latte_dir, registry=_registry_with(unknown))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(text.replace("steps: 50", "steps: fifty"))
    with pytest.raises(ConfigError, match=r"sampling.steps: 'fifty' has the wrong type"):
        VideoSysEngine("mymodel", weights=tiny_latte_dir, registry=_registry_with(wrong))


def test_malformed_checkpoint_overlay(tiny_latte_dir, tmp_path):
    import shutil

    ckpt = tmp_path / "overlay"
    shutil.copytree(tiny_latte_dir, ckpt)
    (ckpt / "videosys.yaml").write_text("allowed: [oops\n")
    with pytest.raises(ConfigError, match=r"videosys.yaml: malformed YAML"):
        VideoSysEngine("latte", weights=ckpt)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [({"device": "tpu"}, r"device: 'tpu' not allowed"), ({"dtype": "int8"}, r"dtype: 'int8' not allowed")],
)
def test_bad_device_or_dtype(tiny_latte_dir, kwargs, pattern):
    with pytest.raises(RequestError, match=pattern):
        VideoSysEngine("latte", weights=tiny_latte_dir, **kwargs)


def test_registering_a_name_twice_is_refused(tmp_path):
    registry = _registry_with(tmp_path / "x.yaml")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(ModelSpec("mymodel", "x:Y", tmp_path / "x.yaml"))
