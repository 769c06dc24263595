"""ResNet-50 on ImageNet with PyTorch Lightning and FFCV, driven by YAML."""

from resnet_ffcv import ffcv_import

__version__ = "0.1.0"

ffcv_import.install()  # before anything imports ffcv: seconds off every process start (ffcv_import.py)
