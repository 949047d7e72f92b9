"""A user model family from a model library: EfficientNet (Tan & Le 2019) from the
``efficientnet-pytorch`` package, built from its name with no pretrained weights (nothing is
downloaded), for an image folder::

    families: [mlp, cnn, efficientnet]
    data: {dataset: images, images: {path: my_photos, image_size: 32}}
    models:
      efficientnet: {target: "examples.efficientnet:efficientnet", variant: efficientnet-b0}

It declares nothing beyond its model: the search tunes ``train.*`` only, and the sweep, pruning,
distillation and static int8 are skipped with the reason, as for any family that does not say how
(examples/fcn.py declares all of them). ``pip install efficientnet-pytorch`` (the project's
``examples`` extra, part of ``dev``) brings the library.
"""
from __future__ import annotations

from torch import nn


def efficientnet(input_shape: tuple[int, ...], num_classes: int, variant: str = "efficientnet-b0",
                 dropout: float = 0.2) -> nn.Module:
    """EfficientNet ``variant`` (efficientnet-b0 ... b7) for images of ``input_shape`` (channels,
    height, width) and ``num_classes`` classes, randomly initialised."""
    from efficientnet_pytorch import EfficientNet

    if len(input_shape) != 3:
        raise ValueError(f"EfficientNet takes images (channels, height, width), got input shape {input_shape}")
    channels, height, width = input_shape
    return EfficientNet.from_name(variant, num_classes=num_classes, in_channels=channels,
                                  image_size=max(height, width), dropout_rate=dropout)
