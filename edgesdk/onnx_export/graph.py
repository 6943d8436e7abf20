"""The decoder as an ONNX graph: llama, qwen2 and gemma3 from a GGUF file, weights in MatMulNBits form.

Two shapes of the same network (ExportOptions.static):

dynamic  inputs  input_ids int64 (1, S); past_key_values.{i}.key/.value (1, n_kv, P, head_dim)
                 logits_from int64 (1,): first row whose logits are computed (default 0, all rows)
         outputs logits float32 (1, S - logits_from, n_vocab); present.{i}.key/.value (1, n_kv, P + S, head_dim)
         Positions are P.. P+S-1; the causal (and sliding-window) mask is built in the graph.
         The names are onnxruntime-genai's, so its decoder runs the graph as it is.

static   inputs  input_ids int64 (1, C); position_ids int64 (1, C);
                 attention_bias float32 (1, 1, C, L + C) [and attention_bias_local for sliding layers];
                 past_key.{i}/past_value.{i} (1, n_kv, L, head_dim): the whole cache, L = n_ctx
         outputs logits float32 (1, C, n_vocab); new_key.{i}/new_value.{i} (1, n_kv, C, head_dim)
         Every shape is fixed (NPU compilers need that): the caller owns the cache, writes the
         chunk's new rows into it and says with the bias which of the L + C keys each query sees.

Attention is plain ops (MatMul, Softmax) on a float32 copy of the cache stored in kv_dtype; RMSNorm
and GELU are plain ops too, which ONNX Runtime fuses on its CPU provider and every provider
knows. Layers follow native/src/model.c step for step. A norm-style ("llama") RoPE rotates pairs
(2i, 2i + 1); the export reorders each head's q and k rows (and their biases and norms) so that
the pairs become (i, i + n_rot/2): q.k is unchanged by a permutation applied to both, and one
rotation form serves every architecture.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import gguf
from ..errors import UnsupportedModelError
from ..shape import ModelShape
from .rope import rope_tables
from .weights import FLOAT_TYPES, MAPPED_TYPES, NBitsMatrix, StackedMatrix, map_matrix, stackable

OPSET = 20                    # Gelu(approximate="tanh") is opset 20
MS_DOMAIN = "com.microsoft"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
KV_DTYPES = {"f16": np.float16, "f32": np.float32}
MASKED = -1.0e30
# Model metadata: which GGUF tensor rows each weight initializer holds (JSON), for checks and tools.
WEIGHT_ROWS_KEY = "edgesdk.weight_rows"              # additive bias of a key a query must not see (finite: no inf - inf)


@dataclass(frozen=True)
class ExportOptions:
    """What an export depends on besides the GGUF's bytes (all of it goes into the cache key)."""
    static: bool = False
    n_ctx: int = 4096         # dynamic: positions the RoPE tables cover; static: the cache length L
    chunk: int = 64           # static: tokens per run
    kv_dtype: str = "f16"
    # MatMulNBits accuracy_level per weight width: 0 computes in float32, 4 quantizes the
    # activations to int8 per block. On the CPU provider (benchmarks/RESULTS_onnx.md) int8 costs
    # 4-bit products 3-5x their KL against the float64 truth (the block minimum's product keeps
    # the exact input, so the quantization error no longer cancels as in llama.cpp's Q4_1 x Q8_1),
    # while float32 on 8-bit weights dequantizes the whole matrix every run (50x slower at M=1).
    accuracy_4bit: int = 0
    accuracy_8bit: int = 4
    # "plain": MatMul/Softmax on the cache; "gqa": com.microsoft.GroupQueryAttention (dynamic only)
    attention: str = "plain"


def permute_for_neox(n_heads: int, head_dim: int, n_rot: int) -> np.ndarray:
    """Row order that turns each head's (2i, 2i+1) rotary pairs into (i, i + n_rot/2)."""
    within = np.concatenate([np.arange(0, n_rot, 2), np.arange(1, n_rot, 2), np.arange(n_rot, head_dim)])
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).ravel()


