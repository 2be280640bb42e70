"""A plain Python worker: no torch needed, just the environment `rdzv run` (like torchrun) sets.

    npx rdzv run --standalone --nproc-per-node 2 -- python3 examples/env_worker.py
"""

import os

KEYS = [
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
    "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID",
    "RDZV_ROUND", "RDZV_STORE_ADDR", "RDZV_STORE_PORT", "RDZV_STORE_PREFIX",
]

print(" ".join(f"{k}={os.environ.get(k, '')}" for k in KEYS), flush=True)
