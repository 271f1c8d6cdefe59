from __future__ import annotations

from pathlib import Path

import pytest

from vqz_edge.errors import SpecError
from vqz_edge.spec import load_spec, parse_spec

GOOD = """
version = 1
[model]
name = "mobilenet_v2"
source = "mobilenet_v2"
weights = "w.pth"
[[inputs]]
name = "input"
shape = [4, 3, 224, 224]
min_shape = [1, 3, 224, 224]
max_shape = [8, 3, 224, 224]
[calibration]
method = "percentile"
percentile = 99.9
[[precision.rules]]
match = "classifier*"
precision = "fp32"
reason = "final head"
[build]
targets = ["orin-nx-16gb"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


def test_good_spec_round_trip(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, GOOD))
    assert spec.model.name == "mobilenet_v2" and spec.inputs[0].max_shape == (8, 3, 224, 224)
    assert spec.calibration.method == "percentile" and spec.calibration.percentile == 99.9
    assert spec.precision.rules[0].match == "classifier*"
    assert spec.resolve_path("w.pth") == tmp_path.resolve() / "w.pth"
    again = parse_spec(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('method = "percentile"', 'method = "kl"', "'calibration.method' = 'kl' is not allowed; choose one of ['entropy', 'max', 'percentile', 'mse', 'auto']"),
        ('name = "input"', 'name = "input"\ncolour = 3', "unknown key(s) ['colour'] in [inputs[0]]"),
        ("shape = [4, 3, 224, 224]", "shape = [4, 3, -1, 224]", "'inputs[0].shape' = [4, 3, -1, 224] has a non-positive dimension"),
        ("min_shape = [1, 3, 224, 224]", "min_shape = [9, 3, 224, 224]", "need min_shape <= shape <= max_shape"),
        ('precision = "fp32"', 'precision = "fp8"', "'precision.rules[].precision' = 'fp8' is not allowed"),
        ('match = "classifier*"', 'match = "classifier*"\nop_type = "Gemm"', "exactly one of 'match', 'regex', 'op_type', 'node'"),
        ("version = 1", "version = 7", "'version' = 7 is not supported"),
        ('targets = ["orin-nx-16gb"]', "targets = [3]", "'build.targets' must be a list of target names"),
    ],
)
def test_validation_names_key_and_allowed_values(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in GOOD
    with pytest.raises(SpecError) as info:
        load_spec(_write(tmp_path, GOOD.replace(old, new, 1)))
    assert message in str(info.value)
    assert "spec.toml" in str(info.value)


def test_missing_required_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="missing required key 'model.source'"):
        load_spec(_write(tmp_path, GOOD.replace('source = "mobilenet_v2"\n', "")))
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(_write(tmp_path, "version = = 1"))
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "none.toml")
