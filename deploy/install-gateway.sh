#!/usr/bin/env bash
# Install the IQA gateway into a virtual environment, the way the image's builder stage does it:
#   deploy/install-gateway.sh VENV deps      create VENV; install requirements/gateway.lock (pinned, hashed)
#   deploy/install-gateway.sh VENV project   install this project (the current folder) into VENV, no deps
#   deploy/install-gateway.sh VENV           both
# Run it from the project root. The Dockerfile calls it twice (deps before the source is copied, so a
# code change keeps the dependency layer); tests/test_deploy_image.py runs the Dockerfile's RUN lines
# in a fresh venv, so a broken image build fails CI even though no Docker engine runs there.
# PYTHON picks the interpreter (default python3.11). Wheels only: the slim image has no compiler.
set -euo pipefail
venv=${1:?usage: deploy/install-gateway.sh VENV [deps|project|all]}
step=${2:-all}
python=${PYTHON:-python3.11}
case $step in
    deps | project | all) ;;
    *) echo "install-gateway.sh: unknown step '$step' (deps, project or all)" >&2; exit 2 ;;
esac
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input)
if [[ $step == deps || $step == all ]]; then
    "$python" -m venv "$venv"
    "${pip[@]}" install --require-hashes --no-deps --only-binary :all: -r requirements/gateway.lock
fi
if [[ $step == project || $step == all ]]; then
    # the locked setuptools builds the project: nothing unpinned is fetched for the build
    "${pip[@]}" install --no-deps --no-build-isolation .
    "${pip[@]}" check
fi
