"""pix2pix networks, as in junyanz/pytorch-CycleGAN-and-pix2pix (models/networks.py).

U-Net generator built recursively from UnetSkipConnectionBlock, 70×70 PatchGAN
(NLayerDiscriminator), N(0, 0.02) initialisation and the vanilla GAN loss (BCE with logits).
Kept structurally identical to the reference (same module nesting, in-place activations,
bias only with instance norm) so its behaviour, including the in-place LeakyReLU that makes
the skip connections carry activated features, is the reference's.
"""
from __future__ import annotations

import functools
from typing import Callable, cast

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def get_norm_layer(norm: str) -> NormFactory:
    """'batch': affine BN with running statistics; 'instance': IN without affine or statistics."""
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    raise ValueError(f"unknown norm {norm!r}")


def _uses_bias(norm_layer: NormFactory) -> bool:
    # BatchNorm has its own affine shift, so the reference drops the conv bias before it.
    func = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return func is nn.InstanceNorm2d


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down-sample, the inner submodule, up-sample, concatenated with the input.

    X ─────────────────── identity ─────────────────── X
      |-- downsampling -- |submodule| -- upsampling --|
    """

    def __init__(
        self,
        outer_nc: int,
        inner_nc: int,
        input_nc: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm_layer: NormFactory = nn.BatchNorm2d,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = _uses_bias(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)

        if outermost:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model: list[nn.Module] = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, uprelu, upconv, upnorm]
        else:
            assert submodule is not None
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [downrelu, downconv, downnorm, submodule, uprelu, upconv, upnorm]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` levels: an image of side 2**num_downs becomes 1×1 at the bottleneck."""

    def __init__(
        self,
        input_nc: int,
        output_nc: int,
        num_downs: int,
        ngf: int = 64,
        norm_layer: NormFactory = nn.BatchNorm2d,
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):  # the dropout blocks: 3 for U-Net-256
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer, use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: with n_layers=3 each output logit sees a 70×70 receptive field."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        use_bias = _uses_bias(norm_layer)
        kw, padw = 4, 1
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            seq += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw, bias=use_bias),
                norm_layer(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        seq += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=use_bias),
            norm_layer(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw),
        ]
        self.model = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference 'normal' init: conv/linear N(0, gain), bias 0; BatchNorm weight N(1, gain), bias 0."""
    def init(m: nn.Module) -> None:
        name = m.__class__.__name__
        if hasattr(m, "weight") and ("Conv" in name or "Linear" in name):
            nn.init.normal_(cast(torch.Tensor, m.weight).data, 0.0, gain)
            if getattr(m, "bias", None) is not None:
                nn.init.constant_(cast(torch.Tensor, m.bias).data, 0.0)
        elif "BatchNorm2d" in name:
            nn.init.normal_(cast(torch.Tensor, m.weight).data, 1.0, gain)
            nn.init.constant_(cast(torch.Tensor, m.bias).data, 0.0)

    net.apply(init)
    return net


def build_generator(input_nc: int, output_nc: int, depth: int, ngf: int, norm: str, dropout: bool) -> UnetGenerator:
    return init_weights(UnetGenerator(input_nc, output_nc, depth, ngf, get_norm_layer(norm), dropout))  # type: ignore[return-value]


def build_discriminator(input_nc: int, ndf: int, n_layers: int, norm: str) -> NLayerDiscriminator:
    return init_weights(NLayerDiscriminator(input_nc, ndf, n_layers, get_norm_layer(norm)))  # type: ignore[return-value]


class GANLoss(nn.Module):
    """The reference 'vanilla' GAN loss: BCE with logits against a constant real/fake target map."""

    real_label: torch.Tensor
    fake_label: torch.Tensor

    def __init__(self, target_real_label: float = 1.0, target_fake_label: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        self.loss = nn.BCEWithLogitsLoss()

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = self.real_label if target_is_real else self.fake_label
        prediction = prediction.float()
        return self.loss(prediction, target.expand_as(prediction))

