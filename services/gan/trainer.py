"""Training of any registered GanModel: epochs, shuffling, flips, reports, checkpoints, resume.

What one optimisation step does belongs to the model (services/gan/pix2pix.py for pix2pix);
this loop owns everything around it, the same for every generator.

Determinism: the model's initial weights derive from the seed; epoch e reseeds the global
torch RNG (dropout) and the shuffling generator from (seed, e), and flips derive from
(seed, e, index), so a run resumed from the checkpoint of epoch k continues exactly as the
uninterrupted run would have.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from services.common.seeding import derive_seed
from services.gan import rendering
from services.gan.checkpoint import checkpoint_state
from services.gan.config import GanConfig
from services.gan.grid import make_grid, to_uint8, visualize_condition
from services.gan.model import GanModel, build_model
from services.gan.rendering import RenderSpec

log = logging.getLogger(__name__)


@dataclass
class TrainPair:
    """One real training pair at the training size: image H×W×3 uint8, masks N×H×W bool, labels N."""

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


def to_tensor_image(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → 3×H×W float32 in [-1, 1] (pix2pix's Normalize((0.5,)*3, (0.5,)*3))."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


class PairDataset(torch.utils.data.Dataset):
    """(condition, real image) tensors; the condition comes from rendering.render_condition."""

    def __init__(self, pairs: Sequence[TrainPair], spec: RenderSpec, flip: bool, seed: int) -> None:
        self.pairs = pairs
        self.spec = spec
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pairs[i]
        image, masks = p.image, p.masks
        if self.flip and np.random.default_rng(derive_seed(self.seed, "gan/flip", self.epoch, i)).random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        cond = rendering.render_condition(masks, p.labels, self.spec, image)
        return torch.from_numpy(cond), to_tensor_image(image)


@dataclass
class EpochReport:
    epoch: int
    total_epochs: int
    losses: dict[str, float]
    pairs_per_s: float
    iterations_per_s: float
    lr: float
    grid: np.ndarray | None = None


@dataclass
class TrainHooks:
    """What the trainer reports to; all optional. `checkpoint` receives a weights_only-safe dict."""

    on_epoch: Callable[[EpochReport], None] | None = None
    checkpoint: Callable[[dict[str, Any], int], None] | None = None
    check_cancelled: Callable[[], None] | None = None


@dataclass
class TrainingRun:
    """A model in training with what its checkpoints record around the weights."""

    model: GanModel
    cfg: GanConfig
    spec: RenderSpec
    epoch: int = 0  # completed epochs
    history: list[dict[str, float]] = field(default_factory=list)

    def checkpoint(self, with_optimizers: bool = True) -> dict[str, Any]:
        """Plain tensors, dicts and scalars only, so torch.load(weights_only=True) reads it."""
        return checkpoint_state(self.cfg, self.spec, self.epoch, self.history, self.model.state_dict(with_optimizers))

    def restore(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["weights"])
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state.get("history", [])]


def sample_grid(run: TrainingRun, pairs: Sequence[TrainPair], seed: int, epoch: int) -> np.ndarray:
    """condition | real | generated for the first pairs, without touching the training state.

    A copy of the generator runs in the reference's test-time mode (batch statistics, dropout
    on), on a forked RNG, so BN running averages and the dropout stream of training are
    unaffected.
    """
    model = run.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "gan/grid", epoch))
        g = copy.deepcopy(model.generator).train()
        conds = [rendering.render_condition(p.masks, p.labels, run.spec, p.image) for p in pairs]
        with torch.no_grad():
            fake = g(torch.from_numpy(np.stack(conds)).to(model.device)).float().cpu().numpy()
    rows = [[visualize_condition(c, run.spec), p.image, to_uint8(f)] for c, p, f in zip(conds, pairs, fake)]
    return make_grid(rows)


def train(
    pairs: Sequence[TrainPair],
    cfg: GanConfig,
    spec: RenderSpec,
    seed: int,
    hooks: TrainHooks | None = None,
    resume: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    stop_after_epoch: int | None = None,
) -> TrainingRun:
    """Train the registered model `cfg.model` (or continue from the checkpoint `resume`) for
    cfg.total_epochs epochs.

    `stop_after_epoch` ends the run early (as if interrupted), for resume tests and benchmarks.
    """
    if not pairs:
        raise ValueError("no training pairs")
    hooks = hooks or TrainHooks()
    model = build_model(cfg, spec, device, seed)
    run = TrainingRun(model, cfg, spec)
    if resume is not None:
        run.restore(resume)
        log.info("resuming %s training after epoch %d", cfg.model, run.epoch)
    cuda = model.device.type == "cuda"
    data = PairDataset(pairs, spec, cfg.flip, seed)
    grid_pairs = list(pairs[: cfg.sample_count])
    last = cfg.total_epochs if stop_after_epoch is None else min(cfg.total_epochs, stop_after_epoch)
    for epoch in range(run.epoch + 1, last + 1):
        data.epoch = epoch
        torch.manual_seed(derive_seed(seed, "gan/torch", epoch))
        shuffle = torch.Generator().manual_seed(derive_seed(seed, "gan/shuffle", epoch))
        loader = torch.utils.data.DataLoader(
            data, batch_size=cfg.batch_size, shuffle=True, generator=shuffle,
            num_workers=cfg.num_workers, pin_memory=cuda, drop_last=False,
        )
        sums = {k: torch.zeros((), device=model.device) for k in model.loss_names}
        n_iter = 0
        lr = model.learning_rate()
        t0 = time.perf_counter()
        for condition, real in loader:
            losses = model.train_step(condition, real)
            for k in sums:
                sums[k] += losses[k]
            n_iter += 1
            if hooks.check_cancelled is not None and n_iter % 10 == 0:
                hooks.check_cancelled()
        if cuda:
            torch.cuda.synchronize()
        dt = max(time.perf_counter() - t0, 1e-9)
        model.end_epoch()
        run.epoch = epoch
        means = {k: float(v) / n_iter for k, v in sums.items()}
        run.history.append({"epoch": float(epoch), **means})
        report = EpochReport(epoch, cfg.total_epochs, means, len(data) / dt, n_iter / dt, lr)
        log.info("epoch %d/%d %s %.2f pairs/s", epoch, cfg.total_epochs, means, report.pairs_per_s)
        if hooks.on_epoch is not None:
            report.grid = sample_grid(run, grid_pairs, seed, epoch)
            hooks.on_epoch(report)
        if hooks.checkpoint is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.total_epochs):
            hooks.checkpoint(run.checkpoint(), epoch)
    return run