class _Builder:
    """Nodes, initializers, inputs and outputs of one graph, with unique names."""

    def __init__(self):
        from onnx import TensorProto
        self.TensorProto = TensorProto
        self.nodes: List = []
        self.inits: List = []
        self.inputs: List = []
        self.outputs: List = []
        self._n = 0
        self._consts: Dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, inputs: Sequence[str], hint: Optional[str] = None, domain: str = "",
           n_out: int = 1, **attrs):
        from onnx import helper
        outs = [self.name(hint or op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.array(array, order="C", copy=False), name))
        return name

    def const(self, values, dtype=np.int64) -> str:
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name("const"), arr)
        return self._consts[key]

    def input(self, name: str, elem_type, shape) -> str:
        from onnx import helper
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type, shape) -> None:
        from onnx import helper
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))


class _Decoder:
    """Builds the graph of one checked model."""

    def __init__(self, f: gguf.GGUFFile, shape: ModelShape, options: ExportOptions):
        self.f, self.s, self.o = f, shape, options
        self.b = _Builder()
        self.T = self.b.TensorProto
        self.kv_elem = self.T.FLOAT16 if options.kv_dtype == "f16" else self.T.FLOAT
        self.group = shape.n_head // shape.n_head_kv
        self.hd = shape.head_dim_k
        self.neox_perm_q = permute_for_neox(shape.n_head, self.hd, shape.n_rot) if shape.rope_style == "norm" else None
        self.neox_perm_k = (permute_for_neox(shape.n_head_kv, self.hd, shape.n_rot)
                            if shape.rope_style == "norm" else None)
        self._matrices: Dict[str, dict] = {}
        # initializer base name -> [gguf tensor, first row, rows, rows permuted for RoPE]
        self.weight_rows: Dict[str, list] = {}

    # -- weights ---------------------------------------------------------------------

    def vector(self, name: str, perm: Optional[np.ndarray] = None) -> str:
        arr = np.asarray(self.f.tensor_array(name), dtype=np.float32)
        if perm is not None:
            arr = arr[perm]
        return self.b.init(name, arr)

    def _load(self, name: str, perm: Optional[np.ndarray] = None):
        """A GGUF matrix as float32 (N, K) or an NBitsMatrix, rows reordered by perm."""
        info = self.f.tensors[name]
        n_cols, n_rows = info.shape
        if info.type_name in FLOAT_TYPES:
            w = np.asarray(self.f.tensor_array(name), dtype=np.float32).reshape(n_rows, n_cols)
            return w if perm is None else w[perm]
        m = map_matrix(info.type_name, self.f.tensor_data(name), n_rows, n_cols, name)
        if perm is not None:
            m = NBitsMatrix(n_rows, n_cols, m.bits, m.block_size, m.zero_point, m.codes[perm], m.scales[perm],
                            None if m.mins is None else m.mins[perm])
        return m

    def _nbits_inits(self, base: str, parts: List[NBitsMatrix]) -> dict:
        """The initializers of matrices stacked by rows under one name (made once per name)."""
        if base not in self._matrices:
            st = StackedMatrix(tuple(parts))
            mins = st.mins()
            self._matrices[base] = {
                "m": st.head, "N": st.n_rows, "codes": self.b.init(base + ".codes", st.codes()),
                "scales": self.b.init(base + ".scales", st.scales()),
                "zero_points": self.b.init(base + ".zero_points", st.zero_points()),
                "mins": mins, "minsT": None if mins is None else self.b.init(base + ".minsT", np.ascontiguousarray(mins.T))}
        return self._matrices[base]

    def matmuls(self, x: str, specs: Sequence[tuple], stacked_name: Optional[str] = None) -> List[str]:
        """x (1, S, K) times each matrix's transpose, (1, S, N_i) each; matrices in MatMulNBits form
        that can share one product are stacked by rows (under stacked_name) and split after it."""
        b = self.b
        loaded = [(name, self._load(name, perm), perm is not None) for name, perm in specs]
        groups: List[list] = []
        for item in loaded:
            if (groups and isinstance(item[1], NBitsMatrix) and isinstance(groups[-1][0][1], NBitsMatrix)
                    and stackable(groups[-1][0][1], item[1])):
                groups[-1].append(item)
            else:
                groups.append([item])
        outs: List[str] = []
        for group in groups:
            name, first, _ = group[0]
            if not isinstance(first, NBitsMatrix):
                outs.append(b.op("MatMul", [x, b.init(name + ".T", np.ascontiguousarray(first.T))], "mm"))
                self.weight_rows[name + ".T"] = [[name, 0, first.shape[0], group[0][2]]]
                continue
            base = name if len(group) == 1 else f"{stacked_name}.{len(outs)}"
            e = self._nbits_inits(base, [m for _, m, _ in group])
            rows, row0 = [], 0
            for part_name, m, permuted in group:
                rows.append([part_name, row0, m.n_rows, permuted])
                row0 += m.n_rows
            self.weight_rows[base] = rows
            m = first
            y = b.op("MatMulNBits", [x, e["codes"], e["scales"], e["zero_points"]], "mmq", domain=MS_DOMAIN,
                     K=m.n_cols, N=e["N"], bits=m.bits, block_size=m.block_size,
                     accuracy_level=self.o.accuracy_4bit if m.bits == 4 else self.o.accuracy_8bit)
            if e["minsT"] is not None:
                # Each block's minimum times the sum of the input over that block.
                blocks = b.op("Reshape", [x, b.const([0, 0, m.k_blocks, m.block_size])], "blocks")
                sums = b.op("ReduceSum", [blocks, b.const([-1])], "block_sums", keepdims=0)
                y = b.op("Add", [y, b.op("MatMul", [sums, e["minsT"]], "mins")], "mmq_min")
            if len(group) == 1:
                outs.append(y)
            else:
                outs += b.op("Split", [y, b.const([r[2] for r in rows])], "part", axis=-1, n_out=len(group))
        return outs

    def matmul(self, x: str, name: str) -> str:
        return self.matmuls(x, [(name, None)])[0]

    def embed(self, ids: str) -> str:
        """Rows of token_embd.weight for ids (1, S): (1, S, n_embd), dequantized in the graph."""
        b = self.b
        loaded = self._load("token_embd.weight")
        if not isinstance(loaded, NBitsMatrix):
            return b.op("Gather", [b.init("token_embd.weight", loaded), ids], "embd", axis=0)
        e = self._nbits_inits("token_embd.weight", [loaded])
        self.weight_rows["token_embd.weight"] = [["token_embd.weight", 0, loaded.n_rows, False]]
        m: NBitsMatrix = e["m"]
        codes = b.op("Gather", [e["codes"], ids], "embd_codes", axis=0)         # (1, S, kb, blob)
        if m.bits == 4:
            low = b.op("BitwiseAnd", [codes, b.const(15, np.uint8)], "lo")
            high = b.op("BitShift", [codes, b.const(4, np.uint8)], "hi", direction="RIGHT")
            pair = b.op("Concat", [b.op("Unsqueeze", [low, b.const([-1])]),
                                   b.op("Unsqueeze", [high, b.const([-1])])], "pair", axis=-1)
            codes = b.op("Reshape", [pair, b.const([0, 0, m.k_blocks, m.block_size])], "embd_q")
        q = b.op("Sub", [b.op("Cast", [codes], to=self.T.FLOAT), b.const(float(m.zero_point), np.float32)], "q")
        scales = b.op("Gather", [e["scales"], ids], "embd_scales", axis=0)
        rows = b.op("Mul", [q, b.op("Unsqueeze", [scales, b.const([-1])])], "embd_w")
        if m.mins is not None:
            mins = b.op("Gather", [b.init("token_embd.weight.mins", e["mins"]), ids], "embd_mins", axis=0)
            rows = b.op("Add", [rows, b.op("Unsqueeze", [mins, b.const([-1])])], "embd_wm")
        return b.op("Reshape", [rows, b.const([0, 0, m.n_cols])], "embd")

    # -- layers ----------------------------------------------------------------------

    def rmsnorm(self, x: str, weight: str) -> str:
        b = self.b
        ms = b.op("ReduceMean", [b.op("Mul", [x, x]), b.const([-1])], "ms", keepdims=1)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [ms, b.const(np.float32(self.s.norm_eps), np.float32)])])])
        return b.op("Mul", [b.op("Mul", [x, inv]), weight], "norm")

    def rope(self, x: str, cos: str, sin: str) -> str:
        """x (1, S, heads, head_dim) rotated in pairs (i, i + n_rot/2); cos, sin (1, S, 1, n_rot/2)."""
        b, half, hd = self.b, self.s.n_rot // 2, self.hd
        split = [half, half] + ([hd - 2 * half] if hd > 2 * half else [])
        parts = b.op("Split", [x, b.const(split)], "rope_part", axis=-1, n_out=len(split))
        x1, x2 = parts[0], parts[1]
        r1 = b.op("Sub", [b.op("Mul", [x1, cos]), b.op("Mul", [x2, sin])])
        r2 = b.op("Add", [b.op("Mul", [x1, sin]), b.op("Mul", [x2, cos])])
        return b.op("Concat", [r1, r2] + list(parts[2:]), "roped", axis=-1)

    def attention(self, il: int, h: str, cos: str, sin: str, mask: str, past_k: str, past_v: str):
        """(attention output (1, S, n_embd) before the residual, new k, new v, keys, values)."""
        b, s, p = self.b, self.s, f"blk.{il}."
        q, k, v = self.matmuls(h, [(p + "attn_q.weight", self.neox_perm_q), (p + "attn_k.weight", self.neox_perm_k),
                                   (p + "attn_v.weight", None)], p + "attn_qkv")
        if p + "attn_q.bias" in self.f.tensors:
            q = b.op("Add", [q, self.vector(p + "attn_q.bias", self.neox_perm_q)])
            k = b.op("Add", [k, self.vector(p + "attn_k.bias", self.neox_perm_k)])
            v = b.op("Add", [v, self.vector(p + "attn_v.bias")])
        q = b.op("Reshape", [q, b.const([0, 0, s.n_head, self.hd])], "q")
        k = b.op("Reshape", [k, b.const([0, 0, s.n_head_kv, self.hd])], "k")
        v = b.op("Reshape", [v, b.const([0, 0, s.n_head_kv, self.hd])], "v")
        head_perm = None if self.neox_perm_q is None else self.neox_perm_q[:self.hd]
        if p + "attn_q_norm.weight" in self.f.tensors:
            q = self.rmsnorm(q, self.vector(p + "attn_q_norm.weight", head_perm))
            k = self.rmsnorm(k, self.vector(p + "attn_k_norm.weight", head_perm))
        if self.o.attention == "gqa":
            return self._gqa(il, q, k, v, past_k, past_v)
        q = b.op("Transpose", [self.rope(q, cos, sin)], "qT", perm=[0, 2, 1, 3])      # (1, H, S, hd)
        k = b.op("Transpose", [self.rope(k, cos, sin)], "kT", perm=[0, 2, 1, 3])      # (1, n_kv, S, hd)
        v = b.op("Transpose", [v], "vT", perm=[0, 2, 1, 3])
        new_k = b.op("Cast", [k], "k_store", to=self.kv_elem)
        new_v = b.op("Cast", [v], "v_store", to=self.kv_elem)
        keys = b.op("Concat", [past_k, new_k], "keys", axis=2)                       # (1, n_kv, T, hd)
        values = b.op("Concat", [past_v, new_v], "values", axis=2)
        kf = b.op("Cast", [keys], to=self.T.FLOAT)
        vf = b.op("Cast", [values], to=self.T.FLOAT)
        # Each KV head answers its group of query heads: (1, n_kv, group * S, hd), row g * S + i.
        qg = b.op("Reshape", [b.op("Mul", [q, b.const(np.float32(s.attn_scale), np.float32)]),
                              b.const([1, s.n_head_kv, -1, self.hd])], "qg")
        scores = b.op("MatMul", [qg, b.op("Transpose", [kf], perm=[0, 1, 3, 2])], "scores")
        probs = b.op("Softmax", [b.op("Add", [scores, mask], "masked")], "probs", axis=-1)
        att = b.op("MatMul", [probs, vf], "att")                                     # (1, n_kv, group*S, hd)
        att = b.op("Reshape", [att, b.const([1, s.n_head, -1, self.hd])])
        att = b.op("Reshape", [b.op("Transpose", [att], perm=[0, 2, 1, 3]), b.const([0, 0, s.n_head * self.hd])])
        return self.matmul(att, p + "attn_output.weight"), new_k, new_v, keys, values

    def _gqa(self, il: int, q: str, k: str, v: str, past_k: str, past_v: str):
        """com.microsoft.GroupQueryAttention with its rotary: (output, None, None, present k, present v)."""
        b, s, p = self.b, self.s, f"blk.{il}."
        sliding = self._sliding(il)
        flat = [b.op("Reshape", [t, b.const([0, 0, -1])]) for t in (q, k, v)]
        if self.kv_elem != self.T.FLOAT:
            flat = [b.op("Cast", [t], to=self.kv_elem) for t in flat]
        cos, sin = self._gqa_tables["local" if sliding else "global"]
        out, present_k, present_v = b.op(
            "GroupQueryAttention", flat + [past_k, past_v, self._seqlens_k, self._total_i32, cos, sin], "gqa",
            domain=MS_DOMAIN, n_out=3, num_heads=s.n_head, kv_num_heads=s.n_head_kv, scale=float(s.attn_scale),
            do_rotary=1, rotary_interleaved=0,
            local_window_size=(s.sliding_window) if sliding else -1)
        if self.kv_elem != self.T.FLOAT:
            out = b.op("Cast", [out], to=self.T.FLOAT)
        return self.matmul(out, p + "attn_output.weight"), None, None, present_k, present_v

    def _sliding(self, il: int) -> bool:
        s = self.s
        return bool(s.sliding_window) and s.swa_pattern > 0 and (il + 1) % s.swa_pattern != 0

    def block(self, il: int, x: str, ropes: dict, masks: dict, past_k: str, past_v: str):
        b, s, p = self.b, self.s, f"blk.{il}."
        sliding = self._sliding(il)
        cos, sin = ropes["local" if sliding else "global"]
        h = self.rmsnorm(x, self.vector(p + "attn_norm.weight"))
        o, new_k, new_v, keys, values = self.attention(il, h, cos, sin, masks["local" if sliding else "global"],
                                                       past_k, past_v)
        if p + "post_attention_norm.weight" in self.f.tensors:
            o = self.rmsnorm(o, self.vector(p + "post_attention_norm.weight"))
        x = b.op("Add", [x, o], "resid")
        h = self.rmsnorm(x, self.vector(p + "ffn_norm.weight"))
        gate, up = self.matmuls(h, [(p + "ffn_gate.weight", None), (p + "ffn_up.weight", None)], p + "ffn_gate_up")
        if s.activation == "gelu":
            act = b.op("Gelu", [gate], "gelu", approximate="tanh")
        else:
            act = b.op("Mul", [gate, b.op("Sigmoid", [gate])], "silu")
        d = self.matmul(b.op("Mul", [act, up], "glu"), p + "ffn_down.weight")
        if p + "post_ffw_norm.weight" in self.f.tensors:
            d = self.rmsnorm(d, self.vector(p + "post_ffw_norm.weight"))
        return b.op("Add", [x, d], "resid"), new_k, new_v, keys, values

    # -- the two shapes ---------------------------------------------------------------

    def _rope_inputs(self, positions: str) -> dict:
        """cos and sin (1, S, 1, n_rot/2) of the positions (1, S), for global and sliding layers."""
        b, n_pos = self.b, self.o.n_ctx + (self.o.chunk if self.o.static else 0)
        freqs = (np.asarray(self.f.tensor_array("rope_freqs.weight"), np.float32)
                 if "rope_freqs.weight" in self.f.tensors else None)
        out = {}
        kinds = ["global"] + (["local"] if self.s.sliding_window and self.s.swa_pattern else [])
        self._gqa_tables = {}
        for kind in kinds:
            cos, sin = rope_tables(self.s, n_pos, sliding=kind == "local", freq_factors=freqs)
            if self.o.attention == "gqa":
                dtype = KV_DTYPES[self.o.kv_dtype]
                self._gqa_tables[kind] = (b.init(f"gqa_{kind}.cos", cos.astype(dtype)),
                                          b.init(f"gqa_{kind}.sin", sin.astype(dtype)))
                continue
            out[kind] = tuple(b.op("Unsqueeze", [b.op("Gather", [b.init(f"rope_{kind}.{fn}", table), positions],
                                                      f"{fn}_{kind}", axis=0), b.const([2])])
                              for fn, table in (("cos", cos), ("sin", sin)))
        if self.o.attention == "gqa":
            self._gqa_tables.setdefault("local", self._gqa_tables["global"])
            return {"global": (None, None), "local": (None, None)}
        out.setdefault("local", out["global"])
        return out

    def _group_mask(self, bias: str) -> str:
        """A (S, T) additive bias repeated for the group's query rows: (group * S, T)."""
        return self.b.op("Tile", [bias, self.b.const([self.group, 1])], "mask_g") if self.group > 1 else bias

    def build_dynamic(self):
        b, s, T = self.b, self.s, self.T
        ids = b.input("input_ids", T.INT64, [1, "sequence_length"])
        logits_from = "logits_from"
        b.init(logits_from, np.zeros(1, dtype=np.int64))    # an initializer and an input: 0 unless fed
        b.input(logits_from, T.INT64, [1])
        kv_shape = [1, s.n_head_kv, "past_sequence_length", self.hd]
        pasts = [(b.input(f"past_key_values.{il}.key", self.kv_elem, kv_shape),
                  b.input(f"past_key_values.{il}.value", self.kv_elem, kv_shape)) for il in range(s.n_layer)]
        n_new = b.op("Gather", [b.op("Shape", [ids]), b.const(1)], "n_new", axis=0)
        n_past = b.op("Gather", [b.op("Shape", [pasts[0][0]]), b.const(2)], "n_past", axis=0)
        total = b.op("Add", [n_past, n_new], "total")
        positions = b.op("Range", [n_past, total, b.const(1)], "positions")            # (S,)
        ropes = self._rope_inputs(b.op("Unsqueeze", [positions, b.const([0])]))
        self._seqlens_k = b.op("Cast", [b.op("Unsqueeze", [b.op("Sub", [total, b.const(1)]), b.const([0])])],
                               "seqlens_k", to=self.T.INT32)
        self._total_i32 = b.op("Cast", [total], "total_i32", to=self.T.INT32)
        q_pos = b.op("Unsqueeze", [positions, b.const([1])])                          # (S, 1)
        k_pos = b.op("Unsqueeze", [b.op("Range", [b.const(0), total, b.const(1)]), b.const([0])])  # (1, T)
        behind = b.op("Sub", [q_pos, k_pos], "behind")                                # (S, T): q - k
        visible = b.op("GreaterOrEqual", [behind, b.const(0)])
        masks = {"global": self._group_mask(self._bias(visible))}
        if s.sliding_window and s.swa_pattern:
            near = b.op("Less", [behind, b.const(s.sliding_window)])
            masks["local"] = self._group_mask(self._bias(b.op("And", [visible, near])))
        else:
            masks["local"] = masks["global"]
        x = self._input_embeddings(ids)
        for il, (pk, pv) in enumerate(pasts):
            x, _, _, keys, values = self.block(il, x, ropes, masks, pk, pv)
            present = [1, s.n_head_kv, "total_sequence_length", self.hd]
            b.output(keys, f"present.{il}.key", self.kv_elem, present)
            b.output(values, f"present.{il}.value", self.kv_elem, present)
        x = b.op("Slice", [x, logits_from, b.op("Unsqueeze", [n_new, b.const([0])]),
                           b.const([1])], "last")
        b.output(self._logits(x), "logits", T.FLOAT, [1, "logits_length", s.n_vocab])

    def build_static(self):
        b, s, T, C, L = self.b, self.s, self.T, self.o.chunk, self.o.n_ctx
        ids = b.input("input_ids", T.INT64, [1, C])
        positions = b.input("position_ids", T.INT64, [1, C])
        ropes = self._rope_inputs(positions)
        has_local = bool(s.sliding_window and s.swa_pattern)
        masks = {"global": self._group_mask(b.op("Reshape", [b.input("attention_bias", T.FLOAT, [1, 1, C, L + C]),
                                                            b.const([C, L + C])]))}
        masks["local"] = (self._group_mask(b.op("Reshape", [b.input("attention_bias_local", T.FLOAT, [1, 1, C, L + C]),
                                                           b.const([C, L + C])])) if has_local else masks["global"])
        kv_shape = [1, s.n_head_kv, L, self.hd]
        pasts = [(b.input(f"past_key.{il}", self.kv_elem, kv_shape), b.input(f"past_value.{il}", self.kv_elem, kv_shape))
                 for il in range(s.n_layer)]
        x = self._input_embeddings(ids)
        for il, (pk, pv) in enumerate(pasts):
            x, new_k, new_v, _, _ = self.block(il, x, ropes, masks, pk, pv)
            b.output(new_k, f"new_key.{il}", self.kv_elem, [1, s.n_head_kv, C, self.hd])
            b.output(new_v, f"new_value.{il}", self.kv_elem, [1, s.n_head_kv, C, self.hd])
        b.output(self._logits(x), "logits", T.FLOAT, [1, C, s.n_vocab])

    def _bias(self, visible: str) -> str:
        return self.b.op("Where", [visible, self.b.const(0.0, np.float32), self.b.const(MASKED, np.float32)], "bias")

    def _input_embeddings(self, ids: str) -> str:
        x = self.embed(ids)
        if self.s.embd_scale != 1.0:
            x = self.b.op("Mul", [x, self.b.const(np.float32(self.s.embd_scale), np.float32)], "embd_scaled")
        return x

    def _logits(self, x: str) -> str:
        h = self.rmsnorm(x, self.vector("output_norm.weight"))
        head = "output.weight" if "output.weight" in self.f.tensors else "token_embd.weight"
        return self.matmul(h, head)

    def model(self):
        from onnx import helper
        (self.build_static if self.o.static else self.build_dynamic)()
        graph = helper.make_graph(self.b.nodes, "edgesdk_decoder", self.b.inputs, self.b.outputs, self.b.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                                  producer_name="edgesdk", ir_version=10)
        helper.set_model_props(model, {WEIGHT_ROWS_KEY: json.dumps(self.weight_rows, sort_keys=True)})
        return model


