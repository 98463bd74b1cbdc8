"""`python -m services.segmenter` serves SegmenterService."""
import sys

from services.segmenter.server import main

if __name__ == "__main__":
    sys.exit(main())
