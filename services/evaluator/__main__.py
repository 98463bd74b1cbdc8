"""`python -m services.evaluator` serves EvaluatorService."""
from services.evaluator.server import main

if __name__ == "__main__":
    raise SystemExit(main())
