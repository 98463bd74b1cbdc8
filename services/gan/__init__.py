"""Conditional GANs as a service: train a mask → image generator, generate datasets.

Core modules work on numpy arrays and tensors only: config (settings, torch-free), registry
(generators by name, torch-free), model (the Protocol every generator satisfies), pix2pix and
networks (the reference generator), rendering, trainer, checkpoint, generator, diversity, grid.
`pipeline` connects them to synthaug datasets and the store; `server` is the gRPC adapter.
"""
