#!/usr/bin/env bash
# Prepare a folder of wheels (default .whl/) that lets an offline GPU machine run the RL code (rl/envs.py):
#     from dm_control import suite; suite.load('cheetah', 'run');  import gymnasium
#
# Target: CPython 3.12, x86-64 Linux (glibc >= 2.28), no network, with numpy, scipy, torch, matplotlib, pytest,
# hypothesis already installed but not dm-control, mujoco or gymnasium.
#
# What it produces (about 32.9 MB / 31.4 MiB in all; the device copy of the tree + this folder must stay < 64 MiB):
#   mujoco 3.17.0 (cp312 manylinux, ~26.7 MB; untouched)      lxml 6.1.3 (cp312 manylinux, ~5.2 MB)
#   dm_control 1.0.50, slimmed to the control suite (~0.19 MB; the PyPI wheel is ~56 MB), named
#       dm_control-1.0.50-1suite-py3-none-any.whl (the "1suite" build tag marks it; the version stays 1.0.50)
#   absl-py, dm-env, gymnasium, cloudpickle, farama-notifications, typing-extensions, tqdm (pure python, < 1 MB)
# Only what `import gymnasium; from dm_control import suite` and stepping every suite task imports is carried, so
# it must be installed with --no-deps. Not carried (not imported on that path with MUJOCO_GL=disable): glfw,
# pyopengl, labmaze, protobuf, requests, setuptools, pyparsing, dm-tree (dm_env only uses it in test_utils),
# etils, websockets (mujoco's viewer/studio/usd extras).
#
# The slim dm_control keeps dm_control/{__init__.py,_render,mujoco,rl,suite,utils} and drops locomotion,
# manipulation, composer, mjcf, entities, viewer, blender, autowrap, third_party, mujoco/testing (test frames), every
# *_test.py, suite/explore.py (needs the viewer), suite/demos and suite/all_domains.png. It also drops
# suite/dog_assets (~10 MB compressed), so the five dog-* tasks do not load (nothing in this repo uses them); set
# KEEP_DOG=1 to keep them (then the folder is ~42.7 MB / 40.8 MiB). All 18 other domains load: their XMLs only include
# ./common/{materials,skybox,visual}.xml, which are kept. (quadruped-escape needs an OpenGL context to upload its
# height field, so it fails under MUJOCO_GL=disable with or without slimming.)
#
# Usage (here, with network; idempotent: the folder's *.whl are replaced by a fresh set each run):
#     scripts/device_wheels.sh [DIR]            # DIR defaults to .whl (relative to the repo root)
#     PYVER=3.11 scripts/device_wheels.sh /tmp/whl311   # other target python (cp tag), e.g. to test locally
# DIR must be git-ignored to travel as `carry`; for a DIR inside the repo this script adds /DIR/ to
# .git/info/exclude (untracked, local) when it is not ignored yet.
#
# On the device, name the folder in `carry` (carry: [".whl"]) and start the command with
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#         .whl/*.whl && export PYTHONPATH=/tmp/site
# (rl/envs.py sets MUJOCO_GL=disable itself; export it too when importing dm_control some other way.)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:-.whl}
PYVER=${PYVER:-3.12}
PY=${PYTHON:-python3}
KEEP_DOG=${KEEP_DOG:-0}

# Runtime wheels besides dm_control, pinned to the versions the development environment runs.
PINS=(
  mujoco==3.17.0
  lxml==6.1.3
  absl-py==2.5.1
  dm-env==1.6
  gymnasium==1.4.0
  cloudpickle==3.1.3
  farama-notifications==0.0.6
  typing-extensions==4.15.0
  tqdm==4.70.1
)
DM_CONTROL=dm-control==1.0.50
BUILD_TAG=1suite

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/dl" "$TMP/out"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
cpver=${PYVER/./}

echo "downloading wheels for cp$cpver x86_64 ..."
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp --abi "cp$cpver" --abi abi3 --abi none "${PLATFORMS[@]}" \
  -d "$TMP/dl" "${PINS[@]}" "$DM_CONTROL"

