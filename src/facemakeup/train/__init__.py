"""Training Face-MakeUpV2's ID adapter and ShadingNet with accelerate (``config``, ``losses``, ``loop``).

    facemakeup train --preset tiny --data DATASET_DIR --out RUN_DIR
    accelerate launch -m facemakeup.train --preset sd15 --data DATASET_DIR --out RUN_DIR
"""

from .config import ConfigError, TrainConfig, apply_overrides, load_config, preset, save_config
from .loop import NonFiniteLossError, train

__all__ = ["ConfigError", "NonFiniteLossError", "TrainConfig", "apply_overrides", "load_config", "preset", "save_config", "train"]
