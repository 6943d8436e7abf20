"""Tiny random-weight GGUF models of each supported architecture (F32, seeded), and a
float64 numpy forward pass written from the architectures' definitions, for tests."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import gguf
import numpy as np


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
    """Write cfg's model to path; returns the tensors written. vocab: add a placeholder
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
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


# ---------------------------------------------------------------- reference

def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def yarn_frequencies(d: int, base: float, orig_ctx: int, factor: float, ext_factor: float = 1.0,
                     attn_factor: Optional[float] = None, beta_fast: float = 32.0, beta_slow: float = 1.0):
    """YaRN (Peng et al. 2023) as Hugging Face transformers defines it (_compute_yarn_parameters,
    with llama.cpp's ext_factor weighting the extrapolated share): per-pair inverse
    frequencies (d/2,) and the factor on cos and sin (attn_factor, else 0.1 ln(factor) + 1)."""
    def pair_for_turns(turns):  # pair whose wavelength 2 pi base^(2i/d) fits `turns` times in orig_ctx
        return d * math.log(orig_ctx / (turns * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(pair_for_turns(beta_fast)), 0)
    high = min(math.ceil(pair_for_turns(beta_slow)), d - 1)
    ramp = np.clip((np.arange(d // 2) - low) / max(high - low, 0.001), 0.0, 1.0)  # 0: keep, 1: interpolate
    keep = (1.0 - ramp) * ext_factor
    extrapolated = base ** (-2.0 * np.arange(d // 2) / d)
    inv_freq = extrapolated / factor * (1.0 - keep) + extrapolated * keep
    if attn_factor is not None:
        mscale = attn_factor
    else:
        mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 and ext_factor != 0 else 1.0
    return inv_freq, mscale


def _rope(x, pos, base, neox, yarn=None):
    """x (n_heads, head_dim) at position pos, all dims rotated. yarn: (inv_freq, mscale) or None."""
    d = x.shape[-1]
    i = np.arange(d // 2)
    inv_freq, mscale = yarn if yarn is not None else (base ** (-2.0 * i / d), 1.0)
    theta = pos * inv_freq
    c, s = np.cos(theta) * mscale, np.sin(theta) * mscale
    out = x.copy()
    a, b = (i, i + d // 2) if neox else (2 * i, 2 * i + 1)
    out[:, a] = x[:, a] * c - x[:, b] * s
    out[:, b] = x[:, a] * s + x[:, b] * c
    return out


def reference_logits(cfg: TinyConfig, t: dict, ids) -> np.ndarray:
    """(len(ids), n_vocab) float64 logits of the whole sequence from position 0."""
    T = {k: v.astype(np.float64) for k, v in t.items()}
    gemma = cfg.arch == "gemma3"
    neox = cfg.arch in ("qwen2", "gemma3")
    n, hd, group = len(ids), cfg.head_dim, cfg.n_head // cfg.n_head_kv
    x = T["token_embd.weight"][np.asarray(ids)]
    if gemma:
        x = x * math.sqrt(cfg.n_embd)
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        sliding = gemma and (il + 1) % 6 != 0
        base = 10000.0 if sliding else cfg.rope_base
        yarn = None
        if cfg.yarn is not None and not sliding:  # gemma3's sliding layers are not scaled
            orig = cfg.yarn.original_context_length or cfg.context_length
            yarn = yarn_frequencies(hd, base, orig, cfg.yarn.factor, **cfg.yarn.settings())
        h = _rms(x, T[p + "attn_norm.weight"], cfg.eps)
        q, k, v = h @ T[p + "attn_q.weight"].T, h @ T[p + "attn_k.weight"].T, h @ T[p + "attn_v.weight"].T
        if cfg.arch == "qwen2":
            q, k, v = q + T[p + "attn_q.bias"], k + T[p + "attn_k.bias"], v + T[p + "attn_v.bias"]
        q = q.reshape(n, cfg.n_head, hd)
        k = k.reshape(n, cfg.n_head_kv, hd)
        v = v.reshape(n, cfg.n_head_kv, hd)
        if gemma:
            q = _rms(q, T[p + "attn_q_norm.weight"], cfg.eps)
            k = _rms(k, T[p + "attn_k_norm.weight"], cfg.eps)
        q = np.stack([_rope(q[i], i, base, neox, yarn) for i in range(n)])
        k = np.stack([_rope(k[i], i, base, neox, yarn) for i in range(n)])
        att = np.zeros((n, cfg.n_head, hd))
        for i in range(n):
            lo = max(0, i - cfg.n_swa + 1) if sliding else 0
            for hh in range(cfg.n_head):
                s = k[lo:i + 1, hh // group] @ q[i, hh] / math.sqrt(hd)
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[i, hh] = pr @ v[lo:i + 1, hh // group]
        o = att.reshape(n, -1) @ T[p + "attn_output.weight"].T
        if gemma:
            o = _rms(o, T[p + "post_attention_norm.weight"], cfg.eps)
        x = x + o
        h = _rms(x, T[p + "ffn_norm.weight"], cfg.eps)
        g, u = h @ T[p + "ffn_gate.weight"].T, h @ T[p + "ffn_up.weight"].T
        if gemma:
            act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        else:
            act = g / (1 + np.exp(-g))
        f = (act * u) @ T[p + "ffn_down.weight"].T
        if gemma:
            f = _rms(f, T[p + "post_ffw_norm.weight"], cfg.eps)
        x = x + f
    x = _rms(x, T["output_norm.weight"], cfg.eps)
    head = T.get("output.weight", T["token_embd.weight"])
    return x @ head.T
