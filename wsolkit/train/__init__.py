"""Training loops: fine-tuning a classifier on a dataset's image-level labels."""

from wsolkit.train.finetune import FinetuneSettings, finetune, multilabel_map

__all__ = ["FinetuneSettings", "finetune", "multilabel_map"]
