"""Training loops: fine-tuning a classifier, training WILDCAT/ex-CAM heads on image-level labels."""

from wsolkit.train.finetune import FinetuneSettings, finetune, multilabel_map
from wsolkit.train.heads import HeadSettings, train_head

__all__ = ["FinetuneSettings", "HeadSettings", "finetune", "multilabel_map", "train_head"]
