"""A process of a data-parallel test run (imported by spawned children: keep it importable and light)."""

import os


def run(rank: int, world: int, port: int, out: str, steps: int) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PIXELCASCADE_BACKEND="gloo")
    import torch

    torch.set_num_threads(1)
    from test_training import _cfg, _data

    from pixelcascade.training.loop import Trainer
    t = Trainer(_cfg(bf16=False), _data(), out, val_data=_data(), progress=False)
    rows = []
    batch = t.data.batch
    t.data.batch = lambda idx, drop: (rows.append(len(idx)), batch(idx, drop))[1]
    t.fit(max_steps=steps)
    import json
    with open(f"{out}/rows{rank}.json", "w") as f:
        json.dump(rows, f)
    import torch.distributed as dist
    dist.destroy_process_group()
