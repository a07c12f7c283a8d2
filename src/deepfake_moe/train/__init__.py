"""Stage II: training the mixture of experts.

Python API (heavy imports happen on use):
    from deepfake_moe.config import load_yaml
    from deepfake_moe.train.config import TrainConfig
    from deepfake_moe.train.loop import train, merge_experts
    cfg = load_yaml(TrainConfig, "configs/tiny.yaml")
    model_dir = train(cfg, "runs/tiny")            # -> runs/tiny/model, loadable by load_checkpoint / predict
"""
