"""A small anisotropic residual 3D U-Net for prostate MRI (torch).

Why this shape:
- Prostate T2 slices are thick (~3-3.6 mm) compared with the in-plane pixels (~0.5-1 mm after
  resampling to the working grid), so the first levels pool in-plane only ("(1, 2, 2)") and use
  in-plane kernels where a z-neighbour is ~4x farther away than an in-plane one; z is pooled only
  once voxels are roughly isotropic.
- Instance norm + LeakyReLU (nnU-Net defaults) because batches are tiny (2 patches).
- Residual encoder blocks train faster for the same parameter count; additive skips keep the
  decoder cheap.
- Optional deep supervision: extra 1x1 heads on the two coarser decoder levels speed up
  early training; `forward` returns only the full-resolution logits in eval mode.

Inputs are (N, C, Z, Y, X) float tensors; the spatial size must be divisible by the product
of the strides per axis (`UNet3D.divisor`); `inference.sliding_window` guarantees that.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ProstateAICore.errors import InputError


@dataclass
class NetConfig:
    in_channels: int = 1
    out_channels: int = 2  # background + classes (softmax)
    features: tuple[int, ...] = (16, 32, 64, 96, 128)
    # Stride per level (z, y, x); level 0 is the full-resolution stem. On the 1.5 x 1.5 x 3.6 mm
    # working grid level 1 is ~3 x 3 x 3.6 mm (near isotropic), so z is pooled from level 2 on.
    strides: tuple[tuple[int, int, int], ...] = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    # Kernel per level: in-plane only (1, 3, 3) while z spacing >> in-plane spacing.
    kernels: tuple[tuple[int, int, int], ...] = ((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
    blocks: tuple[int, ...] = (1, 1, 1, 1, 1)  # residual blocks per encoder level
    # "add": decoder convolves up(x) + skip (half the decoder cost of "concat", which is the
    # classic U-Net); chosen because CPU training time is the binding constraint.
    skip: str = "add"
    deep_supervision: bool = True

    def to_dict(self) -> dict:
        return {k: [list(v) if isinstance(v, tuple) else v for v in val] if isinstance(val, tuple) else val
                for k, val in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        for key in ("features", "blocks"):
            if key in d:
                d[key] = tuple(d[key])
        for key in ("strides", "kernels"):
            if key in d:
                d[key] = tuple(tuple(v) for v in d[key])
        return cls(**d)


def _pad(kernel):
    return tuple(k // 2 for k in kernel)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin, cout, kernel=(3, 3, 3), stride=(1, 1, 1), act=True):
        layers = [
            nn.Conv3d(cin, cout, kernel, stride=stride, padding=_pad(kernel), bias=False),
            nn.InstanceNorm3d(cout, affine=True),
        ]
        if act:
            layers.append(nn.LeakyReLU(0.01, inplace=True))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """conv-norm-act-conv-norm + identity (or strided 1x1 projection), then act."""

    def __init__(self, cin, cout, kernel, stride=(1, 1, 1)):
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, kernel, stride)
        self.conv2 = ConvNormAct(cout, cout, kernel, act=False)
        self.skip = None
        if cin != cout or any(s != 1 for s in stride):
            self.skip = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.InstanceNorm3d(cout, affine=True)
            )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x):
        identity = x if self.skip is None else self.skip(x)
        return self.act(self.conv2(self.conv1(x)) + identity)


class UNet3D(nn.Module):
    def __init__(self, config: NetConfig | None = None):
        super().__init__()
        self.config = cfg = config or NetConfig()
        n = len(cfg.features)
        if not (len(cfg.strides) == len(cfg.kernels) == len(cfg.blocks) == n):
            raise InputError(f"The network needs one entry per level in features, strides, kernels and blocks "
                             f"(got {len(cfg.features)} features for {len(cfg.strides)} levels; e.g. --features 16,32,64,96,128).")
        self.stem = ConvNormAct(cfg.in_channels, cfg.features[0], cfg.kernels[0])
        self.encoders = nn.ModuleList()
        cin = cfg.features[0]
        for level in range(n):
            cout = cfg.features[level]
            blocks = [ResBlock(cin, cout, cfg.kernels[level], cfg.strides[level])]
            blocks += [ResBlock(cout, cout, cfg.kernels[level]) for _ in range(cfg.blocks[level] - 1)]
            self.encoders.append(nn.Sequential(*blocks))
            cin = cout
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.heads = nn.ModuleList()
        for level in range(n - 2, -1, -1):
            up_stride = cfg.strides[level + 1]
            self.ups.append(nn.ConvTranspose3d(cfg.features[level + 1], cfg.features[level], up_stride, stride=up_stride, bias=False))
            width = cfg.features[level] * (2 if cfg.skip == "concat" else 1)
            self.decoders.append(ConvNormAct(width, cfg.features[level], cfg.kernels[level]))
            self.heads.append(nn.Conv3d(cfg.features[level], cfg.out_channels, 1))

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Per-axis factor the input size must be a multiple of."""
        d = [1, 1, 1]
        for s in self.config.strides:
            d = [a * b for a, b in zip(d, s)]
        return tuple(d)

    def forward(self, x):
        skips = []
        x = self.stem(x)
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for up, decoder, head in zip(self.ups, self.decoders, self.heads):
            skip = skips.pop()
            x = decoder(torch.cat([up(x), skip], dim=1) if self.config.skip == "concat" else up(x) + skip)
            outputs.append(head(x))
        if self.training and self.config.deep_supervision:
            # Full resolution first, then the two next-coarser levels.
            return outputs[::-1][:3]
        return outputs[-1]


def build_network(config: NetConfig | dict | None = None) -> UNet3D:
    if isinstance(config, dict):
        config = NetConfig.from_dict(config)
    return UNet3D(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def downsample_target(target: torch.Tensor, shape) -> torch.Tensor:
    """Nearest-neighbour label target for a deep-supervision head of spatial `shape`."""
    if tuple(target.shape[-3:]) == tuple(shape):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")[:, 0].long()
