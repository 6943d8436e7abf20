"""Each supported tokenizer.ggml.pre splits words exactly as llama.cpp does.

We have one real byte-level BPE model (SmolLM2, "smollm"); for the other
pre-tokenizers (Llama-3, Qwen2, GPT-2, llama.cpp's default chain) the test
writes a GGUF with SmolLM2's vocabulary and merges but another
tokenizer.ggml.pre, loads it in llama.cpp (vocab only) and compares ids.
"""
from __future__ import annotations

import pytest

from edgesdk import gguf as edgesdk_gguf
from edgesdk.tokenizer import Tokenizer
from tokenizer_corpus import build_corpus

import llama_cpp
import gguf as gguf_writer

PRE_TOKENIZERS = ["llama-bpe", "qwen2", "gpt-2", "default"]


def _write_vocab_gguf(path, metadata, pre: str) -> None:
    writer = gguf_writer.GGUFWriter(str(path), "llama")
    # The smallest hyper-parameters llama.cpp wants before it reads a vocabulary.
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(metadata["tokenizer.ggml.tokens"])
    writer.add_token_types([int(t) for t in metadata["tokenizer.ggml.token_type"]])
    writer.add_token_merges(metadata["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_path):
    with edgesdk_gguf.open(smollm2_path) as opened:
        return dict(opened.metadata)


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("pre", PRE_TOKENIZERS)
def test_pre_tokenizer_ids_equal_llamacpp(pre, smollm2_metadata, tmp_path):
    path = tmp_path / f"vocab-{pre}.gguf"
    _write_vocab_gguf(path, smollm2_metadata, pre)
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    tokenizer = Tokenizer.from_gguf(path)
    assert tokenizer.add_bos == reference._model.add_bos_token()
    corpus = build_corpus(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    mismatches = []
    for text in corpus:
        for add_special, parse_special in ((True, False), (False, True)):
            ours = tokenizer.encode(text, add_special=add_special, parse_special=parse_special)
            theirs = reference.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            if ours != theirs:
                mismatches.append((text, ours, theirs))
    assert not mismatches, f"{pre}: {len(mismatches)} of {2 * len(corpus)} differ; first: {mismatches[:3]}"


def test_unknown_pre_tokenizer_is_a_tokenizer_error(smollm2_metadata):
    from edgesdk.errors import TokenizerError
    metadata = dict(smollm2_metadata, **{"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerError, match="no-such-pre"):
        Tokenizer.from_gguf(metadata)
