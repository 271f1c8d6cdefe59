"""vqz-edge vlm plan|export|audit|run|compare -- the asymmetric VLM recipe (vision + connector FP16, LLM 4-bit)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InputError
from ..memory import MIB
from ..progress import tqdm_factory
from ..targets import get_target, list_targets
from ..vlm.audit import audit_directory
from ..vlm.compare import compare_vlm
from ..vlm.configs import SHIPPED, load_shipped, load_vlm_config
from ..vlm.errors import AuditFailed
from ..vlm.export import ONNX_FILE, VisionExportOptions, export_vision
from ..vlm.planner import PlanOptions, plan_vlm
from ..vlm.run import RunOptions, run_vlm
from ..vlm.table import fit_matrix, matrix_text, seed_rows, seed_table_text
from ..vocab import BACKENDS
from . import COMMANDS, emit_json, options

EXIT_DOES_NOT_FIT = 7  # same as check-memory (BudgetError)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "vlm",
        help=COMMANDS["vlm"].summary,
        description="The asymmetric VLM recipe: the vision tower and connector stay FP16 (TensorRT), only the LLM "
        "backbone goes to 4 bit (bitsandbytes NF4), with the skip list generated from the module tree and an audit "
        "of what actually got quantized.",
    )
    vsub = p.add_subparsers(dest="vlm_command", metavar="SUBCOMMAND")
    vsub.required = True

    pl = vsub.add_parser(
        "plan",
        help="memory plan of a VLM on a Jetson target, from the config alone",
        description="Parameters per component, bytes per precision, KV cache, visual tokens, activation peaks and a "
        "verdict through the same budget model as check-memory; the largest context that fits. MODEL is a "
        "transformers model directory, a config.json, or a shipped config name (see --list). --all prints the "
        "seed's table beside ours and the fit of every shipped config on every catalog target. "
        f"Exit code 0: fits; {EXIT_DOES_NOT_FIT}: does not fit.",
    )
    pl.add_argument("model", nargs="?", metavar="MODEL_DIR|CONFIG.json|NAME")
    g = pl.add_argument_group("target")
    g.add_argument("--target", "-t", metavar="NAME", help="catalog target, e.g. orin-nx-16gb (vqz-edge targets)")
    g.add_argument("--targets-file", type=Path, action="append", default=[], metavar="TOML",
                   help="extra [[target]] definitions (repeatable; also read from $VQZ_EDGE_TARGETS)")
    g.add_argument("--os-reserve-mib", type=options.mib, help="override the target's OS + services reserve (MiB)")
    g.add_argument("--trt-version", help="TensorRT version on the device (default: the target's JetPack)")
    q = pl.add_argument_group("precision")
    q.add_argument("--llm", default="nf4", choices=("fp16", "int8", "nf4", "int4", "q4_0", "q4_k"),
                   help="LLM backbone weights (default nf4 = bitsandbytes; q4_0 / q4_k = GGUF for llama.cpp; "
                   "embeddings and LM head stay fp16)")
    q.add_argument("--vision", default="fp16", metavar="fp16|int8",
                   help="vision tower + connector (default fp16). Below INT8 is refused; int8 needs --fidelity-report")
    q.add_argument("--fidelity-report", type=Path, metavar="FILE",
                   help="JSON of `vqz-edge evaluate --json` measuring the INT8 vision encoder against FP16")
    q.add_argument("--min-vision-cosine", type=options.unit_fraction, default=0.99,
                   help="cosine the fidelity report must reach for --vision int8 (default 0.99)")
    q.add_argument("--no-double-quant", action="store_true", help="plan NF4 without double quantization (4.5 bits)")
    w = pl.add_argument_group("workload")
    w.add_argument("--context", type=options.positive_int, default=2048,
                   help="LLM sequence length incl. image tokens (default 2048; clamped to the model's "
                   "max_position_embeddings, with a note)")
    w.add_argument("--images", type=options.positive_int, default=1, help="images per request (default 1)")
    w.add_argument("--batch", type=options.positive_int, default=1, help="concurrent sequences (default 1)")
    w.add_argument("--image-size", type=options.image_size, metavar="HxW", help="LLaVA-NeXT: image size (default: the worst case)")
    w.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"),
                   help="sdpa: fused kernels, no S^2 scores (default: transformers' default attn_implementation); "
                   "eager: materialised attention scores")
    w.add_argument("--logits", default="last", choices=("last", "all"),
                   help="prefill logits for the last position (generate, default) or all positions (forward)")
    w.add_argument("--llm-runtime-mib", type=options.mib, default=512.0,
                   help="PyTorch + bitsandbytes runtime allowance beyond the CUDA context (default 512, not measured)")
    o = pl.add_argument_group("report")
    o.add_argument("--all", action="store_true",
                   help="the seed's table beside ours and the fit matrix of every shipped config on every target")
    o.add_argument("--list", action="store_true", help="list the shipped configs with their sources")
    options.add_common(pl)
    pl.set_defaults(func=run_plan)

    ex = vsub.add_parser(
        "export",
        help="vision tower + connector -> one verified ONNX (FP16 plan) and the LLM's NF4 config",
        description="Load a transformers LLaVA / LLaVA-NeXT / Mllama model directory on the CPU, export the vision "
        "tower and connector to OUTDIR/vision.onnx, verify it against torch on real photos (cosine of every visual "
        "token), and write plan.json (all FP16), quantization_config.json (bitsandbytes NF4 with the skip list "
        "generated from the module tree) and vlm_export.json. Nothing is written when verification fails.",
    )
    ex.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    ex.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output directory")
    eg = ex.add_argument_group("export")
    eg.add_argument("--opset", type=options.positive_int, default=17, help="ONNX opset (default 17)")
    eg.add_argument("--samples", type=options.positive_int, default=4, help="images used to verify (default 4)")
    eg.add_argument("--min-cosine", type=options.unit_fraction, default=0.9999, help="minimum visual-token cosine (default 0.9999)")
    eg.add_argument("--compute-dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                    help="bnb_4bit_compute_dtype of the generated config (default float16)")
    eg.add_argument("--llm-format", default="bnb", choices=("bnb", "gguf"),
                    help="bnb: the bitsandbytes NF4 config for the LLM (default); gguf: also write the LLM backbone as "
                    "GGUF for llama.cpp, every tensor verified against the FP16 weights (LLaVA with a Llama/Mistral LLM)")
    eg.add_argument("--gguf-type", default="q4_0", choices=("q4_0",), help="GGUF weight type of the LLM (default q4_0)")
    options.add_common(ex)
    ex.set_defaults(func=run_export)

    au = vsub.add_parser(
        "audit",
        help="load a VLM and prove what got quantized (fails on 4-bit vision, quantized LM head, dead skip entries)",
        description="Load MODEL_DIR on the CPU (quantized with --quantization-config if given) and report per "
        "component the Linear layers by class and dtype and the parameter bytes. Fails (exit 5, naming the modules) "
        "when a vision-tower or connector layer is below FP16, when the LM head was quantized, or when a skip entry "
        "matched no module / no Linear layer.",
    )
    au.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    au.add_argument("--quantization-config", type=Path, metavar="FILE",
                    help="bitsandbytes config JSON to load with (e.g. the one vlm export wrote)")
    au.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                    help="dtype of what stays unquantized (default: the checkpoint's)")
    options.add_common(au)
    au.set_defaults(func=run_audit)

    ru = vsub.add_parser(
        "run",
        help="answer a prompt about a photo: vision ONNX/engine -> visual tokens -> 4-bit LLM, greedy",
        description="The asymmetric recipe end to end: the vision tower + connector through vqz-edge's runner "
        "(vision.onnx on ONNX Runtime, or its FP16 TensorRT engine on a Jetson), the visual tokens fed into the LLM "
        "backbone loaded with the 4-bit config (bitsandbytes NF4; the loaded model is audited first), greedy "
        "generation. Prints the text, tokens/s and peak memory.",
    )
    ru.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="transformers model directory (weights + processor)")
    ru.add_argument("--image", "-i", required=True, type=Path, metavar="PHOTO", help="image file")
    ru.add_argument("--prompt", "-p", required=True, metavar="TEXT",
                    help="the question; the chat template (or the image token) is added unless it holds the image token")
    _add_recipe_inputs(ru)
    rg = ru.add_argument_group("generation")
    rg.add_argument("--max-new-tokens", type=options.positive_int, default=32, help="stop after this many tokens (default 32)")
    rg.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where the LLM runs (default: cuda when torch sees a GPU, else cpu)")
    rg.add_argument("--llm-format", default="bnb", choices=("bnb", "gguf"),
                    help="bnb: transformers + bitsandbytes NF4 (default); gguf: the export's GGUF on llama.cpp "
                    "(llama-cpp-python; needs --vision DIR from vlm export --llm-format gguf)")
    _add_vision_runtime(ru)
    options.add_common(ru)
    ru.set_defaults(func=run_run)

    co = vsub.add_parser(
        "compare",
        help="FP16 vs asymmetric (vision FP16, LLM NF4) vs all-4-bit on the same images and prompts",
        description="Load the model three times -- nothing quantized; the recipe (vision tower + connector through "
        "vqz-edge's runner, LLM backbone NF4); everything but the LM head NF4 -- and measure on every image x prompt: "
        "visual-token cosine per component (vision tower output, connector output) against FP16, next-token KL and "
        "top-1 agreement over FP16's greedy sequence (teacher forcing), each variant's own text against FP16's, and "
        "the weight bytes each holds.",
    )
    co.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    co.add_argument("--image", "-i", required=True, nargs="+", type=Path, metavar="PHOTO", help="image files")
    co.add_argument("--prompt", "-p", required=True, nargs="+", metavar="TEXT", help="prompts (each asked about each image)")
    _add_recipe_inputs(co)
    cg = co.add_argument_group("generation")
    cg.add_argument("--max-new-tokens", type=options.positive_int, default=16, help="greedy tokens per answer (default 16)")
    cg.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where the LLMs run (default: cuda when torch sees a GPU, else cpu)")
    _add_vision_runtime(co)
    options.add_common(co)
    co.set_defaults(func=run_compare)


def _add_recipe_inputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe inputs")
    g.add_argument("--vision", type=Path, metavar="DIR|ONNX|ENGINE",
                   help="vision tower + connector: a `vlm export` directory, its vision.onnx, or the TensorRT engine "
                   "built from it (default: export it first into a temporary directory)")
    g.add_argument("--quantization-config", type=Path, metavar="FILE",
                   help="bitsandbytes 4-bit config (default: the export directory's, else generated from the config)")


def _add_vision_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vision runtime")
    g.add_argument("--backend", type=options.backend, choices=BACKENDS, default="auto",
                   help="auto: TensorRT for engines, ONNX Runtime for .onnx (default)")
    g.add_argument("--target", metavar="NAME", help="memory budget target for the vision runner (default: this host)")
    g.add_argument("--threads", type=options.nonnegative_int, default=0, help="ONNX Runtime intra-op threads (default: its choice)")


# ------------------------------------------------------------------------------------------------ plan


def _targets_files(args: argparse.Namespace) -> list[Path]:
    return list(getattr(args, "targets_file", []) or [])


def run_plan(args: argparse.Namespace) -> int:
    if args.list:
        rows = [load_shipped(n) for n in SHIPPED]
        if args.json:
            emit_json({"shipped": [c.summary() for c in rows]})
            return 0
        for c in rows:
            src = c.source or {}
            print(f"{c.name:24} {c.architecture:36} {src.get('hub_id', '')}")
            print(f"{'':24} {src.get('config_url', '')}")
        return 0
    if args.all:
        return _run_all(args)
    if not args.model:
        raise InputError("vlm plan needs MODEL_DIR|CONFIG.json|NAME (or --all / --list)",
                         hint=f"shipped configs: {', '.join(SHIPPED)}")
    if not args.target:
        raise InputError("vlm plan needs --target NAME", hint="list targets with: vqz-edge targets")
    try:
        opts = PlanOptions(
            llm=args.llm, vision=args.vision, context=args.context, images=args.images, batch=args.batch,
            attention=args.attention, logits=args.logits, image_hw=args.image_size,
            double_quant=not args.no_double_quant, llm_runtime_bytes=int(args.llm_runtime_mib * MIB),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    cfg = load_vlm_config(args.model)
    target = get_target(args.target, _targets_files(args))
    reserve = int(args.os_reserve_mib * MIB) if args.os_reserve_mib is not None else None
    try:
        plan = plan_vlm(cfg, target, opts, fidelity_report=args.fidelity_report,
                        min_vision_cosine=args.min_vision_cosine, os_reserve_bytes=reserve,
                        trt_version=args.trt_version)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if args.json:
        emit_json(plan.to_dict())
    else:
        print(plan.table())
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def _run_all(args: argparse.Namespace) -> int:
    rows = seed_rows()
    cells = fit_matrix(targets=list_targets(_targets_files(args)), context=args.context, images=args.images,
                       attention=args.attention)
    if args.json:
        emit_json({"seed_table": [r.to_dict() for r in rows], "fit_matrix": [c.to_dict() for c in cells],
                   "context": args.context, "images": args.images, "attention": args.attention})
        return 0
    print(seed_table_text(rows))
    print()
    print(matrix_text(cells, args.context, args.attention))
    return 0


# ---------------------------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    try:
        opts = VisionExportOptions(opset=args.opset, samples=args.samples, min_cosine=args.min_cosine,
                                   compute_dtype=args.compute_dtype, llm_format=args.llm_format,
                                   gguf_type=args.gguf_type)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    res = export_vision(args.model_dir, args.output, opts, progress=None if (args.quiet or args.json) else tqdm_factory)
    if args.json:
        emit_json(res.to_dict())
        return 0
    print(f"exported the vision tower + connector of {res.model} ({res.family}) -> {res.onnx_path} "
          f"({res.nodes} nodes, {res.seconds:.1f}s)")
    for i in res.inputs:
        print(f"  input  {i['name']}: {i['shape']} {i['dtype']}")
    for o in res.outputs:
        print(f"  output {o['name']}: {o['shape']} {o['dtype']}")
    print(f"  verified against torch on {res.tokens_compared} visual tokens: min cosine {res.min_cosine:.6f}, "
          f"mean {res.mean_cosine:.6f}, max abs err {res.max_abs_error:.3g}")
    print(f"  data: {res.data_note}")
    print(f"  BatchNormalization {res.batchnorm_before} -> {res.batchnorm_after}; LayerNormalization nodes "
          f"{res.layernorm_nodes} (kept for TensorRT)")
    print(f"  precision plan (all FP16): {res.plan_path}")
    print(f"  LLM NF4 config, {res.skip_modules} skip entries generated from the module tree: {res.quant_config_path}")
    if res.gguf is not None:
        g = res.gguf.to_dict()
        print(f"  LLM GGUF {g['type'].upper()}: {g['path']} ({g['bytes'] / 1024:.1f} KiB; {g['quantized_tensors']} tensors "
              f"{g['type'].upper()}, {g['tensors'] - g['quantized_tensors']} F16/F32: embeddings, LM head, norms; "
              f"tokenizer {g['tokenizer']})")
        print(f"    every tensor dequantized and compared with the FP16 weights: F16/F32 equal, {g['type'].upper()} blocks "
              f"within {g['max_err_of_bound']:.3f} of the rounding bound, relative RMS error <= "
              f"{g['max_rel_rms_err_quantized']:.1%}; the vision tower stays {ONNX_FILE} (FP16 TensorRT)")
    return 0


# ----------------------------------------------------------------------------------------------- audit


def run_audit(args: argparse.Namespace) -> int:
    _quiet_bitsandbytes(args)
    report = audit_directory(args.model_dir, args.quantization_config, dtype=args.dtype)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(report.table())
    if not report.ok:
        print(f"vqz-edge vlm audit: FAIL: {len(report.failures)} problem(s); see above", file=sys.stderr)
        return AuditFailed.exit_code
    return 0


# ------------------------------------------------------------------------------------------------- run


def _quiet_bitsandbytes(args: argparse.Namespace) -> None:
    if not args.verbose:  # bitsandbytes warns at import that an optional CPU kernel package is absent (harmless)
        logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def run_run(args: argparse.Namespace) -> int:
    _quiet_bitsandbytes(args)
    try:
        opts = RunOptions(max_new_tokens=args.max_new_tokens, device=args.device, backend=args.backend,
                          target=args.target, threads=args.threads, llm_format=args.llm_format)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    res = run_vlm(args.model_dir, args.image, args.prompt, vision=args.vision,
                  quantization_config=args.quantization_config, opts=opts,
                  progress=None if (args.quiet or args.json) else tqdm_factory)
    if args.json:
        emit_json(res.to_dict())
        return 0
    g = res.generation
    print(f"vqz-edge vlm run: {res.model} ({res.family}) on {res.image}")
    print(f"  prompt: {res.prompt_tokens} tokens incl. {res.image_positions} image position(s); format: {res.prompt_format}")
    print(f"  vision tower + connector: {res.vision} on {res.vision_backend}: visual tokens {res.visual_tokens} "
          f"in {res.vision_seconds * 1000:.1f} ms")
    if res.audit is not None:
        print(f"  LLM backbone: bitsandbytes NF4, {res.llm_4bit_layers} Linear4bit layers on {res.device} "
              f"(compute {res.compute_dtype}); audit {'PASS' if res.audit.ok else 'FAIL'}: vision side and LM head not "
              f"quantized; config: {res.quantization_config}")
    else:
        print(f"  LLM backbone: {res.llm_format}: {res.quantization_config}")
    print(f"  generated {len(g.tokens)} tokens (stopped: {g.stopped}): {g.tokens_per_second:.1f} tokens/s decoding; "
          f"prefill of {g.prompt_tokens} tokens {g.prefill_seconds * 1000:.0f} ms")
    held = sum(res.llm_weight_bytes.values()) - res.vision_modules_dropped_bytes  # gguf: the file llama.cpp maps
    cuda = f"; CUDA allocator peak {res.cuda_peak_bytes / MIB:.1f} MiB" if res.cuda_peak_bytes is not None else ""
    if res.audit is None:
        print(f"  memory: process peak RSS {res.peak_rss_bytes / MIB:.1f} MiB; GGUF weights {held / MIB:.2f} MiB")
    else:
        print(f"  memory: process peak RSS {res.peak_rss_bytes / MIB:.1f} MiB; LLM weights held {held / MIB:.2f} MiB "
              f"(vision modules of the checkpoint dropped after loading: {res.vision_modules_dropped_bytes / MIB:.2f} "
              f"MiB){cuda}")
    for n in res.notes:
        print(f"  note: {n}")
    print(f"answer: {res.text!r}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    _quiet_bitsandbytes(args)
    try:
        opts = RunOptions(max_new_tokens=args.max_new_tokens, device=args.device, backend=args.backend,
                          target=args.target, threads=args.threads)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    report = compare_vlm(args.model_dir, args.image, args.prompt, vision=args.vision,
                         quantization_config=args.quantization_config, opts=opts,
                         progress=None if (args.quiet or args.json) else tqdm_factory)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(report.table())
    return 0
