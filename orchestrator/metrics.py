"""Prometheus metrics of the orchestrator: where every run stands, at low cardinality.

Labels are plan, arm, step kind and, for evaluation scores, the test set ("internal" or an
external test set's label: a handful per plan), for synthetic-data quality the feature space
and the source (a handful per plan) — never step keys or seeds, so a dashboard stays cheap
however many runs there are.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OrchestratorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs = Counter("synthaug_runs", "Runs that ended, by final state", ["plan", "state"], registry=r)
        self.runs_active = Gauge("synthaug_runs_active", "Runs in progress", ["plan"], registry=r)
        self.steps = Gauge("synthaug_run_steps", "Steps of the current run by state", ["plan", "state"], registry=r)
        self.steps_finished = Counter("synthaug_steps_finished", "Steps that ended", ["plan", "kind", "state", "cached"], registry=r)
        self.step_seconds = Histogram(
            "synthaug_step_duration_seconds",
            "Wall time of executed (not cached) steps, from the service starting them (waiting for a slot excluded)",
            ["plan", "kind"],
            registry=r,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
        )
        self.step_queued_seconds = Histogram(
            "synthaug_step_queued_seconds",
            "Time executed steps waited for a free slot (an orchestrator thread, a service job slot)",
            ["plan", "kind"],
            registry=r,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
        )
        self.images = Counter("synthaug_images_produced", "Images produced by synthesis steps", ["plan", "kind"], registry=r)
        self.training_loss = Gauge(
            "synthaug_training_loss", "Latest loss reported by a training step, per component ('total' for the sum)",
            ["plan", "arm", "kind", "loss"], registry=r,
        )
        self.throughput = Gauge(
            "synthaug_training_images_per_second", "Latest throughput reported by a running step (images or pairs per second)",
            ["plan", "arm", "kind"], registry=r,
        )
        self.score = Gauge(
            "synthaug_evaluation_score", "Evaluation score per arm and test set (mean over the seeds finished so far)",
            ["plan", "arm", "test_set", "metric"], registry=r,
        )
        self.quality = Gauge(
            "synthaug_synthetic_quality", "Synthetic-data quality of each source (and the real-vs-real floor) against the real test images, "
            "as the report shows it (fd_test, kid_test, precision_test, recall_test, density_test, coverage_test, near_copy_share, mask_fidelity)",
            ["plan", "feature_space", "source", "metric"], registry=r,
        )
        self.overhead = Gauge(
            "synthaug_run_overhead_fraction",
            "Orchestration overhead (dispatch + result handling) of the last run, as a share of its summed step time", ["plan"], registry=r,
        )
        self.overhead_seconds = Gauge("synthaug_run_overhead_seconds", "Orchestration overhead of the last run, summed over its steps", ["plan"], registry=r)


#: Progress metrics that are losses: the segmenter's "loss" (total) and "loss/<component>",
#: pix2pix's G_GAN, G_L1, D_real, D_fake.
GAN_LOSSES = ("G_GAN", "G_L1", "D_real", "D_fake")
THROUGHPUT_NAMES = ("images_per_s", "pairs_per_s")


def loss_components(metrics: dict[str, float]) -> dict[str, float]:
    """The loss figures in a progress event's metrics, by component name."""
    out = {}
    for name, value in metrics.items():
        if name == "loss":
            out["total"] = value
        elif name.startswith("loss/"):
            out[name[len("loss/"):]] = value
        elif name in GAN_LOSSES:
            out[name] = value
    return out


def quality_figures(metrics: dict[str, float]) -> dict[tuple[str, str], float]:
    """(source, metric) → value of a quality job's metrics ("<label>.<metric>"; the
    evaluator's quality.headline_metrics), its sample size aside."""
    out = {}
    for name, value in metrics.items():
        label, dot, metric = name.rpartition(".")
        if dot and label:
            out[(label, metric)] = value
    return out
