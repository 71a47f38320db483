#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run runs it on a clean clone).
# The batch tests start a real one-node Slurm cluster and the page's tests drive a real headless
# Chromium, both from Debian's packages: what is missing is installed with apt-get first. Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge \
            chromium:chromium chromedriver:chromium-driver; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "tools/test.sh: installing ${need[*]} (for the Slurm and browser tests)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --locked "$@"
