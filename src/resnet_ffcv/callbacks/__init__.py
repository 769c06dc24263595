"""Lightning callbacks, one concern per module; configs name them as ``resnet_ffcv.callbacks.NAME``."""

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint as SpotCheckpoint
from resnet_ffcv.callbacks.cost import CostMonitor as CostMonitor
from resnet_ffcv.callbacks.data_wait import DataWaitMonitor as DataWaitMonitor
from resnet_ffcv.callbacks.finite_loss import FiniteLossGuard as FiniteLossGuard
from resnet_ffcv.callbacks.metrics_csv import MetricsCSV as MetricsCSV
from resnet_ffcv.callbacks.prediction_writer import PredictionWriter as PredictionWriter
from resnet_ffcv.callbacks.progress import ProgressPrinter as ProgressPrinter
from resnet_ffcv.callbacks.resolution import ResolutionMonitor as ResolutionMonitor
from resnet_ffcv.callbacks.run_summary import RunSummary as RunSummary
from resnet_ffcv.callbacks.spot import SpotInterruption as SpotInterruption
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop as TargetAccuracyStop
from resnet_ffcv.callbacks.watchdog import Watchdog as Watchdog
