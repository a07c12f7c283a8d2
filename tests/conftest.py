import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# Tests share 2 cores; one intra-op thread keeps them predictable.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """ONNX exports and other caches go to a per-session temporary folder, never the user's home."""
    monkeypatch.setenv("DEEPFAKE_MOE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
