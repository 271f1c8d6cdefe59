#!/usr/bin/env bash
# Image build steps shared by docker/Dockerfile.x86 and docker/Dockerfile.jetson: nothing here depends on L4T,
# CUDA or TensorRT (those steps are docker/jetson-setup.sh's), so CI's real build of the x86 image
# (.ci/docker-x86) runs every line of this script that the Jetson image runs. Runs as root inside the build.
#
#   image-setup.sh venv DIR [PYTHON]       a venv at DIR from PYTHON (default python3, must be >= 3.10)
#   image-setup.sh deps VENV               air-gapped (x86): `pip install --no-index --find-links WHEELHOUSE
#                                          --no-deps --require-hashes -r LOCK` -- the lock's wheels, nothing else
#   image-setup.sh install VENV SRC [EXTRAS]
#                                          vqz-edge from the source tree SRC into VENV, then check that it runs.
#                                          With LOCK set (after deps): SRC only, --no-index --no-deps, then every
#                                          requirement of vqz-edge[the lock's extras] checked as installed.
#                                          Otherwise from the index (Jetson): pip install -c CONSTRAINTS "SRC[EXTRAS]"
#   image-setup.sh user [GROUP...]         user and group vqz, uid/gid 1000 (the images' USER), in GROUPs
#   image-setup.sh layout                  /var/lib/vqz-edge (install root, the Jetson image's VOLUME), /bundle,
#                                          /keys (read-only mounts), /work (the x86 image's WORKDIR)
#   image-setup.sh entrypoint FILE         FILE (docker/entrypoint.sh) -> /usr/local/bin/vqz-entrypoint, mode 0755
#
# The Dockerfile instructions around these (USER 1000:1000, VOLUME, HEALTHCHECK, ENTRYPOINT) are checked to be
# the same in both Dockerfiles by tests/test_docker.py.
set -euo pipefail

VQZ_UID=1000
VQZ_USER=vqz

log() { echo "image-setup: $*" >&2; }
die() { echo "image-setup: ERROR: $*" >&2; exit 1; }

cmd_venv() {
  local dir=${1:?usage: venv DIR [PYTHON]} py=${2:-python3}
  command -v "$py" >/dev/null 2>&1 || die "no $py in the base image: vqz-edge needs Python >= 3.10 with venv"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "$("$py" --version 2>&1) is older than 3.10, which vqz-edge needs"
  "$py" -m venv "$dir" || die "$py -m venv failed: the base image needs the venv module (Debian: python3-venv)"
  log "venv $dir ($("$dir/bin/python" --version 2>&1), pip $("$dir/bin/python" -m pip --version | cut -d' ' -f2))"
}

read_lock() {  # LOCK's "# python: X.Y" and "# extras: A,B" lines (tools/wheelhouse.py writes them)
  [[ -n ${LOCK:-} && -f $LOCK ]] || die "no lock file LOCK=${LOCK:-} (make it with: python3 tools/wheelhouse.py lock VARIANT)"
  LOCK_PYTHON=$(sed -n 's/^# python: \([0-9][0-9.]*\)$/\1/p' "$LOCK" | head -n 1)
  LOCK_EXTRAS=$(sed -n 's/^# extras: \([a-z0-9,_-]*\)$/\1/p' "$LOCK" | head -n 1)
  [[ -n $LOCK_PYTHON && -n $LOCK_EXTRAS ]] || die "$LOCK has no '# python:' / '# extras:' lines: not written by tools/wheelhouse.py"
}

cmd_deps() {
  # Air-gapped: exactly the lock's wheels, from WHEELHOUSE only, each checked against its sha256.
  local venv=${1:?usage: deps VENV} have
  read_lock
  [[ -n ${WHEELHOUSE:-} ]] || die "deps needs WHEELHOUSE (the folder tools/wheelhouse.py download filled)"
  have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [[ $LOCK_PYTHON == "$have" ]] || die "$LOCK holds wheels for Python $LOCK_PYTHON but the base image has Python" \
    "$have: use a base image with Python $LOCK_PYTHON, or regenerate the lock for $have"
  compgen -G "$WHEELHOUSE/*.whl" >/dev/null || die "the wheelhouse $WHEELHOUSE has no wheels: run" \
    "python3 tools/wheelhouse.py download VARIANT on a host with an index, before the build"
  log "air-gapped: $(grep -c -- '--hash=' "$LOCK") locked wheels from $WHEELHOUSE, no index"
  "$venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir install --no-index --find-links "$WHEELHOUSE" \
    --no-deps --require-hashes -r "$LOCK"
}

