"""deepfake-moe: the 1st-place multi-ffdi 2024 deepfake image detector, as software."""

__version__ = "0.1.0"