def check_exportable(f: gguf.GGUFFile, shape: ModelShape) -> None:
    """UnsupportedModelError naming what the exporter cannot express (architecture, tensor type, layout)."""
    if shape.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"{f.path}: architecture {shape.architecture!r} cannot be exported to ONNX "
                                    f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    for name, info in f.tensors.items():
        if len(info.shape) == 2 and info.type_name not in MAPPED_TYPES:
            raise UnsupportedModelError(f"{f.path}: tensor {name!r} is {info.type_name}; the ONNX export maps "
                                        f"{', '.join(MAPPED_TYPES)}")
    if shape.head_dim_k != shape.head_dim_v:
        raise UnsupportedModelError(f"{f.path}: key_length {shape.head_dim_k} != value_length {shape.head_dim_v}")
    for key in ("feed_forward_length", "attention.head_count", "attention.head_count_kv"):
        shape.uniform(key)
    if shape.yarn_log_multiplier != 0.0:
        raise UnsupportedModelError(f"{f.path}: YaRN log multiplier {shape.yarn_log_multiplier} is not exported")


def build_model(f: gguf.GGUFFile, shape: ModelShape, options: ExportOptions):
    """The onnx ModelProto of a checked GGUF file (initializers in memory)."""
    check_exportable(f, shape)
    return _Decoder(f, shape, options).model()




