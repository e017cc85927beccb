#!/usr/bin/env bash
# Boot-test a guest image (qcow2 overlay + NoCloud seed, QEMU/TCG, SSH as labuser). See smoke.py.
#   bash images/smoke.sh IMAGE [uefi] [--runs N] [--mem MiB] [--timeout S] [--keep]
set -euo pipefail
py=${SIGVIRT_PYTHON:-/opt/sigvirt/venv/bin/python}
exec "$py" "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/smoke.py" "$@"
