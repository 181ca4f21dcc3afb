"""Jobs over many images: localization (and, later, segmentation and annotation tools)."""

from wsolkit.apps.localize import LocalizeReport, LocalizeSettings, localize_files

__all__ = ["LocalizeReport", "LocalizeSettings", "localize_files"]
