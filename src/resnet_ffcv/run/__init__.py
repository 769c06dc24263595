"""What keeps a paid run safe across crashes and spot stops: which checkpoint to resume from (``resume``), one
writer per checkpoint directory (``checkpoint_lock``), checkpoints in object storage (``storage``), stop signals
from the first moment of the process (``stop_signals``) and W&B without prompts, continuing its run
(``wandb_setup``)."""
