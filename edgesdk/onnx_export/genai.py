"""genai_config.json for a dynamic export, so that onnxruntime-genai's decoder runs it as it is
(the input and output names of the dynamic graph are genai's own; see graph.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .. import gguf
from ..errors import InvalidArgumentError
from ..shape import read_shape
from . import GRAPH_FILE, Export

GENAI_CONFIG_FILE = "genai_config.json"


def genai_config(f: gguf.GGUFFile, export: Export, provider: Optional[str] = None,
                 threads: Optional[int] = None) -> dict:
    """The config as a dict; provider: a genai provider name ("openvino", "cuda"), None for CPU;
    threads: ONNX Runtime's intra-op threads (None: its default, every core)."""
    if export.options.static:
        raise InvalidArgumentError("onnxruntime-genai runs the dynamic export (static=False)")
    shape = read_shape(f)

    def token(key: str, default: int = 0) -> int:
        value = f.get(key)
        return int(value) if isinstance(value, int) else default

    session = {"log_id": "onnxruntime-genai", "provider_options": [{provider: {}}] if provider else []}
    if threads is not None:
        session["intra_op_num_threads"] = threads
    return {
        "model": {
            "type": {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}[shape.architecture],
            "bos_token_id": token("tokenizer.ggml.bos_token_id"),
            "eos_token_id": token("tokenizer.ggml.eos_token_id"),
            "pad_token_id": token("tokenizer.ggml.padding_token_id", token("tokenizer.ggml.eos_token_id")),
            "vocab_size": shape.n_vocab,
            "context_length": export.options.n_ctx,
            "decoder": {
                "filename": GRAPH_FILE, "session_options": session,
                "head_size": shape.head_dim_k, "hidden_size": shape.n_embd,
                "num_attention_heads": shape.n_head, "num_key_value_heads": shape.n_head_kv,
                "num_hidden_layers": shape.n_layer,
                "inputs": {"input_ids": "input_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "max_length": export.options.n_ctx, "min_length": 0,
                   "past_present_share_buffer": False, "top_k": 1, "temperature": 1.0, "repetition_penalty": 1.0},
    }


def write_genai_config(gguf_path, export: Export, provider: Optional[str] = None,
                       directory: Optional[Path] = None, threads: Optional[int] = None) -> Path:
    """Write genai_config.json into directory (default: the export's own)."""
    with gguf.open(gguf_path) as f:
        config = genai_config(f, export, provider, threads)
    path = Path(directory or export.directory) / GENAI_CONFIG_FILE
    path.write_text(json.dumps(config, indent=2))
    return path


__all__ = ["GENAI_CONFIG_FILE", "genai_config", "write_genai_config"]
