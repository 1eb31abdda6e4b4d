#!/usr/bin/env bash
# Regenerate requirements/gateway.lock: the gateway image's dependencies (the serve and triton extras
# of pyproject.toml, plus the build backend that installs this project), every one pinned and hashed.
# Versions follow the project's tested .venv (its `pip freeze` is the constraint), so the image runs
# what CI ran. Run it after changing those extras; tests/test_deploy_image.py fails until you do.
#   usage: deploy/lock-gateway.sh          (needs pip-tools: the dev extra, make install-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$venv/bin/pip" freeze --exclude-editable >"$constraints"
CUSTOM_COMPILE_COMMAND="deploy/lock-gateway.sh" "$venv/bin/pip-compile" --quiet \
    --extra serve --extra triton --all-build-deps --generate-hashes --allow-unsafe \
    --strip-extras --no-emit-index-url --no-emit-find-links --no-annotate \
    --constraint "$constraints" --output-file requirements/gateway.lock pyproject.toml
