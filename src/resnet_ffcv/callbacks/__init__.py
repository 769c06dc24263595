"""Lightning callbacks, one concern per module."""

from resnet_ffcv.callbacks.resolution import ProgressiveResolution, Stage

__all__ = ["ProgressiveResolution", "Stage"]
