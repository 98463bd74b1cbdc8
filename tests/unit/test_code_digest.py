"""Code digests: a step's key and a service's job ids change exactly when the code that
computes them does (services/common/code_digest.py, orchestrator/steps.py code_digests)."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.graph import build_graph
from orchestrator.plan import parse_plan
from orchestrator.steps import code_digests, kind_code_digests
from services.common.code_digest import CodeIndex, default_index, service_digest
from services.common.jobs import job_id_for
from synthaug.v1 import compositor_pb2
from tests.conftest import REPO
from tests.unit.test_plan import BASE


def edited(*suffixes: str) -> CodeIndex:
    """The project's code index, with one comment line appended to each file whose path ends
    with one of `suffixes` (what an edit of those files does to the digests)."""
    def read(path: Path) -> bytes:
        data = path.read_bytes()
        return data + b"\n# edited\n" if path.as_posix().endswith(suffixes) else data

    return CodeIndex(read=read)


def keys(index: CodeIndex, plan: dict = BASE) -> dict[str, tuple[str, str]]:
    graph = build_graph(parse_plan(plan), {k: d.digest for k, d in kind_code_digests(index).items()})
    return {s.label: (s.kind, s.key) for s in graph.steps}


def changed(before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]]) -> set[str]:
    return {label for label in before if before[label][1] != after[label][1]}


def test_the_digests_this_process_uses_are_the_projects() -> None:
    base = kind_code_digests(CodeIndex())
    assert {k: d.digest for k, d in base.items()} == {k: d.digest for k, d in code_digests().items()}
    assert build_graph(parse_plan(BASE)).steps[-1].key == build_graph(parse_plan(BASE), {k: d.digest for k, d in base.items()}).steps[-1].key
    # No change: the same keys (and so a re-run executes nothing).
    assert keys(CodeIndex()) == keys(CodeIndex())


def test_an_evaluator_statistics_change_recomputes_only_evaluations_and_the_report() -> None:
    before, after = keys(CodeIndex()), keys(edited("services/evaluator/core/stats.py"))
    assert {before[label][0] for label in changed(before, after)} == {"evaluate", "report"}
    assert changed(before, after) == {label for label, (kind, _) in before.items() if kind in ("evaluate", "report")}


def test_a_compositor_change_recomputes_composites_and_everything_downstream() -> None:
    before, after = keys(CodeIndex()), keys(edited("services/compositor/core/compose.py"))
    moved = changed(before, after)
    # The compositor's kinds (one digest per service), then what depends on composites.
    assert {"foregrounds", "backgrounds", "compose composites", "compose GAN masks", "generate GAN images", "report"} <= moved
    assert {label for label in moved if label.startswith("train arm=")} == {
        f"train arm={arm} seed={seed}" for arm in ("comp", "gan", "hybrid") for seed in (1, 2)
    }
    # Upstream and independent of the compositor: the data, the prefix, the GAN's training, the real-only arm.
    assert not moved & {"dataset", "split", "real prefix 10 for synthesis", "train GAN", "train arm=real seed=1", "predict arm=real seed=2"}


def test_request_building_counts_per_kind() -> None:
    """An edit of the orchestrator's request building for one kind recomputes that kind only;
    a shared helper, every kind that calls it."""
    steps = str(REPO / "orchestrator" / "steps.py")

    def with_edit(old: str, new: str) -> CodeIndex:
        def read(path: Path) -> bytes:
            data = path.read_bytes()
            if str(path) == steps:
                assert old.encode() in data
                return data.replace(old.encode(), new.encode())
            return data

        return CodeIndex(read=read)

    base = kind_code_digests(CodeIndex())
    evaluate_edit = kind_code_digests(with_edit('"SubmitEvaluate", req)', '"SubmitEvaluate", request=req)'))
    # mask fidelity is an evaluation like any other: the same request building
    assert {k for k in base if base[k].digest != evaluate_edit[k].digest} == {"evaluate", "fidelity_evaluate"}
    helper_edit = kind_code_digests(with_edit("def _output(", "def _output(  # edited\n"))
    assert {k for k in base if base[k].digest != helper_edit[k].digest} == {
        "compose", "gan_generate", "predict", "evaluate", "fidelity_predict", "fidelity_evaluate", "features", "quality", "filter", "report"}


def test_what_feeds_which_kind() -> None:
    digests = code_digests()
    files = {kind: set(d.files) for kind, d in digests.items()}
    # The segmenter validates with the evaluator's metrics (a function-level import too), not its statistics.
    assert "services/evaluator/core/metrics.py" in files["segment_train"]
    assert "services/evaluator/core/stats.py" not in files["segment_train"] and "services/evaluator/core/stats.py" in files["evaluate"]
    # Registries import their builders by name: the whole service package counts.
    assert "services/gan/pix2pix.py" in files["gan_train"] and "services/segmenter/core/maskrcnn.py" in files["segment_train"]
    # Report templates are data the report step reads.
    assert any(f.startswith("services/evaluator/templates/") for f in files["report"])
    # Transport (runtime, jobs, client) and human entry points (cli, __main__) never count.
    everything = set().union(*files.values())
    assert not everything & {"services/common/runtime.py", "services/common/jobs.py", "services/common/client.py", "services/compositor/cli.py", "services/gan/__main__.py"}
    # Local kinds: what their executors import, found in the function bodies.
    assert {"ingest/importers/masks.py", "ingest/demo_data.py"} <= files["dataset"]
    assert "ingest/splits.py" in files["split"] and "services/common/sampling.py" in files["subset"]
    assert not any(f.startswith("services/compositor/") for f in files["dataset"] | files["split"] | files["subset"])
    assert "orchestrator/steps.py:run_report" in files["report"] and "orchestrator/steps.py:provenance" in files["report"]


def test_service_job_ids_follow_the_services_code() -> None:
    request = compositor_pb2.ComposeRequest(count=3, seed=1)
    assert job_id_for("compositor.Compose", request) == job_id_for("compositor.Compose", request, service_digest("compositor"))
    assert service_digest("compositor") == default_index().service_digest("compositor").digest
    edited_compositor = edited("services/compositor/core/compose.py")
    assert edited_compositor.service_digest("compositor").digest != service_digest("compositor")
    assert job_id_for("compositor.Compose", request, edited_compositor.service_digest("compositor").digest) != job_id_for("compositor.Compose", request)
    # Another service's edit leaves the compositor's jobs alone.
    assert edited("services/gan/trainer.py").service_digest("compositor").digest == service_digest("compositor")


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_closure_follows_every_import_form(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "services/__init__.py": "",
            "services/common/__init__.py": "from services.common import shared\n",
            "services/common/shared.py": "import numpy\n",
            "services/common/lazy.py": "X = 1\n",
            "services/common/relative.py": "",
            "services/common/runtime.py": "from services.common import hidden\n",
            "services/common/hidden.py": "",
            "services/common/unused.py": "",
            "services/gan/__init__.py": "",
            "services/gan/server.py": "from services.common import runtime\nfrom .core import work\n",
            "services/gan/core/__init__.py": "",
            "services/gan/core/work.py": "def f():\n    from services.common.lazy import X\n    import services.common.relative\n    return X\n",
            "services/gan/cli.py": "import services.common.unused\n",
            "services/gan/templates/page.html": "<p>",
            "synthaug/__init__.py": "",
        },
    )
    index = CodeIndex({"services": tmp_path / "services", "synthaug": tmp_path / "synthaug"})
    digest = index.service_digest("gan")
    assert set(digest.files) == {
        "services/__init__.py",
        "services/common/__init__.py",
        "services/common/shared.py",  # via the package __init__, which importing services.common runs
        "services/common/lazy.py",  # a function-level import
        "services/common/relative.py",  # `import a.b.c` in a function
        "services/gan/__init__.py",
        "services/gan/server.py",
        "services/gan/core/__init__.py",
        "services/gan/core/work.py",  # a relative import (and a root: every module of the package)
        "services/gan/templates/page.html",  # package data
    }  # not: runtime (transport) and what only it imports, cli (an entry point) and what only it imports
    before = digest.digest
    (tmp_path / "services/common/lazy.py").write_text("X = 2\n")
    assert CodeIndex({"services": tmp_path / "services", "synthaug": tmp_path / "synthaug"}).service_digest("gan").digest != before
    # A name that is no service package: no code.
    assert index.service_digest("probe").files == ()


def test_an_unknown_function_is_an_error() -> None:
    with pytest.raises(KeyError, match="no module-level function 'nope'"):
        CodeIndex().function_parts(REPO / "orchestrator" / "steps.py", "orchestrator.steps", ["nope"])
