"""Compositor service: foreground cut-outs, background harvesting, copy-paste composition."""
