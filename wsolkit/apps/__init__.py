"""Jobs over many images: localization, segmentation, evaluation, annotation tools."""

from wsolkit.apps.engine import JobOptions, JobReport
from wsolkit.apps.localize import LocalizeSettings, localize_files

__all__ = ["JobOptions", "JobReport", "LocalizeSettings", "localize_files"]
