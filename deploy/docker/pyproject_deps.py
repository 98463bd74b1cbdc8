"""Print the runtime requirements of pyproject.toml, one per line, for `pip install -r`.

The Dockerfiles install dependencies in a layer of their own, before the source is copied,
so that editing code does not reinstall PyTorch. pyproject.toml stays the only list of
dependencies: this reads it rather than keeping a requirements.txt that could drift.

    python pyproject_deps.py pyproject.toml                         # everything
    python pyproject_deps.py pyproject.toml --only torch,torchvision
    python pyproject_deps.py pyproject.toml --exclude torch,torchvision
"""
from __future__ import annotations

import argparse
import re
import sys

import tomllib

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a project name from requirement {requirement!r}")
    return canonical(match.group(1))


def dependencies(pyproject: str, only: set[str] | None = None, exclude: set[str] | None = None) -> list[str]:
    with open(pyproject, "rb") as f:
        reqs: list[str] = tomllib.load(f)["project"]["dependencies"]
    out = []
    for req in reqs:
        name = requirement_name(req)
        if only is not None and name not in only:
            continue
        if exclude is not None and name in exclude:
            continue
        out.append(req)
    return out


def _names(text: str | None) -> set[str] | None:
    return None if text is None else {canonical(n) for n in text.split(",") if n.strip()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject")
    p.add_argument("--only", help="comma-separated project names to keep")
    p.add_argument("--exclude", help="comma-separated project names to drop")
    args = p.parse_args(argv)
    for req in dependencies(args.pyproject, _names(args.only), _names(args.exclude)):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main())
