"""The GGUF LLM backbone on llama.cpp (llama-cpp-python), fed the visual tokens of vqz-edge's vision runner.

llama.cpp takes input *embeddings* as well as token ids (``llama_batch.embd``; what its own multimodal path does
with an ``mmproj``). The prompt is decoded as one batch of embeddings -- the GGUF's own F16 token embeddings for
text positions, the visual tokens of ``vision.onnx`` / its TensorRT engine for the image positions -- then greedy
decoding continues with token ids on llama.cpp's KV cache. llama-cpp-python is imported only here, when the GGUF
route runs (pip builds it from source; it is not a dependency of vqz-edge).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DependencyError, DeviceRuntimeError, InputError
from .generate import Generation, Prompt
from .gguf_export import import_gguf


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise DependencyError(
            "llama-cpp-python is not installed: the GGUF backbone runs on llama.cpp",
            hint="pip install llama-cpp-python (it builds llama.cpp from source; on a Jetson with "
            "CMAKE_ARGS='-DGGML_CUDA=on'), or run the bitsandbytes NF4 backbone (--llm-format bnb)",
        ) from exc
    return llama_cpp


def gguf_token_embeddings(path: Path) -> np.ndarray:
    """The GGUF's ``token_embd.weight`` as float32 ``[vocab, hidden]`` (what llama.cpp looks up for a token id)."""
    gg = import_gguf()
    reader = gg.GGUFReader(str(path))
    t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if t is None:
        raise InputError(f"{path} has no token_embd.weight")
    values: np.ndarray = gg.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    out: np.ndarray = values.reshape(-1, int(t.shape[0]))
    return out


def prompt_embeddings(token_embd: np.ndarray, prompt: Prompt, visual: np.ndarray) -> np.ndarray:
    """``[T, hidden]`` float32: token embeddings with the image positions replaced by the visual tokens (LLaVA)."""
    ids = prompt.input_ids[0].numpy()
    if int(ids.max()) >= token_embd.shape[0]:
        raise InputError(f"token id {int(ids.max())} is outside the GGUF's vocabulary ({token_embd.shape[0]})")
    emb: np.ndarray = token_embd[ids].copy()
    mask = ids == prompt.image_token_id
    vis = np.asarray(visual, dtype=np.float32).reshape(-1, token_embd.shape[1])
    if int(mask.sum()) != vis.shape[0]:
        raise InputError(f"{int(mask.sum())} image positions but {vis.shape[0]} visual tokens")
    emb[mask] = vis
    return emb


class GgufBackbone:
    """A GGUF model on llama.cpp; :meth:`generate` runs greedy decoding from prompt embeddings."""

    def __init__(self, path: Path, *, n_ctx: int, threads: int = 0, gpu_layers: int = 0) -> None:
        lc = _llama_cpp()
        self.path = Path(path)
        self._lc = lc
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": n_ctx, "logits_all": False, "verbose": False,
                                  "n_gpu_layers": gpu_layers}
        if threads:
            kwargs["n_threads"] = threads
        try:
            self.llm = lc.Llama(str(self.path), **kwargs)
        except ValueError as exc:
            raise DeviceRuntimeError(f"llama.cpp cannot load {self.path}: {exc}") from exc
        self.n_embd = int(self.llm.n_embd())
        self.n_vocab = int(self.llm.n_vocab())

    def _decode(self, *, embd: np.ndarray | None = None, token: int | None = None, pos: int) -> np.ndarray:
        lc = self._lc
        n = 1 if embd is None else int(embd.shape[0])
        batch = lc.llama_batch_init(n, self.n_embd if embd is not None else 0, 1)
        try:
            batch.n_tokens = n
            if embd is not None:
                data = np.ascontiguousarray(embd, dtype=np.float32)
                ctypes.memmove(batch.embd, data.ctypes.data, data.nbytes)
            else:
                batch.token[0] = int(token or 0)
            for i in range(n):
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if i == n - 1 else 0
            rc = lc.llama_decode(self.llm.ctx, batch)
            if rc != 0:
                raise DeviceRuntimeError(f"llama_decode failed with {rc} at position {pos} ({n} positions)")
            ptr = lc.llama_get_logits_ith(self.llm.ctx, n - 1)
            return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        finally:
            lc.llama_batch_free(batch)

    def generate(self, embeds: np.ndarray, *, max_new_tokens: int, eos_ids: Sequence[int] = ()) -> Generation:
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise InputError(f"prompt embeddings {list(embeds.shape)} do not match the GGUF's hidden size {self.n_embd}")
        if not np.isfinite(embeds).all():
            raise InputError("the prompt embeddings contain non-finite values")
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self.llm.ctx), True)
        eos = {int(e) for e in eos_ids}
        t0 = time.perf_counter()
        logits = self._decode(embd=embeds, pos=0)
        t1 = time.perf_counter()
        tokens: list[int] = []
        pos = int(embeds.shape[0])
        stopped = "max_new_tokens"
        while True:
            nxt = int(np.argmax(logits))
            tokens.append(nxt)
            if nxt in eos:
                stopped = "eos"
                break
            if len(tokens) >= max_new_tokens:
                break
            logits = self._decode(token=nxt, pos=pos)
            pos += 1
        t2 = time.perf_counter()
        return Generation(tuple(tokens), int(embeds.shape[0]), t1 - t0, t2 - t1, stopped)

    def close(self) -> None:
        self.llm.close()
