"""Perceptual metrics: LPIPS (AlexNet and VGG16 variants) as the reference `lpips` package computes it."""
from .lpips import (ALEX_CHANNELS, LPIPS, LPIPS_DOWNLOADS, NETS, VGG16_CHANNELS, VGG16_LAYOUT,  # noqa: F401
                    backbone_net, heads_net)
