"""Segmenter service: Mask R-CNN training, validation, checkpoints and prediction.

The capability is the plain library in `services.segmenter.core` (tensors, numpy arrays and
sample sources; no gRPC, no store); `server.py` adapts it to gRPC jobs and the object store.
"""
