"""Evaluator service: per-image pixel metrics, COCO AP, statistics, comparisons and reports.

The capability lives in :mod:`services.evaluator.core` (numpy/scipy/pycocotools/matplotlib,
no gRPC, no store); :mod:`services.evaluator.server` adapts it to EvaluatorService.
"""
