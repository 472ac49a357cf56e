#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machines lack (Python 3.12, x86-64; torch 2.11.0+cu130,
# numpy, scipy, numba, matplotlib, tensorboard, transformers... are already there) into .whl/,
# which bench/gpu_check.sh installs with --no-deps. Versions match the tested .venv. (docopt, which
# num2words needs only for its own command line, has no wheel and is left out.)
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=$(git rev-parse --git-path info/exclude)  # .git is a file in a git worktree
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
mkdir -p .whl
WHEELS=(
  coqui-tts==0.28.0 coqui-tts-trainer==0.4.0 coqpit-config==0.2.5 torchcodec==0.11.1
  librosa==0.11.0 soundfile==0.14.0 soxr==1.1.0 audioread==3.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8
  cffi==2.1.1 pycparser==3.12 monotonic-alignment-search==0.2.1 num2words==0.5.14
  anyascii==0.3.3 inflect==7.6.0 more-itertools==11.2.1 typeguard==4.6.1 pysbd==0.3.4
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
du -sh .whl && ls .whl
