#!/usr/bin/env bash
# Create .venv and install contractive into it (editable).
#   bash scripts/setup.sh          the library and CLI, with the mnist5k extra
#   bash scripts/setup.sh test     also the test tools
# PyTorch: TORCH_SPEC (default "torch==2.13.0", the CPU build that lies on this
# project's machines) is installed first; pip then keeps it, since it satisfies
# the package's own range (torch>=2.2). Elsewhere set TORCH_SPEC to what suits the
# machine, e.g. TORCH_SPEC=torch, or TORCH_SPEC=skip to keep an installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
if [ "$torch_spec" != skip ]; then
  "${pip[@]}" "$torch_spec"
fi
if [ "${1:-}" = test ]; then
  "${pip[@]}" -e ".[mnist,test]"
else
  "${pip[@]}" -e ".[mnist]"
fi
