"""The training recipe: the LightningModule (``module``) and its parts, each a module of its own (network,
MixUp/CutMix, EMA, LR schedules, optimizer, evaluation, fine-tuning, the torch.compile plan, the validation
schedule)."""

from resnet_ffcv.recipe.module import ImageClassifier as ImageClassifier
