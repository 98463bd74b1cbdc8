"""`python -m orchestrator`: the OrchestratorService gRPC server."""
from orchestrator.server import main

raise SystemExit(main())
