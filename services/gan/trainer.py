"""pix2pix training (the reference's Pix2PixModel.optimize_parameters), resumable and deterministic.

Per iteration: G(A) → D step on (A, G(A)) detached vs (A, B) with loss ½(D_fake + D_real),
then G step with D frozen: GAN(D(A, G(A)), real) + λ·L1(G(A), B). Adam(lr, (β1, β2)); learning
rate constant for n_epochs then linearly to zero over n_epochs_decay ('linear' policy).

Determinism: epoch e reseeds the global torch RNG (dropout) and the shuffling generator from
(seed, e), and flips derive from (seed, e, index), so a run resumed from the checkpoint of
epoch k continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from services.gan import rendering
from services.gan.config import GanConfig
from services.gan.grid import make_grid, to_uint8, visualize_condition
from services.gan.networks import GANLoss, build_discriminator, build_generator
from services.gan.rendering import RenderSpec
from services.gan.seeding import derive_seed

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "synthaug.gan.pix2pix.v1"
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")


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
        if self.flip and np.random.default_rng(derive_seed(self.seed, "flip", self.epoch, i)).random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        cond = rendering.render_condition(masks, p.labels, self.spec, image)
        return torch.from_numpy(cond), to_tensor_image(image)


def lr_lambda(n_epochs: int, n_epochs_decay: int) -> Callable[[int], float]:
    """The reference 'linear' policy, indexed by completed epochs (scheduler stepped per epoch)."""
    def rule(completed: int) -> float:
        return 1.0 - max(0, completed + 1 - n_epochs) / float(n_epochs_decay + 1)
    return rule


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


class Pix2Pix:
    """G, D, their optimisers, schedulers and (CUDA fp16) grad scalers; one training step."""

    def __init__(self, cfg: GanConfig, spec: RenderSpec, device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.spec = spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        nc = spec.num_channels
        self.G = build_generator(nc, 3, cfg.depth, cfg.ngf, cfg.norm, cfg.dropout).to(self.device)
        self.D = build_discriminator(nc + 3, cfg.ndf, cfg.n_layers_d, cfg.norm).to(self.device)
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        if self.cuda:
            self.G.to(memory_format=self.memory_format)
            self.D.to(memory_format=self.memory_format)
        self.criterion_gan = GANLoss().to(self.device)
        self.criterion_l1 = nn.L1Loss()
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        rule = lr_lambda(cfg.n_epochs, cfg.n_epochs_decay)
        self.sched_G = torch.optim.lr_scheduler.LambdaLR(self.opt_G, rule)
        self.sched_D = torch.optim.lr_scheduler.LambdaLR(self.opt_D, rule)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp) if self.cuda else None
        use_scaler = self.cuda and cfg.amp == "fp16"
        self.scaler_G = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_D = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, float]] = []

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        real_a, real_b = self._to(real_a), self._to(real_b)
        with self._autocast():
            fake_b = self.G(real_a)
        # D: real pairs → 1, generated pairs → 0.
        for p in self.D.parameters():
            p.requires_grad_(True)
        self.opt_D.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d_fake = self.criterion_gan(self.D(torch.cat((real_a, fake_b), 1).detach()), False)
            loss_d_real = self.criterion_gan(self.D(torch.cat((real_a, real_b), 1)), True)
            loss_d = (loss_d_fake + loss_d_real) * 0.5
        self.scaler_D.scale(loss_d).backward()
        self.scaler_D.step(self.opt_D)
        self.scaler_D.update()
        # G: fool D and stay close to B in L1; D's weights are frozen for this backward.
        for p in self.D.parameters():
            p.requires_grad_(False)
        self.opt_G.zero_grad(set_to_none=True)
        with self._autocast():
            loss_g_gan = self.criterion_gan(self.D(torch.cat((real_a, fake_b), 1)), True)
            loss_g_l1 = self.criterion_l1(fake_b.float(), real_b) * self.cfg.lambda_l1
            loss_g = loss_g_gan + loss_g_l1
        self.scaler_G.scale(loss_g).backward()
        self.scaler_G.step(self.opt_G)
        self.scaler_G.update()
        return {"G_GAN": loss_g_gan.detach(), "G_L1": loss_g_l1.detach(), "D_real": loss_d_real.detach(), "D_fake": loss_d_fake.detach()}

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self, with_optimizers: bool = True) -> dict[str, Any]:
        """Plain tensors, dicts and scalars only, so torch.load(weights_only=True) reads it."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "render": self.spec.to_dict(),
            "epoch": self.epoch,
            "history": [dict(h) for h in self.history],
            "G": {k: v.detach().cpu() for k, v in self.G.state_dict().items()},
            "D": {k: v.detach().cpu() for k, v in self.D.state_dict().items()},
        }
        if with_optimizers:
            state.update(
                opt_G=self.opt_G.state_dict(), opt_D=self.opt_D.state_dict(),
                sched_G=self.sched_G.state_dict(), sched_D=self.sched_D.state_dict(),
                scaler_G=self.scaler_G.state_dict(), scaler_D=self.scaler_D.state_dict(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if "opt_G" in state:
            self.opt_G.load_state_dict(state["opt_G"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.sched_G.load_state_dict(state["sched_G"])
            self.sched_D.load_state_dict(state["sched_D"])
            if state.get("scaler_G"):
                self.scaler_G.load_state_dict(state["scaler_G"])
                self.scaler_D.load_state_dict(state["scaler_D"])
        self.epoch = int(state["epoch"])
        self.history = [dict(h) for h in state.get("history", [])]


def sample_grid(model: Pix2Pix, pairs: Sequence[TrainPair], seed: int, epoch: int) -> np.ndarray:
    """condition | real | generated for the first pairs, without touching the training state.

    A copy of G runs in the reference's test-time mode (batch statistics, dropout on), on a
    forked RNG, so BN running averages and the dropout stream of training are unaffected.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "grid", epoch))
        g = copy.deepcopy(model.G).train()
        conds = [rendering.render_condition(p.masks, p.labels, model.spec, p.image) for p in pairs]
        with torch.no_grad():
            fake = g(model._to(torch.from_numpy(np.stack(conds)))).float().cpu().numpy()
    rows = [[visualize_condition(c, model.spec), p.image, to_uint8(f)] for c, p, f in zip(conds, pairs, fake)]
    return make_grid(rows)


def train(
    pairs: Sequence[TrainPair],
    cfg: GanConfig,
    spec: RenderSpec,
    seed: int,
    hooks: TrainHooks | None = None,
    resume: dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    stop_after_epoch: int | None = None,
) -> Pix2Pix:
    """Train (or continue training from `resume`) for cfg.total_epochs epochs; returns the model.

    `stop_after_epoch` ends the run early (as if interrupted), for resume tests and benchmarks.
    """
    if not pairs:
        raise ValueError("no training pairs")
    hooks = hooks or TrainHooks()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))  # N(0, 0.02) init is part of the run's identity
        model = Pix2Pix(cfg, spec, device)
    if resume is not None:
        model.load_state_dict(resume)
        log.info("resuming pix2pix training after epoch %d", model.epoch)
    data = PairDataset(pairs, spec, cfg.flip, seed)
    grid_pairs = list(pairs[: cfg.sample_count])
    model.G.train()
    model.D.train()
    last = cfg.total_epochs if stop_after_epoch is None else min(cfg.total_epochs, stop_after_epoch)
    for epoch in range(model.epoch + 1, last + 1):
        data.epoch = epoch
        torch.manual_seed(derive_seed(seed, "torch", epoch))
        shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle", epoch))
        loader = torch.utils.data.DataLoader(
            data, batch_size=cfg.batch_size, shuffle=True, generator=shuffle,
            num_workers=cfg.num_workers, pin_memory=model.cuda, drop_last=False,
        )
        sums = {k: torch.zeros((), device=model.device) for k in LOSS_NAMES}
        n_iter = 0
        lr = model.opt_G.param_groups[0]["lr"]
        t0 = time.perf_counter()
        for real_a, real_b in loader:
            losses = model.train_step(real_a, real_b)
            for k in LOSS_NAMES:
                sums[k] += losses[k]
            n_iter += 1
            if hooks.check_cancelled is not None and n_iter % 10 == 0:
                hooks.check_cancelled()
        if model.cuda:
            torch.cuda.synchronize()
        dt = max(time.perf_counter() - t0, 1e-9)
        model.sched_G.step()
        model.sched_D.step()
        model.epoch = epoch
        means = {k: float(v) / n_iter for k, v in sums.items()}
        model.history.append({"epoch": float(epoch), **means})
        report = EpochReport(epoch, cfg.total_epochs, means, len(data) / dt, n_iter / dt, lr)
        log.info("epoch %d/%d %s %.2f pairs/s", epoch, cfg.total_epochs, means, report.pairs_per_s)
        if hooks.on_epoch is not None:
            report.grid = sample_grid(model, grid_pairs, seed, epoch)
            hooks.on_epoch(report)
        if hooks.checkpoint is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.total_epochs):
            hooks.checkpoint(model.state_dict(), epoch)
    return model
