"""modelinfo.describe_model on files written here by the gguf package: what
it derives (parameters, quantization mix, head size, tokenizer kind) and how
it copes with keys a file does not have."""
from __future__ import annotations

import gguf as gguf_pkg
import numpy as np
from gguf.constants import GGMLQuantizationType

from edgesdk import modelinfo


def write_model(path, rng, *, tokens=None, tokenizer_model=None, chat_template=None, head_count=None):
    writer = gguf_pkg.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_context_length(256)
    if head_count is not None:
        writer.add_head_count(head_count)
    if tokenizer_model is not None:
        writer.add_tokenizer_model(tokenizer_model)
    if tokens is not None:
        writer.add_token_list(tokens)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", rng.integers(0, 256, size=(10, 2 * 34), dtype=np.uint8),
                      raw_dtype=GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.add_tensor("blk.1.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_parameters_and_quantization_mix_are_counted_per_type(tmp_path, rng):
    path = write_model(tmp_path / "m.gguf", rng, tokens=["a", "b", "c"], tokenizer_model="gpt2",
                       chat_template="{{ messages }}", head_count=4)
    m = modelinfo.describe_model(path)
    assert m.parameters == 10 * 64 + 2 * 64
    mix = {u.type_name: (u.n_tensors, u.n_elements, u.nbytes) for u in m.quantization}
    assert mix == {"Q8_0": (1, 640, 10 * 2 * 34), "F32": (2, 128, 2 * 64 * 4)}
    assert m.quantization[0].type_name == "Q8_0"  # the largest share first
    assert m.bits_per_weight == 8.0 * (680 + 512) / 768
    assert (m.n_layers, m.embedding_length, m.context_length) == (2, 64, 256)
    assert (m.n_heads, m.n_kv_heads, m.head_dim) == (4, 4, 16)  # kv heads default to heads; 64 / 4
    assert m.tokenizer_kind.startswith("BPE") and m.vocab_size == 3
    assert m.has_chat_template is True


def test_missing_keys_are_reported_as_none_not_guessed(tmp_path, rng):
    m = modelinfo.describe_model(write_model(tmp_path / "bare.gguf", rng))
    assert m.n_heads is None and m.n_kv_heads is None and m.head_dim is None
    assert m.tokenizer_model is None and m.tokenizer_kind == "none" and m.vocab_size is None
    assert m.has_chat_template is False
    assert m.file_type is None and m.sliding_window is None


def test_native_section_matches_the_binding():
    from edgesdk import _native

    n = modelinfo.describe_native()
    assert n.isa_current == _native.isa_current() and n.isa_current in n.isa_available
    assert n.cpu_features == _native.cpu_features()