def _matrix_bytes(info) -> int:
    """Bytes of one GGUF matrix's initializers: float (K, N), or codes, scales, zero points, minimums."""
    from .weights import NBITS_FORMS
    n_cols, n_rows = info.shape
    if info.type_name in FLOAT_TYPES:
        return 4 * n_rows * n_cols
    bits, block, _ = NBITS_FORMS[info.type_name]
    k_blocks = n_cols // block
    total = n_rows * n_cols * bits // 8 + 4 * n_rows * k_blocks                 # codes, scales
    total += n_rows * (k_blocks if bits == 8 else (k_blocks + 1) // 2)          # zero points
    if info.type_name in ("Q4_1", "Q4_K"):
        total += 4 * n_rows * k_blocks                                           # minimums
    return total


def tied_embedding_bytes(f: gguf.GGUFFile) -> int:
    """Bytes of the embedding's initializers when the output layer multiplies by the same ones
    (the graph gathers rows from them and runs MatMulNBits on them)."""
    if "output.weight" in f.tensors or "token_embd.weight" not in f.tensors:
        return 0
    return _matrix_bytes(f.tensors["token_embd.weight"])


def initializer_bytes(f: gguf.GGUFFile, shape: ModelShape, options: ExportOptions) -> int:
    """The bytes of the graph's initializers, counted from the tensor index without exporting."""
    total = 0
    for name, info in f.tensors.items():
        if len(info.shape) == 1:
            total += 4 * info.shape[0]
            continue
        total += _matrix_bytes(info)
        tied = name == "token_embd.weight" and "output.weight" not in f.tensors
        if tied and info.type_name in FLOAT_TYPES:
            total += _matrix_bytes(info)        # gathered from as it is, multiplied as its transpose
        elif tied and info.type_name in ("Q4_1", "Q4_K"):
            total += 4 * info.shape[1] * (info.shape[0] // 32)   # minimums gathered by row, and transposed
    n_pos = options.n_ctx + (options.chunk if options.static else 0)
    tables = 2 if shape.sliding_window and shape.swa_pattern else 1
    return total + tables * 2 * 4 * n_pos * (shape.n_rot // 2)


__all__ = ["ExportOptions", "KV_DTYPES", "OPSET", "SUPPORTED_ARCHITECTURES", "build_model", "check_exportable",
           "initializer_bytes", "tied_embedding_bytes",
           "permute_for_neox"]
