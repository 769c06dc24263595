"""Loading the ``.ffcv`` files for training: the LightningDataModule, FFCV's loaders and what they lack under
Lightning (epoch order, exact mid-epoch resume, no leaked iterators), the resolution schedule, and the image-folder
input of ``predict``."""

from resnet_ffcv.data.datamodule import FFCVDataModule as FFCVDataModule
