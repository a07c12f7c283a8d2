"""The configs shipped in configs/ are documentation users copy: they must load as they are."""

from pathlib import Path

from deepfake_moe.augment.prepare import PrepareConfig
from deepfake_moe.augment.registry import get_family
from deepfake_moe.config import load_yaml
from deepfake_moe.evaluate.experiment import GeneralizationConfig
from deepfake_moe.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_training_configs_load():
    for name in ("default.yaml", "tiny.yaml"):
        cfg = load_yaml(TrainConfig, CONFIGS / name)
        assert cfg.experts


def test_the_default_models_generator_expert_trains_on_the_generator_families_the_corpus_makes():
    cfg = load_yaml(TrainConfig, CONFIGS / "default_generators.yaml")
    makefile = (CONFIGS.parent / "Makefile").read_text()
    made = next(line for line in makefile.splitlines() if line.startswith("GENERATORS :=")).split(":=")[1].split()
    assert [sorted(e.fake_sources) for e in cfg.experts] == [sorted(made)]
    assert all(get_family(f).label == 1 for f in made)


def test_prepare_config_names_known_families():
    cfg = load_yaml(PrepareConfig, CONFIGS / "prepare.yaml")
    assert {get_family(f.name).label for f in cfg.families} == {0, 1}


def test_experiment_configs_load():
    from deepfake_moe.evaluate.experiment import load_config, train_config

    assert load_yaml(GeneralizationConfig, CONFIGS / "experiment_generalization.yaml").holdout_source
    cfg = load_config(CONFIGS / "experiment_generalization_default.yaml")  # the default recipe's settings
    recipe = load_yaml(TrainConfig, CONFIGS / "default.yaml")
    experts = train_config(cfg, "m.parquet", [0, 1, 2], "clusters").experts
    assert [(e.backbone, e.pretrained, e.freeze) for e in experts] == [
        (e.backbone, e.pretrained, e.freeze) for e in recipe.experts]
    assert cfg.train["optim"]["max_steps"] == recipe.optim.max_steps


def test_leave_one_out_config_loads_with_an_npr_expert():
    from deepfake_moe.evaluate.leave_one_out import load_config

    cfg = load_config(CONFIGS / "experiment_leave_one_out.yaml")
    assert {e["backbone"] for e in cfg.experts} >= {"npr_resnet50_l2"} and cfg.families


def test_specialists_config_trains_each_expert_on_one_group_without_the_held_out_family():
    from deepfake_moe.evaluate.leave_one_out import fold_train_config, load_config

    cfg = load_config(CONFIGS / "experiment_leave_one_out_specialists.yaml")
    groups = [set(e["fake_sources"]) for e in cfg.experts]
    assert len(groups) == 3 and not set.intersection(*groups)
    for family in cfg.families:
        fold = fold_train_config(cfg, "pool.parquet", "fold", held_out=family)
        assert all(family not in e.fake_sources for e in fold.experts)
