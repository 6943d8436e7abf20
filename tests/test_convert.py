"""edgesdk.convert on small random Hugging Face folders written here (safetensors weights,
config.json, tokenizer files made with the `tokenizers` and `sentencepiece` packages):
llama.cpp loads the GGUF, its token ids equal the original tokenizer's on the tokenizer
corpus, and the logits of llama.cpp and of our engine match a float64 forward pass of the
original weights, computed with Hugging Face's definitions (rotate-half RoPE on the
unpermuted Q/K rows, Gemma's 1 + w norms)."""
from __future__ import annotations

import json
import random

import ml_dtypes
import numpy as np
import pytest
import sentencepiece
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from edgesdk import cli, convert, gguf
from edgesdk.backends.native import NativeBackend
from edgesdk.errors import ConversionError, UnsupportedModelError
from tiny_gguf import TinyConfig, reference_logits, tiny_tensors
from tokenizer_corpus import CODE, EMOJI, SENTENCES, build_corpus

# F32 weights with an f16 KV cache against float64 (as tests/test_engine_parity.py).
LOGITS_ATOL = 1.5e-2
BPE_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"

CONFIGS = {
    "llama": TinyConfig(arch="llama", n_vocab=400, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96,
                        tied=False),
    "qwen2": TinyConfig(arch="qwen2", n_vocab=400, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96,
                        tied=True, rope_base=1e6),
    "gemma3": TinyConfig(arch="gemma3", n_vocab=1024, n_embd=64, n_head=4, n_head_kv=1, head_dim=64, n_ff=96,
                         n_layer=6, rope_base=1e6, n_swa=5, eps=1e-6),
}
SPLITS = {"llama": convert.LLAMA3_SPLIT, "qwen2": convert.QWEN2_SPLIT}


def training_lines():
    rng = random.Random(5)
    words = " ".join(SENTENCES + CODE).split()
    lines = list(SENTENCES) + list(CODE) + list(EMOJI)
    lines += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(1500)]
    return lines


def write_bpe_tokenizer(folder, arch: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLITS[arch]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_lines(), trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>", "add_bos_token": arch == "llama",
        "chat_template": CHAT_TEMPLATE}))
    return tok


def write_spm_tokenizer(folder, vocab_size: int) -> sentencepiece.SentencePieceProcessor:
    text = folder / "train.txt"
    text.write_text("\n".join(training_lines()), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        bos_piece="<bos>", eos_piece="<eos>", num_threads=1, minloglevel=2)   # Gemma's names, not in the corpus
    text.unlink()
    (folder / "tokenizer.vocab").unlink()
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def hf_config(arch: str, cfg: TinyConfig) -> dict:
    common = {"hidden_size": cfg.n_embd, "intermediate_size": cfg.n_ff, "num_hidden_layers": cfg.n_layer,
              "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head_kv, "head_dim": cfg.head_dim,
              "rms_norm_eps": cfg.eps, "rope_theta": cfg.rope_base, "max_position_embeddings": cfg.context_length,
              "vocab_size": cfg.n_vocab, "tie_word_embeddings": cfg.tied}
    if arch == "gemma3":
        common.update(model_type="gemma3_text", sliding_window=cfg.n_swa, sliding_window_pattern=6,
                      rope_local_base_freq=10000.0, query_pre_attn_scalar=cfg.head_dim,
                      architectures=["Gemma3ForCausalLM"])
    else:
        common.update(model_type=arch, architectures=[f"{arch.capitalize()}ForCausalLM"])
    return common


def hf_weights(arch: str, cfg: TinyConfig) -> tuple:
    """(Hugging Face name -> array, the same weights under GGUF names for the reference forward).
    Q/K rows are in Hugging Face's layout; gemma3's norms are stored as w - 1."""
    t = tiny_tensors(cfg, seed=17)
    if arch == "llama":   # stored as BF16: the reference sees the rounded values
        t = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in t.items()}
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm"}
    names["ffn_norm"] = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"
    hf = {}
    for name, value in t.items():
        parts = name.split(".")
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            key = "model.norm.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        else:
            key = f"model.layers.{parts[1]}.{names[parts[2]]}.{parts[3]}"
        is_norm = value.ndim == 1 and "bias" not in name
        hf[key] = value - 1.0 if arch == "gemma3" and is_norm else value
    return hf, t


def write_folder(folder, arch: str) -> dict:
    cfg = CONFIGS[arch]
    folder.mkdir()
    hf, reference = hf_weights(arch, cfg)
    if arch == "llama":   # BF16, in two shards with an index
        names = sorted(hf)
        shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
                  "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for file, keys in shards.items():
            save_file({k: hf[k].astype(ml_dtypes.bfloat16) for k in keys}, str(folder / file))
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    else:
        save_file(hf, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config(arch, cfg)))
    if arch == "gemma3":
        tokenizer = write_spm_tokenizer(folder, cfg.n_vocab - 8)
    else:
        tokenizer = write_bpe_tokenizer(folder, arch, cfg.n_vocab - 23)
    return {"cfg": cfg, "reference": reference, "tokenizer": tokenizer}


