"""Evaluator service: per-image pixel metrics, COCO AP, statistics, comparisons, synthetic-data
quality (distances to real data in a feature space) and reports.

The capability lives in :mod:`services.evaluator.core` (numpy/scipy/pycocotools/matplotlib,
no gRPC, no store); :mod:`services.evaluator.server` adapts it to EvaluatorService.
"""
