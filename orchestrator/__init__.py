"""The orchestrator: experiment plans, the step graph, dispatch, metrics and the `synthaug` CLI."""
