"""Generated from protos/synthaug/v1 by scripts/gen_protos.py. Do not edit."""
