"""Tiny random-weight GGUF models of each supported architecture (F32, seeded), and their
float64 reference logits (the forward pass of tests/truth_forward.py, set up from the
architectures' definitions rather than from the file)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import gguf
import numpy as np

from truth_forward import ForwardConfig, forward_logits, plain_rope, yarn_frequencies


@dataclass
class YarnConfig:
    """YaRN RoPE scaling written as {arch}.rope.scaling.* metadata; None leaves a key out
    (the reader's default applies)."""
    factor: float = 4.0
    original_context_length: Optional[int] = 32
    ext_factor: Optional[float] = None
    attn_factor: Optional[float] = None
    beta_fast: Optional[float] = None
    beta_slow: Optional[float] = None
    orig_ctx_key: str = "original_context_length"  # or the older "orig_ctx_len"

    # llama.cpp's defaults for keys left out
    def settings(self) -> dict:
        return {"ext_factor": 1.0 if self.ext_factor is None else self.ext_factor,
                "attn_factor": self.attn_factor,
                "beta_fast": 32.0 if self.beta_fast is None else self.beta_fast,
                "beta_slow": 1.0 if self.beta_slow is None else self.beta_slow}


@dataclass
class TinyConfig:
    arch: str = "llama"
    n_vocab: int = 97
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 96
    rope_base: float = 10000.0
    n_swa: int = 5           # gemma3 only: tiny window so that tests cross it
    eps: float = 1e-5
    tied: bool = True
    context_length: int = 256
    yarn: Optional[YarnConfig] = None


def tiny_tensors(cfg: TinyConfig, seed: int = 7) -> dict:
    """name -> numpy array in numpy order (GGUF shape reversed)."""
    rng = np.random.default_rng(seed)
    qd, kd, E = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim, cfg.n_embd

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / math.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"token_embd.weight": (rng.standard_normal((cfg.n_vocab, E)) * 0.5).astype(np.float32),
         "output_norm.weight": norm(E)}
    if not cfg.tied:
        t["output.weight"] = mat(cfg.n_vocab, E)
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        t.update({p + "attn_norm.weight": norm(E), p + "attn_q.weight": mat(qd, E), p + "attn_k.weight": mat(kd, E),
                  p + "attn_v.weight": mat(kd, E), p + "attn_output.weight": mat(E, qd),
                  p + "ffn_norm.weight": norm(E), p + "ffn_gate.weight": mat(cfg.n_ff, E),
                  p + "ffn_up.weight": mat(cfg.n_ff, E), p + "ffn_down.weight": mat(E, cfg.n_ff)})
        if cfg.arch == "qwen2":
            t.update({p + "attn_q.bias": (0.2 * rng.standard_normal(qd)).astype(np.float32),
                      p + "attn_k.bias": (0.2 * rng.standard_normal(kd)).astype(np.float32),
                      p + "attn_v.bias": (0.2 * rng.standard_normal(kd)).astype(np.float32)})
        if cfg.arch == "gemma3":
            t.update({p + "attn_q_norm.weight": norm(cfg.head_dim), p + "attn_k_norm.weight": norm(cfg.head_dim),
                      p + "post_attention_norm.weight": norm(E), p + "post_ffw_norm.weight": norm(E)})
    return t


def write_tiny(path, cfg: TinyConfig, tensors: dict | None = None, arch_name: str | None = None,
               skip_meta: tuple = (), vocab: bool = False, override_meta: dict | None = None) -> dict:
    """Write cfg's model to path; returns the tensors written (float16 arrays are written as
    F16, ml_dtypes.bfloat16 ones as BF16, the rest as F32). vocab: add a placeholder
    vocabulary so that llama.cpp loads the file. override_meta: metadata values written in
    place of cfg's (a float is written as float32, an int as uint32, else as given to add_key_value)."""
    tensors = tiny_tensors(cfg) if tensors is None else tensors
    a = arch_name or cfg.arch
    w = gguf.GGUFWriter(str(path), a)
    meta = {
        f"{a}.embedding_length": cfg.n_embd, f"{a}.block_count": cfg.n_layer,
        f"{a}.feed_forward_length": cfg.n_ff, f"{a}.attention.head_count": cfg.n_head,
        f"{a}.attention.head_count_kv": cfg.n_head_kv, f"{a}.attention.key_length": cfg.head_dim,
        f"{a}.attention.value_length": cfg.head_dim, f"{a}.rope.freq_base": cfg.rope_base,
        f"{a}.attention.layer_norm_rms_epsilon": cfg.eps, f"{a}.context_length": cfg.context_length,
    }
    if vocab:
        # llama.cpp loads a model only with a vocabulary of n_vocab tokens: a SentencePiece one
        # with the byte token it looks up for "\n", the rest placeholders (tests feed token ids).
        tokens = ["<unk>", "<s>", "</s>", "<0x0A>"] + [f"t{i}" for i in range(4, cfg.n_vocab)]
        w.add_string("tokenizer.ggml.model", "llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * cfg.n_vocab)
        w.add_token_types([2, 3, 3, 6] + [1] * (cfg.n_vocab - 4))
    if cfg.yarn is not None:
        y, p = cfg.yarn, f"{a}.rope.scaling."
        w.add_string(p + "type", "yarn")
        meta[p + "factor"] = float(y.factor)
        if y.original_context_length is not None:
            meta[p + y.orig_ctx_key] = int(y.original_context_length)
        for name in ("ext_factor", "attn_factor", "beta_fast", "beta_slow"):
            if getattr(y, name) is not None:
                meta[p + "yarn_" + name] = float(getattr(y, name))
    if cfg.arch == "gemma3":
        meta[f"{a}.attention.sliding_window"] = cfg.n_swa
    meta.update(override_meta or {})
    for key, value in meta.items():
        if key in skip_meta:
            continue
        if isinstance(value, tuple):      # (value, gguf.GGUFValueType): written exactly so
            w.add_key_value(key, value[0], value[1])
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    for name, arr in tensors.items():
        if arr.dtype.name == "bfloat16":   # ml_dtypes' bfloat16: the gguf writer takes its bits
            w.add_tensor(name, arr.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


# ---------------------------------------------------------------- reference

def forward_config(cfg: TinyConfig) -> ForwardConfig:
    """The float64 forward's settings for a tiny model, from the architectures' definitions."""
    gemma = cfg.arch == "gemma3"
    hd = cfg.head_dim
    rope_global = plain_rope(hd, cfg.rope_base)
    if cfg.yarn is not None:  # gemma3's sliding layers are not scaled
        orig = cfg.yarn.original_context_length or cfg.context_length
        rope_global = yarn_frequencies(hd, cfg.rope_base, orig, cfg.yarn.factor, **cfg.yarn.settings())
    return ForwardConfig(
        arch=cfg.arch, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head, n_head_kv=cfg.n_head_kv,
        head_dim=hd, eps=cfg.eps, attn_scale=1.0 / math.sqrt(hd), embd_scale=math.sqrt(cfg.n_embd) if gemma else 1.0,
        rope_neox=cfg.arch in ("qwen2", "gemma3"), rope_global=rope_global, rope_local=plain_rope(hd, 10000.0),
        swa_pattern=6 if gemma else 0, n_swa=cfg.n_swa if gemma else 0)


def reference_logits(cfg: TinyConfig, t: dict, ids) -> np.ndarray:
    """(len(ids), n_vocab) float64 logits of the whole sequence from position 0."""
    return forward_logits(forward_config(cfg), {k: v.astype(np.float64) for k, v in t.items()}, ids)
