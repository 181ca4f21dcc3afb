"""Jobs over many images: localization, segmentation, evaluation, annotation tools."""

from wsolkit.apps.localize import JobOptions, LocalizeReport, LocalizeSettings, localize_files

__all__ = ["JobOptions", "LocalizeReport", "LocalizeSettings", "localize_files"]