cmd_install() {
  local venv=${1:?usage: install VENV SRC [EXTRAS]} src=${2:?usage: install VENV SRC [EXTRAS]} extras=${3:-}
  local pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir)
  [[ -f $src/pyproject.toml ]] || die "no vqz-edge source tree at $src (pyproject.toml missing)"
  if [[ -n ${LOCK:-} ]]; then
    # after `deps`: vqz-edge itself, built from SRC with the locked setuptools (no build isolation, no index)
    read_lock
    [[ -z $extras || $extras == "$LOCK_EXTRAS" ]] || die "$LOCK was resolved for vqz-edge[$LOCK_EXTRAS], not" \
      "[$extras]: use the lock of that variant"
    "${pip[@]}" install --no-index --no-deps --no-build-isolation "$src"
    check_requirements "$venv" "$LOCK_EXTRAS"
  else
    local constraints=()
    [[ -n ${CONSTRAINTS:-} ]] && constraints=(-c "$CONSTRAINTS")
    "${pip[@]}" install "${constraints[@]}" "$src${extras:+[$extras]}"
  fi
  "$venv/bin/vqz-edge" --version
  "$venv/bin/python" -c "import cryptography, vqz_edge.bundle, vqz_edge.runtime"
}

check_requirements() {
  # Every requirement of vqz-edge[EXTRAS] is installed at a version it accepts: the lock must be complete,
  # since it was installed with --no-deps. (`pip check` would also flag packages installed --no-deps on
  # purpose, such as the demo weights package whose metadata pins torch 1.6.)
  "$1/bin/python" - "$2" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, distribution, requires
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # not in the lock: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

extras = {canonicalize_name(e) for e in sys.argv[1].split(",") if e}
todo, seen, bad = [("vqz-edge", frozenset(extras))], set(), []
while todo:
    name, ex = todo.pop()
    if (name, ex) in seen:
        continue
    seen.add((name, ex))
    for line in requires(name) or []:
        req = Requirement(line)
        envs = [{"extra": e} for e in ex] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
            continue
        try:
            version = distribution(req.name).version
        except PackageNotFoundError:
            bad.append(f"{req} (needed by {name}) is not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req} (needed by {name}) but {req.name} {version} is installed")
        todo.append((canonicalize_name(req.name), frozenset(canonicalize_name(e) for e in req.extras)))
if bad:
    sys.exit("image-setup: ERROR: the lock is incomplete or inconsistent:\n  " + "\n  ".join(bad))
print(f"image-setup: all requirements of vqz-edge[{sys.argv[1]}] satisfied ({len(seen)} packages checked)",
      file=sys.stderr)
PY
}

cmd_user() {
  getent group "$VQZ_UID" >/dev/null && die "gid $VQZ_UID is taken in the base image ($(getent group "$VQZ_UID" | cut -d: -f1))"
  groupadd --gid "$VQZ_UID" "$VQZ_USER"
  local groups=()
  if [[ $# -gt 0 ]]; then
    local g
    for g in "$@"; do getent group "$g" >/dev/null || die "group $g does not exist in the base image"; done
    groups=(--groups "$(IFS=,; echo "$*")")
  fi
  useradd --uid "$VQZ_UID" --gid "$VQZ_USER" "${groups[@]}" --create-home --shell /bin/bash "$VQZ_USER"
  log "user $(id "$VQZ_USER")"
}

cmd_layout() {
  mkdir -p /var/lib/vqz-edge /bundle /keys /work
  chown "$VQZ_UID:$VQZ_UID" /var/lib/vqz-edge /work
  chmod 0755 /var/lib/vqz-edge /bundle /keys /work
}

cmd_entrypoint() {
  local src=${1:?usage: entrypoint FILE}
  install -m 0755 "$src" /usr/local/bin/vqz-entrypoint
}

case ${1:-} in
  venv) shift; cmd_venv "$@" ;;
  deps) shift; cmd_deps "$@" ;;
  install) shift; cmd_install "$@" ;;
  user) shift; cmd_user "$@" ;;
  layout) cmd_layout ;;
  entrypoint) shift; cmd_entrypoint "$@" ;;
  *) die "usage: image-setup.sh venv DIR [PYTHON] | deps VENV | install VENV SRC [EXTRAS] | user [GROUP...] | layout | entrypoint FILE" ;;
esac
