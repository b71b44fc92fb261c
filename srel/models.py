"""Models: torchvision's ResNet-18 without normalization layers, as in Dan et al. (arXiv 2111.01166).

Without BatchNorm the output at one example depends on that example alone, so a one-example
update and per-example gradients are well defined (He & Su, ICLR 2020, measure S_rel the same way).
"""
import torch
import torchvision
from torch import nn


def make_resnet18(num_classes: int) -> nn.Module:
    """torchvision ResNet-18 (standard ImageNet stem) with every normalization layer an identity.

    On 32x32 inputs the 7x7/2 stem and max-pool leave 8x8 maps for layer1 and 1x1 for layer4,
    which is the architecture the paper trains (its accuracies are those of this small-map net).
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    # NOTE: nn.Identity accepts and ignores the channel count torchvision passes to norm_layer.
    return torchvision.models.resnet18(num_classes=int(num_classes), norm_layer=nn.Identity)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def pick_device(device=None) -> torch.device:
    """`None` or "auto" picks CUDA when available, else CPU; anything else is passed to torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available; use 'cpu'.")
    return device
