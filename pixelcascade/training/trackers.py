"""Where a run's curves and sample grids go besides its CSV files: TensorBoard (``tb/``, when installed) and,
with train.wandb, Weights & Biases (offline with WANDB_MODE=offline: no network needed; `wandb sync` later).

A W&B run keeps one id per run folder (``wandb_id.txt``), so a resumed run continues the same W&B run."""

from __future__ import annotations

import uuid
from pathlib import Path


class TensorBoard:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(folder))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, name: str, path: Path, step: int) -> None:
        pass  # the grids are PNG files beside the run; TensorBoard's image tab would need them decoded

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, project: str, name: str, config: dict, recipe: str):
        try:
            import wandb
        except ImportError:
            raise RuntimeError("train.wandb=true needs wandb: pip install wandb (WANDB_MODE=offline works without "
                               "a network; `wandb sync` uploads later)") from None
        self.wandb = wandb
        id_file = out / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(out),
                              config={**config, "data_recipe": recipe})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, name: str, path: Path, step: int) -> None:
        self.run.log({name: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(out: Path, cfg, recipe: str) -> list:
    """TensorBoard where installed, and W&B when train.wandb is set (rank 0 only: the caller decides)."""
    from ..config import to_dict
    trackers = []
    try:
        trackers.append(TensorBoard(out / "tb"))
    except ImportError:  # tensorboard not installed: CSV logs only
        pass
    if cfg.train.wandb:
        trackers.append(WandB(out, cfg.train.wandb_project, cfg.name, to_dict(cfg), recipe))
    return trackers
