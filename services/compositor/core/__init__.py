"""The compositor's capability as a plain library: numpy arrays in, numpy arrays out.

No gRPC and no store here except in `pipeline` (dataset-level entry points) and `sets`
(foreground/background set manifests), which work through `services.common`.
"""
