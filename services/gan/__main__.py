"""`python -m services.gan` serves GanService."""
from services.gan.server import main

raise SystemExit(main())
