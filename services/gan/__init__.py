"""pix2pix (Isola et al. 2017) as a service: train a mask → image generator, generate datasets.

Core modules work on numpy arrays and tensors only (config, networks, rendering, trainer,
generator, diversity, grid); `pipeline` connects them to synthaug datasets and the store;
`server` is the gRPC adapter.
"""
