"""`python -m services.compositor` serves CompositorService."""
import sys

from services.compositor.server import main

if __name__ == "__main__":
    sys.exit(main())
