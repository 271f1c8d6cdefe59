"""``vqz-edge bundle``: everything the device needs to build and verify its engine, in one signed tar.

TensorRT engines are tied to the GPU and TensorRT version that built them and TensorRT has no Jetson
cross target, so the x86 host ships the *inputs* of the build: the ONNX (and the Q/DQ ONNX for explicit
builds), the calibration cache stamped with the target's TensorRT version, the resolved precision plan,
the spec, the fidelity report and a smoke test (reference inputs + FP32 reference outputs + tolerance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..artifacts.calib_cache import cache_bytes, read_cache
from ..artifacts.calib_dir import check_calibration_set
from ..artifacts.plan import ResolvedPlan
from ..data.source import open_data
from ..errors import InputError, VerificationError
from ..fsutil import atomic_path, check_output_path, sha256_bytes, sha256_file
from ..log import get_logger
from ..onnx_io import TensorInfo, check_spec_inputs, graph_inputs, graph_outputs, load_model
from ..ort import session
from ..progress import ProgressFactory, make_bar
from ..spec import load_spec
from ..targets import get_target, jetpack_info, jetpack_table
from ..versions import parse_trt_version
from ..vocab import CACHE_FILE, ONNX_FILE, PLAN_FILE, QDQ_ONNX_FILE
from .manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Compatibility,
    FileEntry,
    Manifest,
    SmokeTest,
    TensorRef,
    version_tuple,
)
from .signing import load_private_key, private_key_id, sign_manifest
from .smoke import compare, ort_run_fn, run_batched
from .tarball import Source, write_tar

_log = get_logger(__name__)

DEFAULT_SMOKE_SAMPLES = 4
# Default smoke tolerance: what the served model reaches on this host, minus a margin for the device's
# kernels (TensorRT INT8/FP16 tactics differ from ONNX Runtime's CPU kernels), within these bounds.
SMOKE_MARGIN = 0.02
SMOKE_FLOOR = 0.5
SMOKE_CEILING = 0.999


@dataclass(frozen=True)
class BundleOptions:
    target: str
    bundle_version: int = 1
    calibration_dir: Path | None = None  # default: calibration/<model> (relative to the working directory)
    jetpack: tuple[str, ...] = ()  # allowed JetPack releases; default: those shipping the target's TensorRT line
    smoke_samples: int = DEFAULT_SMOKE_SAMPLES
    min_cosine: float | None = None  # None: the host-measured min cosine minus SMOKE_MARGIN
    sign_key: Path | None = None
    targets_files: tuple[Path, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.bundle_version, bool) or self.bundle_version < 1:
            raise ValueError(f"bundle version must be a positive integer, got {self.bundle_version}")
        if self.smoke_samples < 1:
            raise ValueError(f"smoke samples must be >= 1, got {self.smoke_samples}")
        if self.min_cosine is not None and not 0.0 < self.min_cosine <= 1.0:
            raise ValueError(f"smoke min cosine must be in (0, 1], got {self.min_cosine}")


@dataclass(frozen=True)
class BundleResult:
    output: Path
    manifest: Manifest
    signed: bool
    key_id: str | None
    size: int
    sha256: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "output": str(self.output),
            "bundle_id": m.bundle_id,
            "bundle_version": m.bundle_version,
            "model": m.model,
            "target": m.target,
            "signed": self.signed,
            "key_id": self.key_id,
            "bundle_bytes": self.size,
            "bundle_sha256": self.sha256,
            "files": {k: v.to_dict() for k, v in sorted(m.files.items())},
            "compatibility": m.compatibility.to_dict(),
            "build": dict(m.build),
            "smoke": m.smoke.to_dict(),
            "notes": list(self.notes),
        }


def _compatibility(target: Any, jetpacks: tuple[str, ...], targets_files: tuple[Path, ...]) -> tuple[Compatibility, list[Any]]:
    if jetpacks:
        rows = [jetpack_info(v, targets_files) for v in jetpacks]
    else:
        line = target.default_trt_version.split(".")[:2]
        rows = [j for j in jetpack_table(targets_files) if j.tensorrt.split(".")[:2] == line]
        if not rows:
            rows = [jetpack_info(target.default_jetpack, targets_files)]
    if target.min_jetpack:
        low = [j.version for j in rows if version_tuple(j.version) < version_tuple(target.min_jetpack)]
        if low:
            raise InputError(
                f"{target.name} needs JetPack {target.min_jetpack} or later; --jetpack lists {low}",
            )
    rows = sorted({j.version: j for j in rows}.values(), key=lambda j: version_tuple(j.version))
    trts = sorted((j.tensorrt for j in rows), key=version_tuple)
    comp = Compatibility(
        jetpack=tuple(j.version for j in rows),
        l4t=tuple(j.l4t for j in rows),
        tensorrt_min=trts[0],
        tensorrt_max=trts[-1],
        compute_capability=target.compute_capability,
    )
    return comp, rows


def _stamped_cache(path: Path, trt_version: str, model: Any, onnx_path: Path) -> tuple[bytes, dict[str, Any]]:
    cache = read_cache(path)
    tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    foreign = sorted(set(cache.scales) - tensors)
    if foreign:
        raise InputError(
            f"{path} belongs to another model: {len(foreign)} of its {len(cache.scales)} tensors are not in "
            f"{onnx_path} (e.g. {foreign[:3]})",
            hint="calibrate this model.onnx (vqz-edge calibrate) so the cache, Q/DQ model and plan match it",
        )
    code = parse_trt_version(trt_version).code
    info: dict[str, Any] = {
        "file": CACHE_FILE,
        "trt_version": trt_version,
        "header": f"TRT-{code}-{cache.algorithm}",
        "tensors": len(cache.scales),
        "restamped_from": None if cache.version_code == code else cache.version_code,
    }
    if cache.version_code != code:
        from dataclasses import replace

        cache = replace(cache, version_code=code)
    return cache_bytes(cache), info


def _check_plan(path: Path, onnx_sha256: str) -> bytes:
    data = path.read_bytes()
    try:
        plan = ResolvedPlan.from_dict(json.loads(data.decode("utf-8")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a valid resolved precision plan ({exc})", hint="run vqz-edge plan again") from exc
    if plan.onnx_sha256 != onnx_sha256:
        raise InputError(
            f"{path} was resolved for another model (onnx_sha256 {plan.onnx_sha256[:12]}...), not for "
            f"model.onnx ({onnx_sha256[:12]}...)",
            hint="the plan is stale: run vqz-edge plan (and calibrate) again for this model",
        )
    return data


def _reference_inputs(spec: Any, onnx_path: Path, n: int) -> dict[str, np.ndarray]:
    """``n`` real samples for each model input: the spec's data (demo photos by default) for a single 4-D
    image input, evaluation split; seeded random data for other inputs."""
    sess = session(onnx_path, optimize=False)
    ins = sess.get_inputs()
    feeds: dict[str, np.ndarray] = {}
    spec_inputs = {i.name: i for i in spec.inputs}
    rng = np.random.default_rng(0)
    image_like = len(ins) == 1 and len(ins[0].shape) == 4 and ins[0].type == "tensor(float)"
    for vi in ins:
        sp = spec_inputs.get(vi.name)
        shape = list(sp.shape if sp is not None else [d if isinstance(d, int) else 1 for d in vi.shape])
        if image_like:
            data = spec.calibration.data
            where = data if data == "demo" else str(spec.resolve_path(data))
            info = TensorInfo(vi.name, tuple(shape), "float32")
            src = open_data(where, info, count=n, split="evaluation")
            arr = np.concatenate(list(src.batches(n)), axis=0)[:n]
            feeds[vi.name] = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            dtype = {"tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
                     "tensor(bool)": np.bool_}.get(vi.type, np.float32)
            full = [n] + shape[1:]
            if np.issubdtype(dtype, np.floating):
                feeds[vi.name] = rng.standard_normal(full).astype(dtype)
            else:
                feeds[vi.name] = rng.integers(0, 2, size=full).astype(dtype)
    return feeds


def _npy_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def create_bundle(spec_path: Path, out: Path, options: BundleOptions, *, progress: ProgressFactory | None = None) -> BundleResult:
    """Assemble, check, sign and write the bundle for ``options.target``. Writes nothing on failure."""
    out = check_output_path(Path(out))
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    target = get_target(options.target, options.targets_files)
    if spec.build.targets and target.name not in spec.build.targets:
        raise InputError(
            f"target {target.name!r} is not in the spec's build.targets {list(spec.build.targets)}",
            hint=f"add it to [build] targets in {spec_path} or pick one of those",
        )
    private_key = None
    if options.sign_key is not None:
        private_key = load_private_key(options.sign_key)  # fail before the heavy work
    cal = Path(options.calibration_dir) if options.calibration_dir else Path("calibration") / spec.model.name
    onnx_path = cal / ONNX_FILE
    if not onnx_path.is_file():
        raise InputError(
            f"{onnx_path} does not exist",
            hint="run vqz-edge demo (or export + calibrate) first, or point --calibration-dir at the model's folder",
        )
    model = load_model(onnx_path)
    check_spec_inputs(spec.inputs, model, str(onnx_path), spec_path)
    # the calibration outputs must be one run's set, made for this model.onnx (plan.json has its own stamp)
    check_calibration_set(cal, used=(CACHE_FILE, QDQ_ONNX_FILE), model_sha256=sha256_file(onnx_path))
    notes: list[str] = []
    bar = make_bar(progress, "bundle (steps)", 6)
    try:
        comp, rows = _compatibility(target, options.jetpack, options.targets_files)
        entries: dict[str, Source] = {ONNX_FILE: onnx_path}
        artifacts: dict[str, str] = {"onnx": ONNX_FILE}
        hashes: dict[str, str] = {ONNX_FILE: sha256_file(onnx_path)}
        qdq = cal / QDQ_ONNX_FILE
        if qdq.is_file():
            q = load_model(qdq)
            if ([(i.name, i.shape) for i in graph_inputs(q)] != [(i.name, i.shape) for i in graph_inputs(model)]
                    or [o.name for o in graph_outputs(q)] != [o.name for o in graph_outputs(model)]):
                raise InputError(
                    f"{qdq} belongs to another model: its inputs/outputs {[i.to_dict() for i in graph_inputs(q)]} -> "
                    f"{[o.name for o in graph_outputs(q)]} are not those of {onnx_path}",
                    hint="calibrate this model.onnx (vqz-edge calibrate) so the cache, Q/DQ model and plan match it",
                )
            entries[QDQ_ONNX_FILE] = qdq
            artifacts["qdq_onnx"] = QDQ_ONNX_FILE
            hashes[QDQ_ONNX_FILE] = sha256_file(qdq)
        cache_info = None
        if (cal / CACHE_FILE).is_file():
            data, cache_info = _stamped_cache(cal / CACHE_FILE, target.default_trt_version, model, onnx_path)
            entries[CACHE_FILE] = data
            artifacts["calibration_cache"] = CACHE_FILE
            if cache_info["restamped_from"] is not None:
                notes.append(
                    f"calibration cache header restamped from TRT-{cache_info['restamped_from']} to "
                    f"{cache_info['header']} (the target's TensorRT {target.default_trt_version})"
                )
        modes = [m for m, ok in (("explicit", "qdq_onnx" in artifacts), ("implicit", cache_info is not None), ("fp16", True)) if ok]
        if "implicit" in modes and "explicit" not in modes:
            stale = [j.version for j in rows if j.tensorrt != target.default_trt_version]
            if stale:
                raise InputError(
                    f"JetPack {stale} ship(s) another TensorRT than the calibration cache is stamped for "
                    f"({target.default_trt_version}), and there is no model.qdq.onnx for an explicit build there",
                    hint="run vqz-edge calibrate (it writes model.qdq.onnx) or limit --jetpack to the target's TensorRT line",
                )
        if "implicit" not in modes and "explicit" not in modes:
            notes.append("no calibration.cache and no model.qdq.onnx: the device can only build FP16")
        plan_file = cal / PLAN_FILE
        if plan_file.is_file():
            entries[PLAN_FILE] = _check_plan(plan_file, hashes[ONNX_FILE])
            artifacts["plan"] = PLAN_FILE
        else:
            notes.append(f"no {plan_file}: the device build gets no per-layer precision constraints")
        entries["spec.toml"] = spec_path.read_bytes()
        artifacts["spec"] = "spec.toml"
        fid = cal / "fidelity.json"
        if fid.is_file():
            try:
                json.loads(fid.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{fid} is not valid JSON ({exc})", hint="run vqz-edge evaluate --json again") from exc
            entries["fidelity.json"] = fid
            artifacts["fidelity"] = "fidelity.json"
        bar.update(1)

        # -- smoke test: real inputs, FP32 reference outputs, checked here on the artifact the device serves
        n = options.smoke_samples
        inputs = _reference_inputs(spec, onnx_path, n)
        batch = max(1, min(n, spec.inputs[0].shape[0]))
        if n % batch:
            n -= n % batch
            inputs = {k: v[:n] for k, v in inputs.items()}
        bar.update(1)
        ref_run = ort_run_fn(onnx_path)

        out_names = [o.name for o in session(onnx_path, optimize=False).get_outputs()]
        reference = run_batched(ref_run, inputs, batch, out_names)
        bar.update(1)
        served = QDQ_ONNX_FILE if "qdq_onnx" in artifacts else ONNX_FILE
        got = run_batched(ort_run_fn(cal / served), inputs, batch, out_names)
        measured = compare(got, reference, 1.0, batch)
        if options.min_cosine is None:
            threshold = round(min(SMOKE_CEILING, max(SMOKE_FLOOR, measured.min_cosine - SMOKE_MARGIN)), 4)
            if measured.min_cosine - SMOKE_MARGIN < SMOKE_FLOOR:
                raise VerificationError(
                    f"{served} is far from the FP32 model on this host (min cosine {measured.min_cosine:.4f} on "
                    f"{measured.samples} reference samples); refusing to ship it",
                    hint="check the calibration (vqz-edge evaluate); pass --smoke-min-cosine to set a tolerance explicitly",
                )
        else:
            threshold = options.min_cosine
            if measured.min_cosine < threshold:
                raise VerificationError(
                    f"{served} already misses the smoke tolerance on this host: min cosine {measured.min_cosine:.5f} "
                    f"< {threshold} against the FP32 reference",
                    hint="check vqz-edge evaluate; lower --smoke-min-cosine only if that fidelity is acceptable",
                )
        result = compare(got, reference, threshold, batch)
        bar.update(1)
        in_refs, out_refs = [], []
        for i, (name, arr) in enumerate(inputs.items()):
            entries[f"reference/input_{i}.npy"] = _npy_bytes(arr)
            in_refs.append(TensorRef(name, f"reference/input_{i}.npy", tuple(arr.shape), str(arr.dtype)))
        for i, name in enumerate(out_names):
            arr = reference[name]
            entries[f"reference/output_{i}.npy"] = _npy_bytes(arr)
            out_refs.append(TensorRef(name, f"reference/output_{i}.npy", tuple(arr.shape), str(arr.dtype)))
        import onnxruntime

        smoke = SmokeTest(
            tuple(in_refs), tuple(out_refs), threshold,
            measured={
                "host_model": served,
                "host_runtime": f"onnxruntime {onnxruntime.__version__} CPU",
                "min_cosine": round(result.min_cosine, 6),
                "top1_agreement": None if result.top1_agreement is None else round(result.top1_agreement, 6),
                "batch": batch,
            },
        )

        # -- manifest, signature, tar
        files: dict[str, FileEntry] = {}
        for name, src in entries.items():
            if isinstance(src, bytes):
                files[name] = FileEntry(sha256_bytes(src), len(src))
            else:
                files[name] = FileEntry(hashes.get(name) or sha256_file(src), src.stat().st_size)
        build = {
            "modes": modes,
            "preferred_mode": modes[0],
            "calibration_cache": cache_info,
            "workspace_mib": spec.build.workspace_mib,
            "precision_default": spec.precision.default,
            "inputs": [
                {"name": i.name, "dtype": i.dtype, "shape": list(i.shape),
                 "min_shape": list(i.min_shape or i.shape), "max_shape": list(i.max_shape or i.shape)}
                for i in spec.inputs
            ],
            "target_trt_version": target.default_trt_version,
            "smoke_batch": batch,
        }
        manifest = Manifest(
            bundle_version=options.bundle_version, model=spec.model.name, target=target.name,
            vqz_edge_version=__version__, compatibility=comp, artifacts=artifacts, files=files, build=build,
            smoke=smoke,
        )
        manifest_bytes = manifest.to_bytes()
        entries[MANIFEST_NAME] = manifest_bytes
        key_id = None
        if private_key is not None:
            entries[SIGNATURE_NAME] = sign_manifest(manifest_bytes, private_key)
            key_id = private_key_id(private_key)
        else:
            notes.append("bundle is NOT signed (no --sign-key): devices refuse it unless --allow-unsigned")
        bar.update(1)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                size = write_tar(fh, entries)
            digest = sha256_file(tmp)
        bar.update(1)
    finally:
        bar.close()
    _log.info("bundle %s -> %s (%d bytes)", manifest.bundle_id, out, size)
    return BundleResult(out, manifest, private_key is not None, key_id, size, digest, tuple(notes))
