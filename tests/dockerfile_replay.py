"""Replay the gateway's Dockerfile without a Docker engine (tests/test_deploy_image.py).

``build_context(root)`` is the set of files ``docker build`` would send: ``.dockerignore`` applied with
docker-py's implementation of its rules. ``replay(dockerfile, context, rootfs)`` then executes the
Dockerfile into one folder, ``rootfs``, standing for the image's ``/``: ``ARG``/``ENV`` with variable
expansion, ``WORKDIR``, ``COPY`` from the context (only files in it), ``COPY --from`` another stage
(stages share ``rootfs``, so a copy to the same path is a no-op), and the builder stage's ``RUN`` lines
through ``/bin/sh -c`` (``--mount`` flags dropped). Absolute paths in ``ENV``, ``WORKDIR`` and ``COPY``
are rebased under ``rootfs``. The final stage's ``CMD``, ``HEALTHCHECK``, ``USER`` and environment
are returned so a test can start the server the way the container would. An instruction this replay
does not know fails it, so a new kind of step cannot slip past the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

__all__ = ["Stage", "build_context", "dockerignore_patterns", "replay"]

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_RECORDED = {"LABEL", "EXPOSE", "STOPSIGNAL"}


@dataclass
class Stage:
    """What one ``FROM`` section left behind."""

    name: str
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str | None = None
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[tuple[list[str], str, str | None]] = field(default_factory=list)  # (sources, dest, --from)


def dockerignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def build_context(root: Path, dockerfile: str = "Dockerfile") -> set[str]:
    """Relative paths of the files ``docker build root`` sends (folders left out)."""
    included = exclude_paths(str(root), dockerignore_patterns(root), dockerfile=dockerfile)
    return {p for p in included if (root / p).is_file()}


def _expand(text: str, variables: dict[str, str]) -> str:
    return _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), text)


def _rebase(path: str, rootfs: Path) -> str:
    return str(rootfs / path.lstrip("/")) if path.startswith("/") else path


def _rebase_env(key: str, value: str, rootfs: Path) -> str:
    if key == "PATH":
        return os.pathsep.join(_rebase(part, rootfs) for part in value.split(":"))
    return _rebase(value, rootfs)


def _flags(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    while tokens and tokens[0].startswith("--"):
        key, _, value = tokens.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, tokens


def _copy(sources: list[Path], dest: Path, context_files: set[str], context: Path) -> None:
    """Docker's COPY: a folder's contents go into dest; several sources need dest to be a folder."""
    if len(sources) > 1 or str(dest).endswith("/"):
        dest.mkdir(parents=True, exist_ok=True)
    for src in sources:
        rel = src.relative_to(context).as_posix()
        if src.is_dir():
            inside = sorted(f for f in context_files if f.startswith(rel + "/"))
            if not inside:
                raise FileNotFoundError(f"COPY {rel}: nothing of it is in the build context")
            for f in inside:
                target = dest / f[len(rel) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context / f, target)
        else:
            if rel not in context_files:
                raise FileNotFoundError(f"COPY {rel}: not in the build context (.dockerignore?)")
            target = dest / src.name if dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def replay(
    dockerfile: Path,
    context: Path,
    rootfs: Path,
    *,
    run_stages: tuple[str, ...] = ("builder",),
    base_env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Stage]:
    """Execute ``dockerfile`` into ``rootfs``; RUN lines only in ``run_stages``. Returns stages by name."""
    context_files = build_context(context, dockerfile.name)
    inherited = {"PATH": (base_env or os.environ).get("PATH", "")}  # the base image's PATH
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for item in DockerfileParser(str(dockerfile)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "ARG":
            name, _, default = value.partition("=")
            target = global_args if stage is None else stage.args
            target[name.strip()] = default.strip()
            continue
        if instruction == "FROM":
            tokens = value.split()
            name = tokens[2] if len(tokens) == 3 and tokens[1].upper() == "AS" else str(len(stages))
            stage = stages[name] = Stage(name=name, args=dict(global_args))
            continue
        if instruction == "COMMENT":
            continue
        if stage is None:
            raise ValueError(f"{instruction} before FROM")
        variables = {**stage.args, **stage.env}
        if instruction == "ENV":
            for pair in shlex.split(value):
                key, _, raw = pair.partition("=")  # rebase first: an expanded $PATH is the host's
                known = {**inherited, **variables, **stage.env}
                stage.env[key] = _expand(_rebase_env(key, raw, rootfs), known)
        elif instruction == "WORKDIR":
            stage.workdir = _rebase(_expand(value, variables), rootfs)
            Path(stage.workdir).mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            flags, tokens = _flags(shlex.split(value))
            *sources, dest = (_expand(t, variables) for t in tokens)
            stage.copies.append((sources, dest, flags.get("from")))
            dest_path = Path(_rebase(dest, rootfs) if dest.startswith("/") else Path(stage.workdir, dest))
            if dest.endswith("/"):
                dest_path.mkdir(parents=True, exist_ok=True)
            if "from" in flags:
                for src in sources:  # stages share rootfs: the same path is already there
                    if Path(_rebase(src, rootfs)) != dest_path:
                        shutil.copytree(_rebase(src, rootfs), dest_path, dirs_exist_ok=True, symlinks=True)
            else:
                _copy([context / s for s in sources], dest_path, context_files, context)
        elif instruction == "RUN":
            _, tokens = _flags(value.split(" "))
            command = " ".join(tokens).strip()
            stage.runs.append(command)
            if stage.name in run_stages:
                env = {**(base_env or os.environ), **stage.env}
                subprocess.run(
                    ["/bin/sh", "-c", command], cwd=stage.workdir, env=env, check=True, timeout=timeout_s
                )
        elif instruction == "USER":
            stage.user = value.strip()
        elif instruction == "CMD":
            stage.cmd = json.loads(value)
        elif instruction == "HEALTHCHECK":
            _, _, exec_form = value.partition("CMD")
            stage.healthcheck = json.loads(exec_form)
        elif instruction not in _RECORDED:
            raise ValueError(f"replay does not know {instruction}: extend tests/dockerfile_replay.py")
    return stages
