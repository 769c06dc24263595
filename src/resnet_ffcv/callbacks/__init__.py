"""Lightning callbacks, one concern per module; configs name them as ``resnet_ffcv.callbacks.NAME``."""

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint as SpotCheckpoint
from resnet_ffcv.callbacks.cost import CostMonitor as CostMonitor
from resnet_ffcv.callbacks.resolution import ResolutionMonitor as ResolutionMonitor
from resnet_ffcv.callbacks.spot import SpotInterruption as SpotInterruption
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop as TargetAccuracyStop
