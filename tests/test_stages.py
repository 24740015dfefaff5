"""Stages: the cuts of a depth profile. Each model config lists them (written by scripts/model_configs.py from
`stage_layers`); `layer_depth` places a cut between the input (0) and the last stage (1); `python -m tlsweep.layers`
marks them; and the config hash ignores them."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tlsweep import identity, layers
from tlsweep.errors import ConfigError
from tlsweep.stages.backbone import model_stages, models

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {path.stem: OmegaConf.load(path) for path in sorted((ROOT / "conf" / "model").glob("*.yaml"))}
CONFIGS = {name: config for name, config in CONFIGS.items() if not {"preset", "path"} & set(config)}  # applications

# What a researcher would name, per family; the rules in model_stages.STAGE_BLOCKS must find exactly these
EXPECTED = {
    "vgg16": ["block1_pool", "block2_pool", "block3_pool", "block4_pool", "block5_pool"],
    "resnet50": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
    "resnet50_v2": ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "post_relu"],
    "convnext_tiny": ["convnext_tiny_stage_0_block_2_identity", "convnext_tiny_stage_1_block_2_identity",
                      "convnext_tiny_stage_2_block_8_identity", "layer_normalization"],  # the output ends stage 3
    "densenet121": ["conv2_block6_concat", "conv3_block12_concat", "conv4_block24_concat", "relu"],
    "efficientnet_b0": ["block1a_project_bn", "block2b_add", "block3b_add", "block4c_add", "block5c_add",
                        "block6d_add", "block7a_project_bn", "top_activation"],
    "mobilenet_v2": ["expanded_conv_project_BN", "block_2_add", "block_5_add", "block_12_add",
                     "block_16_project_BN", "out_relu"],
}


def test_every_model_config_lists_at_least_three_stages_from_its_familys_block_outputs():
    """Read from the files, no model built: every stage but the output is one of the family's named blocks."""
    assert set(CONFIGS) == set(models.backbones())
    for name, config in CONFIGS.items():
        stages = list(config.stages)
        assert len(stages) >= model_stages.MIN_STAGES and len(set(stages)) == len(stages), name
        blocks = model_stages.STAGE_BLOCKS[models.backbones()[name][0]]
        assert all(re.fullmatch(blocks, layer) for layer in stages[:-1]), (name, stages)
        # the output ends the last stage; NASNetLarge's is unnamed and differs between builds (stage_layers)
        assert stages[-1] == config.default_layer or name == "nasnet_large", (name, stages)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_families_stages_are_the_expected_layers_in_order(name):
    names = models.architecture_layer_names(name)
    assert list(CONFIGS[name].stages) == EXPECTED[name] == list(model_stages.stage_layers(name))
    positions = [names.index(layer) for layer in EXPECTED[name]]
    assert positions == sorted(set(positions)) and EXPECTED[name][-1] == names[-1]
    depths = [model_stages.layer_depth(name, layer) for layer in EXPECTED[name]]
    assert 0 < depths[0] and all(a < b for a, b in zip(depths, depths[1:])) and depths[-1] == 1.0


def test_layer_depth_is_the_position_over_the_last_stages():
    names = models.architecture_layer_names("vgg16")  # 18 layers after the input; block5_pool is the last
    assert model_stages.layer_depth("vgg16", "block1_conv1") == pytest.approx(1 / 18)
    assert model_stages.layer_depth("vgg16", "block1_pool") == pytest.approx(3 / 18)
    assert [model_stages.layer_depth("vgg16", layer) for layer in names] == [i / 18 for i in range(1, 19)]
    assert model_stages.layer_depth("vgg16", "block5_pool", stages=["block1_pool", "block3_pool"]) == pytest.approx(18 / 10)
    with pytest.raises(ConfigError, match="received layer='block9_pool'"):
        model_stages.layer_depth("vgg16", "block9_pool")


def test_the_resolution_rule_skips_padding_squeeze_vectors_and_the_input_resolution():
    shapes = {"rescale": (8, 8, 3), "conv": (4, 4, 8), "pad": (5, 5, 8), "dw": (4, 4, 8), "se_squeeze": (8,),
              "se_reshape": (1, 1, 8), "se_excite": (4, 4, 8), "down": (2, 2, 16), "out": (2, 2, 32)}
    assert model_stages.resolution_ends(list(shapes), shapes, input_size=8) == ["se_excite", "out"]


def test_a_family_whose_names_stop_matching_falls_back_to_the_resolution_rule(monkeypatch, caplog):
    monkeypatch.setitem(model_stages.STAGE_BLOCKS, "vgg16", r"renamed_\d+")
    with caplog.at_level(logging.WARNING, logger="tlsweep.stages.backbone.model_stages"):
        stages = model_stages.stage_layers.__wrapped__("vgg16")  # uncached: the rule as patched
    assert stages == ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3", "block5_pool")
    assert "vgg16: only 1 stage(s) from its block names (renamed_\\d+)" in caplog.text


def test_the_stages_leave_the_config_hash_unchanged(compose):
    """model.stages describes the backbone, not a run: the original study's hash stays what its runs logged."""
    config = compose()
    assert list(config.model.stages) == EXPECTED["vgg16"]
    resolved = OmegaConf.to_container(config, resolve=True)
    assert identity.config_hash(resolved) == "ba0a6b6860eab86e"
    fewer = OmegaConf.to_container(compose(["model.stages=[block2_pool,block5_pool]"]), resolve=True)
    assert identity.config_hash(fewer) == "ba0a6b6860eab86e"
    assert identity.config_hash(OmegaConf.to_container(compose(["layer=block4_pool"]), resolve=True)) != \
        "ba0a6b6860eab86e"


def test_the_layers_command_marks_each_stage_with_its_depth(capsys):
    assert layers.main(["model=vgg16", "data.image_size=64"]) == 0
    lines = capsys.readouterr().out.splitlines()
    marks = {lines[i - 1].split()[1]: line.split() for i, line in enumerate(lines) if line.startswith("    ^ stage")}
    assert list(marks) == EXPECTED["vgg16"]
    assert marks["block1_pool"] == ["^", "stage", "1", "of", "5,", "layer_depth", f"{3 / 18:.2f}"]
    assert marks["block5_pool"][-1] == "1.00"
    assert "^ 5 stages (model.stages)" in "\n".join(lines)
    assert layers.main(["model=vgg16", "data.image_size=64", "model.stages=[block1_pool,block3_pool]"]) == 0
    out = capsys.readouterr().out
    assert "^ stage 2 of 2, layer_depth 1.00" in out and "stage 1 of 2, layer_depth 0.30" in out  # 3/10


@pytest.mark.slow
def test_every_config_is_current_and_its_stages_are_cuts_in_order_in_every_build():
    """scripts/model_configs.py --check, then each model's stages against a build with and without an input
    size (what a config is checked against, and what a run builds). Builds every backbone twice: minutes."""
    spec = importlib.util.spec_from_file_location("model_configs", ROOT / "scripts" / "model_configs.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check"]) == 0
    for name, config in CONFIGS.items():
        for names in (models.architecture_layer_names(name), list(model_stages.architecture_shapes(name))):
            positions = [names.index(layer) for layer in config.stages]
            assert positions == sorted(set(positions)), name
        depths = [model_stages.layer_depth(name, layer) for layer in config.stages]
        assert all(0 < a < b for a, b in zip(depths, depths[1:])) and depths[-1] == 1.0, name
