"""pix2pix (Isola et al. 2017) as a registered GanModel: the reference's Pix2PixModel.

U-Net generator, 70×70 PatchGAN discriminator (services/gan/networks.py) and the reference's
optimize_parameters: G(A) → D step on (A, G(A)) detached vs (A, B) with loss ½(D_fake + D_real),
then G step with D frozen: GAN(D(A, G(A)), real) + λ·L1(G(A), B). Adam(lr, (β1, β2)); learning
rate constant for n_epochs then linearly to zero over n_epochs_decay ('linear' policy).
On CUDA: channels-last tensors, optional bf16/fp16 autocast (fp16 with grad scalers).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from services.gan.config import GanConfig
from services.gan.networks import GANLoss, build_discriminator, build_generator
from services.gan.rendering import RenderSpec

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")


def lr_lambda(n_epochs: int, n_epochs_decay: int) -> Callable[[int], float]:
    """The reference 'linear' policy, indexed by completed epochs (scheduler stepped per epoch)."""
    def rule(completed: int) -> float:
        return 1.0 - max(0, completed + 1 - n_epochs) / float(n_epochs_decay + 1)
    return rule


class Pix2Pix:
    """G, D, their optimisers, schedulers and (CUDA fp16) grad scalers; one training step."""

    loss_names = LOSS_NAMES

    def __init__(self, cfg: GanConfig, spec: RenderSpec, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.cuda = device.type == "cuda"
        nc = spec.num_channels
        self.G = build_generator(nc, 3, cfg.depth, cfg.ngf, cfg.norm, cfg.dropout).to(device)
        self.D = build_discriminator(nc + 3, cfg.ndf, cfg.n_layers_d, cfg.norm).to(device)
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        if self.cuda:
            self.G.to(memory_format=self.memory_format)
            self.D.to(memory_format=self.memory_format)
        self.criterion_gan = GANLoss().to(device)
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

    @property
    def generator(self) -> nn.Module:
        return self.G

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def train_step(self, condition: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        real_a, real_b = self._to(condition), self._to(real)
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

    def end_epoch(self) -> None:
        self.sched_G.step()
        self.sched_D.step()

    def learning_rate(self) -> float:
        return float(self.opt_G.param_groups[0]["lr"])

    def state_dict(self, with_optimizers: bool = True) -> dict[str, Any]:
        state: dict[str, Any] = {
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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
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
