"""Lightning callbacks, one concern per module; config files name them as ``resnet_ffcv.callbacks.NAME``."""

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint as SpotCheckpoint
from resnet_ffcv.callbacks.spot import SpotInterruption as SpotInterruption
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop as TargetAccuracyStop
