"""Converting a Hugging Face model folder (llama, qwen2, gemma3) to GGUF.

Reads config.json, the safetensors weights (one file or an index of shards,
through the `safetensors` package, tensor by tensor) and the tokenizer
(tokenizer.json for byte-level BPE, tokenizer.model for SentencePiece), and
writes what llama.cpp's loader expects:

- tensor names in GGUF's scheme (blk.N.attn_q.weight, ...);
- llama's Q and K rows reordered from Hugging Face's rotate-half layout to the
  interleaved pairs that llama.cpp's llama rotates (qwen2 and gemma3 rotate
  halves in both, so they stay as they are);
- gemma3's norms as 1 + weight (Hugging Face's Gemma norm multiplies by 1 + w);
- hyperparameters under {arch}.*, the tokenizer under tokenizer.ggml.*, the chat
  template under tokenizer.chat_template;
- config.json's rope_scaling as llama.cpp reads it: linear and YaRN as
  {arch}.rope.scaling.* metadata, Llama 3.1's "llama3" as a rope_freqs.weight
  tensor of per-pair frequency divisors (llama.cpp has no "llama3" scaling type).

Matrices are written as F16 (or F32/BF16) and quantized afterwards by
edgesdk.quantize when a quantized type is asked for. Every file is read with
bounds: a config or tokenizer file larger than its cap is rejected.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from . import gguf, kernels
from .errors import ConversionError, MissingDependencyError, UnsupportedModelError
from .gguf_writer import GGUFWriter, MetadataEntry, TensorEntry, entry

log = logging.getLogger("edgesdk")

MAX_JSON_BYTES = 64 << 20        # tokenizer.json of a 256k vocabulary is ~35 MB
FLOAT_OUTPUT_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
DEFAULT_OUTPUT_TYPE = "f16"
# llama.cpp's token types (tokenizer.ggml.token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# config.json rope_scaling types we convert, and the keys each may carry besides its type
# (another key would change the math in a way the GGUF cannot state).
ROPE_SCALING_KEYS = {
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {"factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "truncate"},
}
REFUSED_ROPE_SCALINGS = {
    "dynamic": "dynamic NTK scaling recomputes the frequencies as the sequence grows; GGUF has no way to say so",
    "longrope": "LongRoPE's short and long factor tables are read by llama.cpp only for phi3",
}

# Hugging Face model_type -> GGUF architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3": "gemma3"}

# Byte-level BPE pre-tokenizers, recognised by their split regex (tokenizer.json's
# pre_tokenizer), named as llama.cpp names them (tokenizer.ggml.pre).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}
# SentencePiece's mark for a space, and its byte tokens (byte-fallback vocabularies).
SPACE_MARK = "\u2581"
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


@dataclass(frozen=True)
class ConvertProgress:
    """Tensors written so far of `total`, and the one being written."""
    done: int
    total: int
    tensor: str


# ------------------------------------------------------------------- reading

def _read_json(path: str, what: str) -> Any:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ConversionError(f"{what} {path}: {exc.strerror}") from None
    if size > MAX_JSON_BYTES:
        raise ConversionError(f"{what} {path} is {size} bytes; at most {MAX_JSON_BYTES} are read")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{what} {path} is not valid JSON: {exc}") from None


def _need(config: Dict[str, Any], key: str, kind=int, where: str = "config.json") -> Any:
    if key not in config:
        raise ConversionError(f"{where} has no {key!r}")
    value = config[key]
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConversionError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0):
        raise ConversionError(f"{where}: {key!r} must be a positive number, got {value!r}")
    return kind(value)


class Weights:
    """The folder's safetensors tensors by name, read lazily with the safetensors package."""

    def __init__(self, folder: str):
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError:
            raise MissingDependencyError("converting needs the safetensors package: pip install 'edgesdk[convert]'") \
                from None
        self._error = SafetensorError
        index_path = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index_path):
            weight_map = _read_json(index_path, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(f"{index_path} has no 'weight_map' object")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not files:
            raise ConversionError(f"{folder} has no .safetensors weights")
        self._where: Dict[str, Any] = {}
        self._handles = []
        for name in files:
            path = os.path.join(folder, name)
            if os.path.basename(name) != name or not os.path.isfile(path):
                raise ConversionError(f"weight file {name!r} named by the index is not in {folder}")
            try:
                handle = safe_open(path, framework="numpy")
            except (self._error, OSError, ValueError) as exc:
                raise ConversionError(f"{path} is not a readable safetensors file: {exc}") from None
            self._handles.append(handle)
            for key in handle.keys():
                self._where[key] = handle

    def names(self) -> List[str]:
        return list(self._where)

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (BF16 and F16 widened exactly)."""
        if name not in self._where:
            raise ConversionError(f"the weights have no tensor {name!r}")
        try:
            arr = self._where[name].get_tensor(name)
        except (self._error, OSError, ValueError, TypeError) as exc:
            raise ConversionError(f"tensor {name!r} cannot be read: {exc}") from None
        if arr.dtype.kind not in "fV" and str(arr.dtype) != "bfloat16":
            raise ConversionError(f"tensor {name!r} has dtype {arr.dtype}, not a float type")
        return np.ascontiguousarray(arr.astype(np.float32))


# -------------------------------------------------------------- architecture

@dataclass(frozen=True, eq=False)
class RopeScaling:
    """config.json's rope_scaling as the GGUF carries it: `metadata` (key after "{arch}.rope." ->
    value) and, for llama3, `freq_factors`, the (head_dim/2,) divisors of each pair's frequency
    written as rope_freqs.weight."""
    kind: str = "none"
    metadata: Tuple[Tuple[str, Any], ...] = ()
    freq_factors: Optional[np.ndarray] = None


def llama3_freq_factors(head_dim: int, base: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, n_ctx_orig: int) -> np.ndarray:
    """Llama 3.1's RoPE scaling as divisors of each pair's frequency (head_dim/2,) float32: a pair
    whose wavelength is under n_ctx_orig / high_freq_factor keeps its frequency (1), one over
    n_ctx_orig / low_freq_factor has it divided by factor, and between the two the inverse
    divisor moves linearly in n_ctx_orig / wavelength from 1/factor to 1."""
    wavelength = 2.0 * math.pi * base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = np.clip((n_ctx_orig / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor), 0.0, 1.0)
    return (1.0 / ((1.0 - smooth) / factor + smooth)).astype(np.float32)


def read_rope_scaling(text: Dict[str, Any], arch: str, head_dim: int, rope_base: float, n_ctx: int) -> RopeScaling:
    """config.json's rope_scaling, checked, as GGUF metadata and tensors."""
    scaling = text.get("rope_scaling")
    if scaling is None:
        return RopeScaling()
    where = "config.json rope_scaling"
    if not isinstance(scaling, dict):
        raise ConversionError(f"{where} must be an object or null, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":   # transformers' name for plain RoPE
        return RopeScaling()
    if kind in REFUSED_ROPE_SCALINGS:
        raise UnsupportedModelError(f"{where} type {kind!r} cannot be converted: {REFUSED_ROPE_SCALINGS[kind]}")
    if kind not in ROPE_SCALING_KEYS:
        raise UnsupportedModelError(f"{where} type {kind!r} is not one we convert "
                                    f"(converted: {', '.join(ROPE_SCALING_KEYS)})")
    if arch == "gemma3" and kind != "linear":
        raise UnsupportedModelError(f"gemma3 {where} type {kind!r}: only linear scaling is converted")
    if kind == "llama3" and arch != "llama":
        raise UnsupportedModelError(f"{arch} {where} type 'llama3': llama.cpp reads the rope_freqs tensor it "
                                    f"needs only for llama")
    given = {k: v for k, v in scaling.items() if v is not None and k not in ("type", "rope_type")}
    unknown = sorted(set(given) - ROPE_SCALING_KEYS[kind])
    if unknown:
        raise UnsupportedModelError(f"{where} ({kind}) has {', '.join(map(repr, unknown))}, which we do not convert")
    factor = _need(given, "factor", float, where)
    if kind == "linear":
        return RopeScaling(kind, (("scaling.type", "linear"), ("scaling.factor", factor)))
    if kind == "llama3":
        low, high = _need(given, "low_freq_factor", float, where), _need(given, "high_freq_factor", float, where)
        if not high > low:
            raise ConversionError(f"{where}: high_freq_factor {high} must exceed low_freq_factor {low}")
        n_ctx_orig = _need(given, "original_max_position_embeddings", int, where)
        return RopeScaling(kind, freq_factors=llama3_freq_factors(head_dim, rope_base, factor, low, high, n_ctx_orig))
    # yarn. The original context is rope_scaling's, else max_position_embeddings (transformers and
    # llama.cpp's converter read it so); the factor is the config's as written.
    if given.get("truncate", True) is not True:
        raise UnsupportedModelError(f"{where} (yarn) truncate {given['truncate']!r}: llama.cpp and our engine "
                                    f"round the ends of YaRN's ramp to whole pairs")
    n_ctx_orig = _need(given, "original_max_position_embeddings", int, where) \
        if "original_max_position_embeddings" in given else n_ctx
    metadata = [("scaling.type", "yarn"), ("scaling.factor", factor), ("scaling.original_context_length", n_ctx_orig)]
    # transformers' attention_factor replaces YaRN's 0.1 ln(factor) + 1 on cos and sin; our
    # engine reads it as yarn_attn_factor. llama.cpp (0.3.36) reads that key only for grok and
    # multiplies its own attention factor by 0.1 ln(factor) + 1, so for a llama or qwen2 file
    # with an attention_factor it scales attention differently from transformers and from us.
    for hf_key, gguf_key in (("attention_factor", "yarn_attn_factor"), ("beta_fast", "yarn_beta_fast"),
                             ("beta_slow", "yarn_beta_slow")):
        if hf_key in given:
            metadata.append((f"scaling.{gguf_key}", _need(given, hf_key, float, where)))
    return RopeScaling(kind, tuple(metadata))


@dataclass(frozen=True)
class Shape:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    eps: float
    rope_base: float
    n_ctx: int
    tied: bool
    rope_scaling: RopeScaling = RopeScaling()


def read_shape(config: Dict[str, Any]) -> Tuple[Shape, Dict[str, Any]]:
    """The hyperparameters and the text config they come from (gemma3 nests it)."""
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(f"config.json model_type {model_type!r} cannot be converted; supported: "
                                    f"{', '.join(sorted(ARCHITECTURES))}")
    arch = ARCHITECTURES[model_type]
    text = config.get("text_config", config) if model_type == "gemma3" else config
    if not isinstance(text, dict):
        raise ConversionError("config.json 'text_config' must be an object")
    n_head = _need(text, "num_attention_heads")
    n_embd = _need(text, "hidden_size")
    head_dim = text.get("head_dim") or n_embd // n_head
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ConversionError(f"config.json: head_dim {head_dim!r} must be a positive even integer")
    n_head_kv = text.get("num_key_value_heads", n_head)
    if not isinstance(n_head_kv, int) or n_head_kv <= 0 or n_head % n_head_kv:
        raise ConversionError(f"config.json: num_key_value_heads {n_head_kv!r} must divide "
                              f"num_attention_heads {n_head}")
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", arch == "gemma3")))
    rope_base = _need(text, "rope_theta", float) if "rope_theta" in text else 10000.0
    n_ctx = _need(text, "max_position_embeddings")
    shape = Shape(arch=arch, n_vocab=_need(text, "vocab_size"), n_embd=n_embd,
                  n_layer=_need(text, "num_hidden_layers"), n_ff=_need(text, "intermediate_size"),
                  n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
                  eps=_need(text, "rms_norm_eps", float), rope_base=rope_base, n_ctx=n_ctx, tied=tied,
                  rope_scaling=read_rope_scaling(text, arch, head_dim, rope_base, n_ctx))
    if arch == "gemma3":
        scalar = text.get("query_pre_attn_scalar", head_dim)
        if scalar != head_dim:
            raise UnsupportedModelError(f"gemma3 query_pre_attn_scalar {scalar} differs from head_dim {head_dim}; "
                                        f"llama.cpp scales attention by 1/sqrt(head_dim)")
        pattern = text.get("sliding_window_pattern", 6)
        if pattern != 6:
            raise UnsupportedModelError(f"gemma3 sliding_window_pattern {pattern} (llama.cpp assumes 6)")
        local_base = text.get("rope_local_base_freq", 10000.0)
        if local_base != 10000.0:
            raise UnsupportedModelError(f"gemma3 rope_local_base_freq {local_base} (llama.cpp assumes 10000)")
    return shape, text


def _metadata(shape: Shape, text: Dict[str, Any], name: str) -> List[MetadataEntry]:
    a = shape.arch
    values: Dict[str, Any] = {
        "general.architecture": a, "general.name": name,
        f"{a}.context_length": shape.n_ctx, f"{a}.embedding_length": shape.n_embd,
        f"{a}.block_count": shape.n_layer, f"{a}.feed_forward_length": shape.n_ff,
        f"{a}.attention.head_count": shape.n_head, f"{a}.attention.head_count_kv": shape.n_head_kv,
        f"{a}.attention.key_length": shape.head_dim, f"{a}.attention.value_length": shape.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": shape.eps, f"{a}.rope.freq_base": shape.rope_base,
    }
    if a == "llama":
        values[f"{a}.rope.dimension_count"] = shape.head_dim
        values[f"{a}.vocab_size"] = shape.n_vocab
    if a == "gemma3":
        window = text.get("sliding_window")
        if not isinstance(window, int) or window <= 0:
            raise ConversionError(f"config.json: gemma3 needs a positive integer 'sliding_window', got {window!r}")
        values[f"{a}.attention.sliding_window"] = window
    for key, value in shape.rope_scaling.metadata:
        values[f"{a}.rope.{key}"] = value
    values["general.file_type"] = 1
    return [entry(k, v) for k, v in values.items()]


def _permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head from Hugging Face's (first half, second half) rotation layout to
    llama.cpp llama's interleaved pairs: row i of the first half goes to 2i, of the second to 2i + 1."""
    rows, cols = w.shape
    head = rows // n_heads
    return w.reshape(n_heads, 2, head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def tensor_plan(shape: Shape, weights: Weights) -> List[Tuple[str, str, Callable[[np.ndarray], np.ndarray]]]:
    """(GGUF name, Hugging Face name, transform) for every tensor written, in GGUF order."""
    names = set(weights.names())
    prefix = "model."
    if shape.arch == "gemma3" and "model.embed_tokens.weight" not in names:
        prefix = "language_model.model."   # Gemma3ForConditionalGeneration's text tower
    keep = lambda w: w  # noqa: E731
    norm = (lambda w: w + 1.0) if shape.arch == "gemma3" else keep
    plan = [("token_embd.weight", prefix + "embed_tokens.weight", keep)]
    for il in range(shape.n_layer):
        hf, blk = f"{prefix}layers.{il}.", f"blk.{il}."
        plan += [(blk + "attn_norm.weight", hf + "input_layernorm.weight", norm)]
        q_fix = (lambda w: _permute_rotary(w, shape.n_head)) if shape.arch == "llama" else keep
        k_fix = (lambda w: _permute_rotary(w, shape.n_head_kv)) if shape.arch == "llama" else keep
        plan += [(blk + "attn_q.weight", hf + "self_attn.q_proj.weight", q_fix),
                 (blk + "attn_k.weight", hf + "self_attn.k_proj.weight", k_fix),
                 (blk + "attn_v.weight", hf + "self_attn.v_proj.weight", keep),
                 (blk + "attn_output.weight", hf + "self_attn.o_proj.weight", keep)]
        if shape.arch == "qwen2":
            plan += [(blk + f"attn_{p}.bias", hf + f"self_attn.{p}_proj.bias", keep) for p in "qkv"]
        if shape.arch == "gemma3":
            plan += [(blk + "attn_q_norm.weight", hf + "self_attn.q_norm.weight", norm),
                     (blk + "attn_k_norm.weight", hf + "self_attn.k_norm.weight", norm),
                     (blk + "post_attention_norm.weight", hf + "post_attention_layernorm.weight", norm),
                     (blk + "ffn_norm.weight", hf + "pre_feedforward_layernorm.weight", norm),
                     (blk + "post_ffw_norm.weight", hf + "post_feedforward_layernorm.weight", norm)]
        else:
            plan += [(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", keep)]
        plan += [(blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight", keep),
                 (blk + "ffn_up.weight", hf + "mlp.up_proj.weight", keep),
                 (blk + "ffn_down.weight", hf + "mlp.down_proj.weight", keep)]
    plan.append(("output_norm.weight", prefix + "norm.weight", norm))
    head = "lm_head.weight" if prefix == "model." else "language_model.lm_head.weight"
    if not shape.tied and head in names:
        plan.append(("output.weight", head, keep))
    elif not shape.tied:
        raise ConversionError(f"tie_word_embeddings is false but the weights have no {head!r}")
    missing = [hf for _, hf, _ in plan if hf not in names]
    if missing:
        raise ConversionError(f"the weights have no {missing[0]!r}" +
                              (f" (and {len(missing) - 1} more tensors the config implies)" if len(missing) > 1 else ""))
    return plan


def _expected_shape(shape: Shape, gguf_name: str) -> Tuple[int, ...]:
    """The numpy shape (rows, cols) or (n,) a tensor must have."""
    E, q, kv = shape.n_embd, shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    role = gguf_name.split(".")[-2] if gguf_name.startswith("blk.") else gguf_name.split(".")[0]
    return {"token_embd": (shape.n_vocab, E), "output": (shape.n_vocab, E), "output_norm": (E,),
            "attn_norm": (E,), "ffn_norm": (E,), "post_attention_norm": (E,), "post_ffw_norm": (E,),
            "attn_q_norm": (shape.head_dim,), "attn_k_norm": (shape.head_dim,),
            "attn_q": (q, E) if gguf_name.endswith("weight") else (q,),
            "attn_k": (kv, E) if gguf_name.endswith("weight") else (kv,),
            "attn_v": (kv, E) if gguf_name.endswith("weight") else (kv,),
            "attn_output": (E, q), "ffn_gate": (shape.n_ff, E), "ffn_up": (shape.n_ff, E),
            "ffn_down": (E, shape.n_ff)}[role]


# ----------------------------------------------------------------- tokenizer

def _added_tokens(tok_json: Dict[str, Any]) -> Dict[int, Tuple[str, bool]]:
    added = {}
    for item in tok_json.get("added_tokens") or []:
        if not isinstance(item, dict) or not isinstance(item.get("id"), int) or not isinstance(item.get("content"), str):
            raise ConversionError("tokenizer.json: an added_tokens entry lacks an integer 'id' or a 'content'")
        added[item["id"]] = (item["content"], bool(item.get("special")))
    return added


def _bpe_pre(pre_tokenizer: Any) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, from tokenizer.json's description."""
    if not isinstance(pre_tokenizer, dict):
        raise ConversionError("tokenizer.json has no pre_tokenizer: a byte-level BPE needs one")
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_PRE:
            return SPLIT_PRE[pattern]
    raise UnsupportedModelError(f"tokenizer.json pre-tokenizer {json.dumps(pre_tokenizer)[:300]} is not one we "
                                f"recognise (GPT-2 byte level, SmolLM digits, llama-3 or qwen2 split)")


def _special_ids(folder: str, config: Dict[str, Any], token_ids: Dict[str, int]) -> Dict[str, Any]:
    """BOS/EOS/PAD/UNK ids and the add-BOS flag from tokenizer_config.json and config.json."""
    path = os.path.join(folder, "tokenizer_config.json")
    tok_config = _read_json(path, "tokenizer config") if os.path.exists(path) else {}
    out: Dict[str, Any] = {}
    for kind, key in (("bos", "bos_token"), ("eos", "eos_token"), ("pad", "pad_token"), ("unk", "unk_token")):
        value = tok_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in token_ids:
            out[kind] = token_ids[value]
        elif isinstance(config.get(f"{key}_id"), int):
            out[kind] = config[f"{key}_id"]
    out["add_bos"] = bool(tok_config.get("add_bos_token", False))
    template = tok_config.get("chat_template")
    if isinstance(template, list):   # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja = os.path.join(folder, "chat_template.jinja")
    if template is None and os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            template = f.read(MAX_JSON_BYTES)
    if isinstance(template, str):
        out["chat_template"] = template
    return out


def _pad_vocab(tokens: List[str], types: List[int], n_vocab: int, scores: Optional[List[float]] = None) -> None:
    if len(tokens) > n_vocab:
        raise ConversionError(f"the tokenizer has {len(tokens)} tokens; config.json vocab_size is {n_vocab}")
    for i in range(len(tokens), n_vocab):   # rows of the embedding no token uses
        tokens.append(f"[PAD{i}]")
        types.append(TOKEN_UNUSED)
        if scores is not None:
            scores.append(-1000.0)


def _vocab_tokens(model: Dict[str, Any], tok: Dict[str, Any], n_vocab: int,
                  normal_type: Callable[[str], int] = lambda text: TOKEN_NORMAL) -> Tuple[List[str], List[int]]:
    """tokenizer.json's vocabulary and added tokens as (tokens, token types) by id, padded to
    n_vocab; normal_type gives a vocabulary (not added) token its type."""
    by_id: Dict[int, str] = {}
    for text, i in model["vocab"].items():
        if not isinstance(i, int) or not 0 <= i < n_vocab:
            raise ConversionError(f"tokenizer.json: token {text!r} has id {i!r}, outside the vocabulary of {n_vocab}")
        by_id[i] = text
    types_by_id = {i: normal_type(text) for i, text in by_id.items()}
    for i, (text, special) in _added_tokens(tok).items():
        if not 0 <= i < n_vocab:
            raise ConversionError(f"tokenizer.json: added token {text!r} has id {i}, outside the vocabulary")
        by_id[i] = text
        types_by_id[i] = TOKEN_CONTROL if special else TOKEN_USER_DEFINED
    size = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [types_by_id.get(i, TOKEN_UNUSED) for i in range(size)]
    _pad_vocab(tokens, types, n_vocab)
    return tokens, types


def _merge_pairs(model: Dict[str, Any]) -> List[Tuple[str, str]]:
    """tokenizer.json's merges, in rank order, as (left, right) (written "a b" or ["a", "b"])."""
    pairs = []
    for merge in model.get("merges") or []:
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ConversionError(f"tokenizer.json: merge {merge!r} is not a pair of tokens")
        pairs.append((pair[0], pair[1]))
    return pairs


def bpe_tokenizer(folder: str, config: Dict[str, Any], n_vocab: int) -> List[MetadataEntry]:
    tok = _read_json(os.path.join(folder, "tokenizer.json"), "tokenizer")
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedModelError(f"tokenizer.json model type {model.get('type')!r}: only BPE vocabularies are "
                                    f"converted from tokenizer.json")
    if model.get("byte_fallback"):
        return byte_fallback_tokenizer(folder, config, n_vocab, tok)
    tokens, types = _vocab_tokens(model, tok, n_vocab)
    merges = [" ".join(pair) for pair in _merge_pairs(model)]
    special = _special_ids(folder, config, {t: i for i, t in enumerate(tokens)})
    values = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _bpe_pre(tok.get("pre_tokenizer")),
              "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges}
    return [entry(k, v) for k, v in values.items()] + _special_entries(special)


def _steps(component: Any) -> List[Dict[str, Any]]:
    """A tokenizer.json normalizer or pre-tokenizer as its list of steps."""
    if component is None:
        return []
    if not isinstance(component, dict):
        raise ConversionError(f"tokenizer.json: {json.dumps(component)[:200]} is not a normalizer or pre-tokenizer")
    if component.get("type") == "Sequence":
        key = "normalizers" if "normalizers" in component else "pretokenizers"
        return list(component.get(key) or [])
    return [component]


def _space_prefix(tok: Dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer.json puts "▁" in front of the text (llama.cpp's
    add_space_prefix): spaces must become "▁" and nothing else may change the text, as llama.cpp's
    llama vocabulary does nothing else."""
    normalizer, pre = _steps(tok.get("normalizer")), _steps(tok.get("pre_tokenizer"))
    to_mark = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}
    prepend = {"type": "Prepend", "prepend": SPACE_MARK}
    if not pre and normalizer in ([prepend, to_mark], [to_mark]):   # Llama-2's tokenizer.json
        return len(normalizer) == 2
    if not normalizer and len(pre) == 1 and pre[0].get("type") == "Metaspace" \
            and pre[0].get("replacement") == SPACE_MARK and pre[0].get("split") is False \
            and pre[0].get("prepend_scheme") in ("first", "always", "never"):
        scheme = pre[0]["prepend_scheme"]
        if scheme != "never":
            # Metaspace adds no "▁" to a piece that starts with a space, and with "first" none
            # after a special token; llama.cpp (as SentencePiece) adds it to both.
            log.warning("tokenizer.json's Metaspace (prepend_scheme %r) marks no space before text that starts "
                        "with one%s; llama.cpp does, so such text tokenizes differently there", scheme,
                        " or follows a special token" if scheme == "first" else "")
        return scheme != "never"
    raise UnsupportedModelError(
        f"tokenizer.json normalizer {json.dumps(tok.get('normalizer'))[:200]} and pre-tokenizer "
        f"{json.dumps(tok.get('pre_tokenizer'))[:200]}: a byte-fallback BPE is converted only with spaces as "
        f"{SPACE_MARK!r} (Prepend + Replace normalizers, or a non-splitting Metaspace) and nothing else")


def byte_fallback_tokenizer(folder: str, config: Dict[str, Any], n_vocab: int,
                            tok: Dict[str, Any]) -> List[MetadataEntry]:
    """A SentencePiece-style BPE tokenizer.json (Llama-2, Mistral: "▁" for spaces, <0xNN> byte
    tokens for characters outside the vocabulary) as llama.cpp's llama vocabulary. That merges
    adjacent pieces highest score first; tokenizers applies merge rules lowest rank first. A
    token's score is therefore minus the rank of the first merge that makes it (tokens no merge
    makes: below every merge), so that llama.cpp merges in the order of the rules."""
    model = tok["model"]
    for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise UnsupportedModelError(f"tokenizer.json BPE {key} {model[key]!r} has no llama.cpp equivalent")
    if model.get("ignore_merges"):
        raise UnsupportedModelError("tokenizer.json BPE ignore_merges (whole words looked up first) has no "
                                    "llama.cpp equivalent for a byte-fallback vocabulary")
    add_space_prefix = _space_prefix(tok)
    vocab = model["vocab"]
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise ConversionError(f"tokenizer.json is byte_fallback but its vocabulary lacks {len(missing)} byte tokens "
                              f"(first {missing[0]}); llama.cpp needs all 256")
    tokens, types = _vocab_tokens(model, tok, n_vocab,
                                  lambda text: TOKEN_BYTE if BYTE_TOKEN.fullmatch(text) else TOKEN_NORMAL)
    ids = {t: i for i, t in enumerate(tokens)}
    unk = model.get("unk_token")
    if unk in ids:   # an added special token too, in Llama-2's file: SentencePiece's unknown type wins
        types[ids[unk]] = TOKEN_UNKNOWN
    pairs = _merge_pairs(model)
    first_rank: Dict[str, int] = {}
    for rank, (left, right) in enumerate(pairs):
        first_rank.setdefault(left + right, rank)
    scores = [-float(first_rank.get(t, len(pairs))) for t in tokens]
    special = _special_ids(folder, config, ids)
    if "unk" not in special and unk in ids:
        special["unk"] = ids[unk]
    values = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32), "tokenizer.ggml.token_type": types,
              "tokenizer.ggml.add_space_prefix": add_space_prefix}
    return [entry(k, v) for k, v in values.items()] + _special_entries(special)


def _special_entries(special: Dict[str, Any]) -> List[MetadataEntry]:
    keys = {"bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id",
            "pad": "tokenizer.ggml.padding_token_id", "unk": "tokenizer.ggml.unknown_token_id"}
    out = [MetadataEntry(keys[k], gguf.T_UINT32, special[k]) for k in keys if k in special]
    out.append(MetadataEntry("tokenizer.ggml.add_bos_token", gguf.T_BOOL, special["add_bos"]))
    if "chat_template" in special:
        out.append(MetadataEntry("tokenizer.chat_template", gguf.T_STRING, special["chat_template"]))
    return out


def spm_tokenizer(folder: str, config: Dict[str, Any], n_vocab: int) -> List[MetadataEntry]:
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise MissingDependencyError("converting a tokenizer.model needs sentencepiece: pip install "
                                     "'edgesdk[convert]'") from None
    path = os.path.join(folder, "tokenizer.model")
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read(MAX_JSON_BYTES))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ConversionError(f"{path} is not a SentencePiece model: {exc}") from None
    piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    kinds = {piece.NORMAL: TOKEN_NORMAL, piece.UNKNOWN: TOKEN_UNKNOWN, piece.CONTROL: TOKEN_CONTROL,
             piece.USER_DEFINED: TOKEN_USER_DEFINED, piece.UNUSED: TOKEN_UNUSED, piece.BYTE: TOKEN_BYTE}
    tokens = [p.piece for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [kinds.get(p.type, TOKEN_NORMAL) for p in proto.pieces]
    tok_json = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tok_json):   # added tokens beyond the .model (gemma3's image tokens)
        for i, (text, special) in sorted(_added_tokens(_read_json(tok_json, "tokenizer")).items()):
            if i == len(tokens):
                tokens.append(text)
                scores.append(0.0)
                types.append(TOKEN_CONTROL if special else TOKEN_USER_DEFINED)
    _pad_vocab(tokens, types, n_vocab, scores)
    special = _special_ids(folder, config, {t: i for i, t in enumerate(tokens)})
    spec = proto.trainer_spec
    for kind, value in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id), ("pad", spec.pad_id)):
        if kind not in special and 0 <= value < n_vocab:
            special[kind] = value
    if not os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        special["add_bos"] = True   # SentencePiece's default
    values = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.scores": np.asarray(scores, dtype=np.float32), "tokenizer.ggml.token_type": types,
              "tokenizer.ggml.add_space_prefix": bool(proto.normalizer_spec.add_dummy_prefix)}
    return [entry(k, v) for k, v in values.items()] + _special_entries(special)


def tokenizer_metadata(folder: str, config: Dict[str, Any], n_vocab: int) -> List[MetadataEntry]:
    """tokenizer.ggml.* from tokenizer.model (SentencePiece) if present, else tokenizer.json (BPE)."""
    if os.path.exists(os.path.join(folder, "tokenizer.model")):
        return spm_tokenizer(folder, config, n_vocab)
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return bpe_tokenizer(folder, config, n_vocab)
    raise ConversionError(f"{folder} has neither tokenizer.json nor tokenizer.model")


# ------------------------------------------------------------------- convert

def convert_folder(folder: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                   out_type: str = DEFAULT_OUTPUT_TYPE, threads: int = 0, quantize_options=None,
                   progress: Optional[Callable[[ConvertProgress], None]] = None) -> str:
    """Write the model in `folder` to `out_path`; out_type: f32, f16, bf16 or a mix of
    edgesdk.quantize.MIXES (then quantize_options, if given, carries the rest)."""
    from . import quantize

    folder, out_path = os.fspath(folder), os.fspath(out_path)
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder} is not a folder")
    if out_type not in FLOAT_OUTPUT_TYPES and out_type not in quantize.MIXES:
        raise ConversionError(f"output type {out_type!r}: choose from {', '.join(list(FLOAT_OUTPUT_TYPES) + list(quantize.MIXES))}")
    config = _read_json(os.path.join(folder, "config.json"), "config")
    if not isinstance(config, dict):
        raise ConversionError("config.json must hold an object")
    shape, text = read_shape(config)
    weights = Weights(folder)
    plan = tensor_plan(shape, weights)
    metadata = _metadata(shape, text, os.path.basename(os.path.abspath(folder))) + \
        tokenizer_metadata(folder, config, shape.n_vocab)
    matrix_type = FLOAT_OUTPUT_TYPES.get(out_type, "F16")
    # Tensors the folder does not hold but the GGUF needs, computed from the config.
    computed = {}
    if shape.rope_scaling.freq_factors is not None:
        computed["rope_freqs.weight"] = shape.rope_scaling.freq_factors
    index = [TensorEntry(name, values.shape, gguf.GGML_TYPES_BY_NAME["F32"].type_id)
             for name, values in computed.items()]
    for gguf_name, hf_name, _ in plan:
        got, expected = weights.shape(hf_name), _expected_shape(shape, gguf_name)
        if got != expected:
            raise ConversionError(f"tensor {hf_name!r} has shape {got}; config.json implies {expected}")
        type_name = matrix_type if len(expected) == 2 else "F32"
        index.append(TensorEntry(gguf_name, tuple(reversed(expected)), gguf.GGML_TYPES_BY_NAME[type_name].type_id))
    if matrix_type == "F16":
        metadata = [m for m in metadata if m.key != "general.file_type"] + [entry("general.file_type", 1)]
    else:
        file_type = {"F32": 0, "BF16": 32}[matrix_type]
        metadata = [m for m in metadata if m.key != "general.file_type"] + [entry("general.file_type", file_type)]
    float_path = out_path
    if out_type in quantize.MIXES:
        fd, float_path = tempfile.mkstemp(prefix="." + os.path.basename(out_path) + ".", suffix=".f16.partial",
                                          dir=os.path.dirname(os.path.abspath(out_path)))
        os.close(fd)
    try:
        with GGUFWriter(float_path, metadata, index) as writer:
            for name, values in computed.items():
                writer.write(name, values)
            for n, ((gguf_name, hf_name, transform), info) in enumerate(zip(plan, index[len(computed):])):
                values = np.ascontiguousarray(transform(weights.get(hf_name)), dtype=np.float32)
                if not np.all(np.isfinite(values)):
                    raise ConversionError(f"tensor {hf_name!r} holds NaN or infinite values")
                type_name = gguf.GGML_TYPES[info.type_id].name
                raw = values if type_name == "F32" else kernels.quantize(type_name, values.reshape(-1))
                writer.write(gguf_name, raw)
                if progress is not None:
                    progress(ConvertProgress(n + 1, len(plan), gguf_name))
        if out_type in quantize.MIXES:
            options = quantize_options or quantize.QuantizeOptions()
            options.mix, options.threads = out_type, threads or options.threads
            quantize.quantize_file(float_path, out_path, options)
    finally:
        if float_path != out_path and os.path.exists(float_path):
            os.unlink(float_path)
    return out_path
