"""Getting data into the store: importers (mask folders, COCO), the synthetic demo data set,
split assignment and the `synthaug dataset …` commands.

Used by the CLI and the orchestrator's local steps only; the services never import it (they
read datasets from the store), so it lives outside services/common.
"""
