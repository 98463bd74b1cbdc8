"""Store-level training: a job killed mid-run resumes from its last checkpoint and ends identically."""
from __future__ import annotations

import pytest

from services.common.config import replace_config
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument, JobCancelled
from services.common.refs import output
from services.gan.checkpoint import load_checkpoint
from services.gan.config import GanConfig
from services.gan.pipeline import checkpoint_key, latest_checkpoint, run_train
from tests.grpc.test_gan_service import write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Ctx:
    """A JobContext stand-in that can 'kill' the job after a given epoch."""

    def __init__(self, prefix: str, kill_after_epoch: int | None = None) -> None:
        self.work_prefix = prefix
        self.kill_after_epoch = kill_after_epoch
        self.events: list[tuple[float, str, dict]] = []

    def progress(self, fraction: float, message: str = "", metrics: dict | None = None) -> None:
        self.events.append((fraction, message, dict(metrics or {})))
        if self.kill_after_epoch is not None and metrics and metrics.get("epoch") == self.kill_after_epoch + 1:
            raise JobCancelled("killed")

    def check_cancelled(self) -> None:
        pass


CFG = GanConfig(image_size=32, ngf=4, ndf=4, depth=5, n_layers_d=2, n_epochs=2, n_epochs_decay=1,
                batch_size=2, checkpoint_every=1, sample_count=1)


def test_killed_training_resumes_from_store_identically(file_store):
    ds = Dataset.load(file_store, write_dataset(file_store, 4, 32, "r32"))
    straight = run_train(Ctx("jobs/a/work/"), file_store, ds, "train", CFG, seed=2)

    ctx = Ctx("jobs/b/work/", kill_after_epoch=1)
    with pytest.raises(JobCancelled):
        run_train(ctx, file_store, ds, "train", CFG, seed=2)
    # killed while reporting epoch 2, before that epoch's checkpoint: epoch 1 is the latest
    assert latest_checkpoint(file_store, "jobs/b/work/") == (1, checkpoint_key("jobs/b/work/", 1))
    resumed_ctx = Ctx("jobs/b/work/")
    resumed = run_train(resumed_ctx, file_store, ds, "train", CFG, seed=2)
    assert any("resuming after epoch 1" in m for _, m, _ in resumed_ctx.events)
    assert [e[2]["epoch"] for e in resumed_ctx.events if "epoch" in e[2]] == [2.0, 3.0]
    # the final generator is the same object (content-addressed): same weights, same history
    generator = output(straight, "generator")
    assert output(resumed, "generator").key == generator.key and list(straight.outputs) == ["generator"]
    # the sample grids are listed among the objects, without a role
    grids = [o.key.rsplit("/", 1)[1] for o in resumed.objects if o.key != generator.key]
    assert grids == ["epoch-0001.png", "epoch-0002.png", "epoch-0003.png"] and len(resumed.objects) == 4
    # only the newest work checkpoint is kept
    assert [k for k in file_store.list("jobs/b/work/") if k.endswith(".pt")] == [checkpoint_key("jobs/b/work/", 3)]
    final = load_checkpoint(file_store.get_bytes(generator.key))
    assert "opt_G" not in final["weights"] and final["epoch"] == 3 and len(final["history"]) == 3


def test_resume_refuses_a_checkpoint_of_another_configuration(file_store):
    ds = Dataset.load(file_store, write_dataset(file_store, 2, 32, "r32b"))
    with pytest.raises(JobCancelled):
        run_train(Ctx("jobs/c/work/", kill_after_epoch=1), file_store, ds, "train", CFG, seed=0)
    other = replace_config(CFG, lambda_l1=10.0)
    with pytest.raises(InvalidArgument, match="another configuration"):
        run_train(Ctx("jobs/c/work/"), file_store, ds, "train", other, seed=0)
