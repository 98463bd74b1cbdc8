"""Core library of the evaluator: plain functions on numpy arrays and COCO structures."""
from services.evaluator.core.metrics import PixelScores, pixel_scores, union_of_instances

__all__ = ["PixelScores", "pixel_scores", "union_of_instances"]
