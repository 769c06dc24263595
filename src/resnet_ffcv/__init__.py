"""ResNet-50 on ImageNet with PyTorch Lightning and FFCV, driven by YAML."""

__version__ = "0.1.0"
