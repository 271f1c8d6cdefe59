"""Progress bars (the CLI's tqdm factory) say what they count."""

from __future__ import annotations

from vqz_edge.progress import tqdm_factory


def test_progress_bar_counts_what_its_description_names() -> None:
    bar = tqdm_factory("fine-tuning (samples)", 4)
    try:
        assert (bar.desc, bar.unit) == ("fine-tuning", "samples")  # type: ignore[attr-defined]
    finally:
        bar.close()
    plain = tqdm_factory("bench", 2)
    plain.close()
    assert (plain.desc, plain.unit) == ("bench", "it")  # type: ignore[attr-defined]
