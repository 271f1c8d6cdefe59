"""Vision-language models: the asymmetric recipe.

The vision tower and the connector (multi-modal projector) stay FP16 -- built with TensorRT like any
vision model, never below INT8 -- and only the LLM backbone goes to 4 bit. Public API::

    from vqz_edge.vlm import load_vlm_config, count_params, PlanOptions, plan_vlm
    cfg = load_vlm_config("llava-1.5-7b")            # shipped name, CONFIG.json or MODEL_DIR
    plan = plan_vlm(cfg, get_target("orin-nx-16gb"), PlanOptions(llm="nf4", context=4096))
    plan.fits, plan.max_context, plan.report.table(), plan.to_dict()

    from vqz_edge.vlm.export import export_vision      # vision.onnx + plan.json + quantization_config.json
    from vqz_edge.vlm.quantconfig import generated_skip_modules, nf4_quantization_config
    from vqz_edge.vlm.audit import audit_model, audit_directory, require_pass

Modules that need torch / transformers (params' meta construction, export, audit, quantconfig's skip
lists) import them lazily inside functions.
"""

from .configs import SHIPPED, VlmConfig, load_shipped, load_vlm_config, parse_vlm_config
from .errors import AuditFailed, PrecisionRefused, VlmConfigError
from .params import COMPONENTS, ParamCount, count_params
from .planner import PlanOptions, VlmPlan, plan_vlm

__all__ = [
    "COMPONENTS",
    "SHIPPED",
    "AuditFailed",
    "ParamCount",
    "PlanOptions",
    "PrecisionRefused",
    "VlmConfig",
    "VlmConfigError",
    "VlmPlan",
    "count_params",
    "load_shipped",
    "load_vlm_config",
    "parse_vlm_config",
    "plan_vlm",
]
