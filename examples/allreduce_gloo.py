"""A gloo all-reduce with torch.distributed under `rdzv run`, exactly as under torchrun.

    npx rdzv run --standalone --nproc-per-node 4 -- python3 examples/allreduce_gloo.py

`init_process_group` reads env:// (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) from the agent: the rank 0
worker hosts the bootstrap TCPStore on the free port the rank 0 agent picked. Sum = 1 + 2 + ... + WORLD_SIZE.
"""

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank}/{world}: sum = {value.item():g}", flush=True)
dist.destroy_process_group()