# Exactly one wheel per pin (pip download may leave nothing else, but check before building the folder).
for pin in "${PINS[@]}" "$DM_CONTROL"; do
  stem=$(echo "${pin%%==*}" | tr 'A-Z-' 'a-z_')
  n=$(find "$TMP/dl" -maxdepth 1 -iname "${stem}-${pin##*==}-*.whl" | wc -l)
  [[ $n -eq 1 ]] || { echo "error: expected one wheel for $pin, found $n" >&2; exit 1; }
done
find "$TMP/dl" -maxdepth 1 -name '*.whl' ! -name 'dm_control-*' -exec mv {} "$TMP/out/" \;

echo "slimming dm_control ..."
"$PY" - "$TMP/dl"/dm_control-*.whl "$TMP/out" "$BUILD_TAG" "$KEEP_DOG" <<'EOF'
"""Copy the dm_control wheel keeping only what the control suite needs; regenerate RECORD (sha256, size)."""
import base64
import hashlib
import os
import re
import sys
import zipfile

src, out_dir, build_tag, keep_dog = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
KEEP_PACKAGES = ("_render", "mujoco", "rl", "suite", "utils")
DROP_PREFIXES = [
    "dm_control/mujoco/testing/",
    "dm_control/suite/demos/",
    "dm_control/suite/all_domains.png",
    "dm_control/suite/explore.py",
]
if not keep_dog:
    DROP_PREFIXES.append("dm_control/suite/dog_assets/")


def keep(name: str) -> bool:
    if name.endswith("/"):
        return False
    if ".dist-info/" in name:
        return not name.endswith(".dist-info/RECORD")
    if name == "dm_control/__init__.py":
        return True
    parts = name.split("/")
    if parts[0] != "dm_control" or len(parts) < 3 or parts[1] not in KEEP_PACKAGES:
        return False
    if parts[-1].endswith("_test.py") or "__pycache__" in parts:
        return False
    return not any(name.startswith(p) for p in DROP_PREFIXES)


base = os.path.basename(src)
m = re.fullmatch(r"(?P<name>[^-]+)-(?P<ver>[^-]+)-(?P<tags>.+)\.whl", base)
if m is None or m["tags"].count("-") != 2:
    sys.exit(f"unexpected wheel name {base}")
dist_info = f"{m['name']}-{m['ver']}.dist-info"
dst = os.path.join(out_dir, f"{m['name']}-{m['ver']}-{build_tag}-{m['tags']}.whl")

record = []
kept = dropped = 0
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        if not keep(info.filename):
            dropped += 1
            continue
        data = zin.read(info)
        if info.filename == f"{dist_info}/WHEEL":  # record the build tag, as the file name does
            text = data.decode()
            text = re.sub(r"(?m)^Build:.*\n", "", text).rstrip("\n") + f"\nBuild: {build_tag}\n"
            data = text.encode()
        new = zipfile.ZipInfo(info.filename, date_time=info.date_time)  # keep timestamps: reproducible output
        new.external_attr = info.external_attr
        new.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(new, data, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{info.filename},sha256={digest},{len(data)}")
        kept += 1
    record.append(f"{dist_info}/RECORD,,")
    rec = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=zin.getinfo(f"{dist_info}/RECORD").date_time)
    rec.external_attr = 0o644 << 16
    rec.compress_type = zipfile.ZIP_DEFLATED
    zout.writestr(rec, "\n".join(record) + "\n", compresslevel=9)
print(f"  kept {kept} files, dropped {dropped}: {os.path.basename(dst)}")
EOF

# Replace the folder's wheels with the new set (other files in DIR are left alone).
mkdir -p "$DIR"
find "$DIR" -mindepth 1 -maxdepth 1 -type f -name '*.whl' -delete
mv "$TMP/out"/*.whl "$DIR/"

# The folder travels as `carry`, which takes ignored paths only: make sure git ignores it.
if git rev-parse --git-dir >/dev/null 2>&1 && [[ $DIR != /* && $DIR != ..* ]]; then
  if ! git check-ignore -q "$DIR/probe.whl"; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    echo "/${DIR%/}/" >>"$exclude"
    echo "added /${DIR%/}/ to $exclude"
  fi
fi

echo
echo "wheels in $DIR:"
total=0
for f in "$DIR"/*.whl; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '%12d  %s\n' "$size" "$(basename "$f")"
done
printf '%12d  total (%s MiB)\n' "$total" "$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')"
