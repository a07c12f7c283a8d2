import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# Tests share 2 cores; one intra-op thread keeps them predictable.
torch.set_num_threads(1)