@pytest.fixture(scope="module", params=list(CONFIGS))
def converted(request, tmp_path_factory):
    arch = request.param
    root = tmp_path_factory.mktemp(f"convert_{arch}")
    made = write_folder(root / "hf", arch)
    out = root / f"{arch}.gguf"
    convert.convert_folder(root / "hf", out, out_type="f32")
    return arch, out, made


def hf_reference_logits(arch: str, cfg: TinyConfig, tensors: dict, ids) -> np.ndarray:
    """Hugging Face's llama rotates halves of the unpermuted rows: that is the qwen2 forward
    with zero biases."""
    if arch != "llama":
        return reference_logits(cfg, tensors, ids)
    with_bias = dict(tensors)
    for il in range(cfg.n_layer):
        for p, n in (("q", cfg.n_head), ("k", cfg.n_head_kv), ("v", cfg.n_head_kv)):
            with_bias[f"blk.{il}.attn_{p}.bias"] = np.zeros(n * cfg.head_dim)
    as_qwen2 = TinyConfig(**{**cfg.__dict__, "arch": "qwen2"})
    return reference_logits(as_qwen2, with_bias, ids)


def test_llama_cpp_and_our_engine_give_the_original_models_logits(converted):
    from llamacpp_ref import load_llama

    arch, out, made = converted
    cfg = made["cfg"]
    ids = [int(i) for i in np.random.default_rng(3).integers(0, cfg.n_vocab, 13)]
    expected = hf_reference_logits(arch, cfg, made["reference"], ids)
    with NativeBackend(out, n_ctx=32, threads=2) as be:
        np.testing.assert_allclose(be.eval(ids, 0, all_logits=True), expected, atol=LOGITS_ATOL)
    llm = load_llama(out, n_ctx=32)
    try:
        llm.eval(ids)
        np.testing.assert_allclose(np.array(llm.scores[:len(ids)]), expected, atol=LOGITS_ATOL)
    finally:
        llm.close()


def test_llama_cpp_tokenizes_the_corpus_as_the_original_tokenizer(converted):
    from llamacpp_ref import load_llama

    arch, out, made = converted
    tokenizer = made["tokenizer"]
    llm = load_llama(out, n_ctx=32, vocab_only=True)
    try:
        if arch == "gemma3":
            corpus = build_corpus(["<start_of_turn>", "<end_of_turn>"])
            for text in corpus:
                assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text), repr(text)
        else:
            corpus = build_corpus(BPE_SPECIALS)
            for text in corpus:
                expected = tokenizer.encode(text, add_special_tokens=False).ids
                assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, repr(text)
    finally:
        llm.close()
    assert len(corpus) > 2000


def test_tokenizer_metadata_names_the_pre_tokenizer_specials_and_chat_template(converted):
    arch, out, made = converted
    with gguf.open(out) as f:
        meta = f.metadata
        tokens = meta["tokenizer.ggml.tokens"]
        assert len(tokens) == made["cfg"].n_vocab and tokens[-1].startswith("[PAD")
        if arch == "gemma3":
            assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
        else:
            assert meta["tokenizer.ggml.model"] == "gpt2"
            assert meta["tokenizer.ggml.pre"] == {"llama": "llama-bpe", "qwen2": "qwen2"}[arch]
            assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
            assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
            assert meta["tokenizer.ggml.token_type"][tokens.index("<|im_start|>")] == convert.TOKEN_CONTROL


@pytest.mark.slow
def test_convert_to_q4_k_m_runs_and_keeps_greedy_choices_close(converted, tmp_path):
    arch, out, made = converted
    hf = out.parent / "hf"
    q = tmp_path / "q.gguf"
    assert cli.main(["convert", str(hf), str(q), "--type", "q4_k_m"]) == 0
    with gguf.open(q) as f:
        assert f.metadata["general.file_type"] == 15
    assert [p for p in tmp_path.iterdir()] == [q]


def test_unsupported_architecture_is_a_typed_error(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        convert.convert_folder(folder, tmp_path / "o.gguf")


def test_missing_tensor_and_config_key_are_typed_errors(tmp_path):
    write_folder(tmp_path / "hf", "qwen2")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ConversionError, match="model.layers.2"):
        convert.convert_folder(tmp_path / "hf", tmp_path / "o.gguf")
    del config["hidden_size"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="hidden_size"):
        convert.convert_folder(tmp_path / "hf", tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()


def test_a_tensor_shape_that_disagrees_with_the_config_is_a_typed_error(tmp_path):
    write_folder(tmp_path / "hf", "qwen2")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ConversionError, match="mlp.gate_proj.weight.*shape"):
        convert.convert_folder(tmp_path / "hf", tmp_path / "o.gguf")
