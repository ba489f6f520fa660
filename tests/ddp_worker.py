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
    dist.barrier()  # both processes done with gloo before either tears it down
    dist.destroy_process_group()


def run_stream(rank: int, world: int, port: int, out: str, shards: str, steps: int) -> None:
    """A process of a 2-process streamed run: records the keys of every record it trained on."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PIXELCASCADE_BACKEND="gloo")
    import torch

    torch.set_num_threads(1)
    from test_stream import _stream_cfg, _stream_data
    from test_training import _data

    from pixelcascade.training.loop import Trainer
    cadence = 3 if steps <= 6 else steps  # a long run checkpoints and validates once, at its end
    t = Trainer(_stream_cfg(ckpt_every=cadence, val_every=cadence), _stream_data(shards, workers=0), out,
                val_data=_data(), progress=False)
    keys = []
    text = t.data.text
    t.data.text = lambda batch, drop: (keys.extend(batch["keys"]), text(batch, drop))[1]
    t.fit(max_steps=steps)
    import json
    with open(f"{out}/keys{rank}.json", "w") as f:
        json.dump(keys, f)
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()


def run_generate(rank: int, world: int, port: int, model: str, out: str) -> None:
    """A process of a 2-process evaluation: its share of the jobs into the shared folder."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PIXELCASCADE_BACKEND="gloo")
    import torch

    torch.set_num_threads(1)
    from test_eval_protocols import _jobs

    import pixelcascade
    from pixelcascade.eval.batch import generate_jobs
    counts = generate_jobs(pixelcascade.load(model), _jobs(), out, batch_size=3, progress=False)
    import json
    with open(f"{out}/../counts{rank}.json", "w") as f:
        json.dump(counts, f)
    import torch.distributed as dist
    dist.destroy_process_group()


def run_sharded(rank: int, world: int, port: int, out: str, steps: int) -> None:
    """A process of a 2-process sharded (FSDP2) run: the same run as ``run`` with train.sharding=fsdp."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PIXELCASCADE_BACKEND="gloo")
    import torch

    torch.set_num_threads(1)
    from test_training import _cfg, _data

    from pixelcascade.training.loop import Trainer
    t = Trainer(_cfg(bf16=False, sharding="fsdp", ckpt_every=2, val_every=2), _data(), out, val_data=_data(),
                progress=False)
    assert t.sharded and type(t.model.input_blocks[1][0].in_layers[2].weight).__name__ == "DTensor"
    t.fit(max_steps=steps)
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()
