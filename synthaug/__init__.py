"""synthaug: does synthetic training data really improve instance segmentation?

This package holds the generated gRPC/protobuf code (`synthaug.v1`) and the code version
that enters every job and step key.
"""

__version__ = "0.1.0"
CODE_VERSION = __version__
