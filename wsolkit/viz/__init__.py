"""Drawing heatmaps and boxes on RGB images, and saving the result."""

from wsolkit.viz.overlay import draw_boxes, overlay_heatmap, save_png

__all__ = ["draw_boxes", "overlay_heatmap", "save_png"]
