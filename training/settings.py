"""train.py's settings: one class whose sections are their owners' (model: models.build, loss: models.losses,
data: training.loaders, optim and trainer: training.loop), and TRAIN, its table of rules, checked at the door.

The schema is closed: a key none of the owners declares (a typo, +trainer.max_epoch=3) is refused with the
closest valid one. Open are only the parts whose keys are the user's: data sources, label maps, group lists,
augmentation lists, model.heads / model.decoder, an optimizer's or scheduler's own arguments, and Hydra's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Free, Num, Text, rules_of, section, setting
from models.build import ModelSettings
from models.losses import LossSettings
from training.loaders import DataSettings
from training.loop import OptimSettings, TrainerSettings


@dataclass(kw_only=True)
class PathSettings:
    """``paths.*`` (configs/paths/default.yaml): where the data, the ImageNet weights and generated data are."""

    shared_data: str = setting(Text())
    weights_dirs: list[str] = setting(Free())
    cache_dir: str = setting(Text())


@dataclass(kw_only=True)
class AugmentSettings:
    """``augment.*`` (configs/augment/): albumentations transforms built with _target_, the user's lists."""

    train: list = setting(Free(open_keys=True))
    eval: list = setting(Free(open_keys=True))


@dataclass(kw_only=True)
class TrainSettings:
    """Everything configs/train.yaml composes."""

    seed: int = setting(Num(0, 2**32 - 1, integer=True))
    name: str = setting(Text())
    paths: PathSettings = section(PathSettings)
    model: ModelSettings = section(ModelSettings)
    data: DataSettings = section(DataSettings)
    augment: AugmentSettings = section(AugmentSettings)
    loss: LossSettings = section(LossSettings)
    optim: OptimSettings = section(OptimSettings)
    trainer: TrainerSettings = section(TrainerSettings)


TRAIN = rules_of(TrainSettings)
TRAIN_WHERE = "configs/train.yaml"  # named in the message for an unknown setting
