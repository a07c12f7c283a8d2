import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")  # before any test imports matplotlib.pyplot

# Tests share 2 cores; one intra-op thread keeps them predictable.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every cache (ONNX exports, fetched model files, unpacked packages) goes to a per-session temporary
    folder, never the user's home. Session scope: module fixtures that fetch files run under it too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPFAKE_MOE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield
