"""edgesdk.convert on small random Hugging Face folders written here (safetensors weights,
config.json, tokenizer files made with the `tokenizers` and `sentencepiece` packages):
llama.cpp loads the GGUF, its token ids equal the original tokenizer's on the tokenizer
corpus, and the logits of llama.cpp and of our engine match a float64 forward pass of the
original weights, computed with Hugging Face's definitions (rotate-half RoPE on the
unpermuted Q/K rows, Gemma's 1 + w norms, transformers' linear, llama3 and YaRN RoPE
scaling, the scaled ones compared well past the original context)."""
from __future__ import annotations

import dataclasses
import json
import random

import ml_dtypes
import numpy as np
import pytest
import sentencepiece
from safetensors.numpy import save_file
import regex
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgesdk import cli, convert, gguf
from edgesdk.backends.native import NativeBackend
from edgesdk.errors import ConversionError, UnsupportedModelError
from edgesdk.tokenizer import Tokenizer as OurTokenizer
from tiny_gguf import TinyConfig, forward_config, reference_logits, tiny_tensors
from tokenizer_corpus import CODE, EMOJI, SENTENCES, build_corpus
from truth_forward import forward_logits, llama3_frequencies, plain_rope, yarn_frequencies

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


def write_folder(folder, arch: str, config_changes: dict | None = None, cfg: TinyConfig | None = None,
                 write_tokenizer=None) -> dict:
    """config_changes: config.json keys written over hf_config's; cfg: the model, else CONFIGS[arch];
    write_tokenizer(folder, vocab_size): the tokenizer files, else the architecture's usual ones."""
    cfg = cfg or CONFIGS[arch]
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
    (folder / "config.json").write_text(json.dumps({**hf_config(arch, cfg), **(config_changes or {})}))
    if write_tokenizer is not None:
        tokenizer = write_tokenizer(folder, cfg.n_vocab - 7)
    elif arch == "gemma3":
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


def hf_reference_logits(arch: str, cfg: TinyConfig, tensors: dict, ids, rope=None) -> np.ndarray:
    """Hugging Face's llama rotates halves of the unpermuted rows: that is the qwen2 forward
    with zero biases. rope: the RoPE table (inverse frequencies, factor on cos and sin) of a
    scaled config, else plain RoPE."""
    if arch == "llama":
        tensors = dict(tensors)
        for il in range(cfg.n_layer):
            for p, n in (("q", cfg.n_head), ("k", cfg.n_head_kv), ("v", cfg.n_head_kv)):
                tensors[f"blk.{il}.attn_{p}.bias"] = np.zeros(n * cfg.head_dim)
        cfg = TinyConfig(**{**cfg.__dict__, "arch": "qwen2"})
    if rope is None:
        return reference_logits(cfg, tensors, ids)
    settings = dataclasses.replace(forward_config(cfg), rope_global=rope)
    return forward_logits(settings, {k: v.astype(np.float64) for k, v in tensors.items()}, ids)


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


# ------------------------------------------------------------------------ RoPE scaling

# Sequences of ROPE_TOKENS against original contexts of 24 to 64 positions, so that most of each
# sequence lies beyond the original context.
ROPE_TOKENS = 80
ROPE_N_CTX = 96
# config.json rope_scaling -> the config's max_position_embeddings (YaRN's: factor x the original
# context, so that every transformers version's reading of the two agrees). With head_dim 16
# (base 1e4 for llama, 1e6 for qwen2) llama3's original context of 64 puts pair 0 among the kept
# high frequencies, one or two pairs on the blend and the rest among the scaled low ones.
ROPE_SCALINGS = {
    "linear": ({"rope_type": "linear", "factor": 2.5}, 256),
    "llama3": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64}, 512),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24}, 96),
    # the ramp's ends given (older configs say "type")
    "yarn-ramp": ({"type": "yarn", "factor": 3.0, "original_max_position_embeddings": 32, "beta_fast": 16.0,
                   "beta_slow": 2.0}, 96),
    # transformers' attention_factor: the factor on cos and sin in place of 0.1 ln(factor) + 1
    "yarn-attention": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 24,
                        "attention_factor": 1.3}, 96),
}
# qwen2 has no yarn-ramp case: at its base of 1e6 these betas and the defaults give the same ramp.
ROPE_CASES = [("llama", "linear"), ("llama", "llama3"), ("llama", "yarn"), ("llama", "yarn-ramp"),
              ("llama", "yarn-attention"), ("qwen2", "linear"), ("qwen2", "yarn"), ("qwen2", "yarn-attention")]
# Without its scaling (or with YaRN's default ramp in place of yarn-ramp's) a case's float64
# logits move by more than this (measured: 2.3 at least), while both engines stay within
# LOGITS_ATOL of them (measured: 0.011 at most), so the comparisons check the scaling itself.
SCALING_MIN_EFFECT = 20 * LOGITS_ATOL


def hf_rope_table(cfg: TinyConfig, scaling: dict, max_positions: int):
    """transformers' RoPE for a rope_scaling: (inverse frequencies, factor on cos and sin)."""
    kind, d, base = scaling.get("rope_type", scaling.get("type")), cfg.head_dim, cfg.rope_base
    if kind == "linear":
        return plain_rope(d, base, 1.0 / scaling["factor"])
    if kind == "llama3":
        return llama3_frequencies(d, base, scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"],
                                  scaling["original_max_position_embeddings"])
    return yarn_frequencies(d, base, scaling.get("original_max_position_embeddings", max_positions),
                            scaling["factor"], attn_factor=scaling.get("attention_factor"),
                            beta_fast=scaling.get("beta_fast", 32.0), beta_slow=scaling.get("beta_slow", 1.0))


@pytest.fixture(scope="module", params=ROPE_CASES, ids=lambda case: "-".join(case))
def rope_converted(request, tmp_path_factory):
    arch, name = request.param
    scaling, max_positions = ROPE_SCALINGS[name]
    root = tmp_path_factory.mktemp(f"rope_{arch}_{name}")
    made = write_folder(root / "hf", arch, {"rope_scaling": scaling, "max_position_embeddings": max_positions})
    out = root / f"{arch}-{name}.gguf"
    convert.convert_folder(root / "hf", out, out_type="f32")
    cfg = made["cfg"]
    ids = [int(i) for i in np.random.default_rng(9).integers(0, cfg.n_vocab, ROPE_TOKENS)]
    expected = hf_reference_logits(arch, cfg, made["reference"], ids, hf_rope_table(cfg, scaling, max_positions))
    return arch, name, out, made, ids, expected


def test_scaled_rope_logits_of_our_engine_match_the_original_model_beyond_its_context(rope_converted):
    arch, name, out, made, ids, expected = rope_converted
    unscaled = hf_reference_logits(arch, made["cfg"], made["reference"], ids)
    assert np.abs(unscaled - expected).max() > SCALING_MIN_EFFECT, "the scaling would go unnoticed"
    if name == "yarn-ramp":
        scaling, max_positions = ROPE_SCALINGS[name]
        default_ramp = {k: v for k, v in scaling.items() if k not in ("beta_fast", "beta_slow")}
        assert np.abs(hf_reference_logits(arch, made["cfg"], made["reference"], ids,
                                          hf_rope_table(made["cfg"], default_ramp, max_positions))
                      - expected).max() > SCALING_MIN_EFFECT, "the ramp's ends would go unnoticed"
    with NativeBackend(out, n_ctx=ROPE_N_CTX, threads=2) as be:
        np.testing.assert_allclose(be.eval(ids, 0, all_logits=True), expected, atol=LOGITS_ATOL)


def test_scaled_rope_logits_of_llama_cpp_match_the_original_model_beyond_its_context(rope_converted):
    from llamacpp_ref import load_llama

    arch, name, out, made, ids, expected = rope_converted
    scaling, max_positions = ROPE_SCALINGS[name]
    context = {}
    if name == "yarn-ramp":
        # llama.cpp 0.3.36 reads YaRN's yarn_beta_fast/yarn_beta_slow metadata only for grok; for
        # llama and qwen2 they are context parameters (our engine reads the file's).
        context = {"yarn_beta_fast": scaling["beta_fast"], "yarn_beta_slow": scaling["beta_slow"]}
    llm = load_llama(out, n_ctx=ROPE_N_CTX, **context)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    if name == "yarn-attention":
        # A known disagreement: llama.cpp 0.3.36 ignores transformers' attention_factor (the
        # file's yarn_attn_factor, which it reads only for grok; its yarn_attn_factor context
        # parameter changes nothing here either, measured) and keeps 0.1 ln(factor) + 1 on cos
        # and sin. So its logits are those of the same YaRN without the attention factor, and
        # miss the original model's; our engine follows transformers (the test above).
        without = {k: v for k, v in scaling.items() if k != "attention_factor"}
        np.testing.assert_allclose(got, hf_reference_logits(arch, made["cfg"], made["reference"], ids,
                                                            hf_rope_table(made["cfg"], without, max_positions)),
                                   atol=LOGITS_ATOL)
        assert np.abs(got - expected).max() > SCALING_MIN_EFFECT
        return
    np.testing.assert_allclose(got, expected, atol=LOGITS_ATOL)


def test_rope_scaling_metadata_and_tensors_are_what_llama_cpp_reads(rope_converted):
    arch, name, out, made, ids, expected = rope_converted
    scaling, max_positions = ROPE_SCALINGS[name]
    with gguf.open(out) as f:
        meta, tensors = f.metadata, f.tensors
        if name == "llama3":   # llama.cpp knows no "llama3" type: the frequencies carry it all
            assert f"{arch}.rope.scaling.type" not in meta
            freqs = f.tensor_array("rope_freqs.weight")
            assert freqs.shape == (made["cfg"].head_dim // 2,) and freqs[0] == 1.0 and freqs[-1] == scaling["factor"]
            assert 1.0 < freqs[1] < scaling["factor"]
        else:
            assert "rope_freqs.weight" not in tensors
            assert meta[f"{arch}.rope.scaling.type"] == scaling.get("rope_type", scaling.get("type"))
            assert meta[f"{arch}.rope.scaling.factor"] == pytest.approx(scaling["factor"])
        if name.startswith("yarn"):
            assert meta[f"{arch}.rope.scaling.original_context_length"] == scaling["original_max_position_embeddings"]
        assert meta[f"{arch}.context_length"] == max_positions


def test_a_quantized_conversion_keeps_llama3_frequencies_as_f32(tmp_path):
    scaling, max_positions = ROPE_SCALINGS["llama3"]
    write_folder(tmp_path / "hf", "llama", {"rope_scaling": scaling, "max_position_embeddings": max_positions})
    convert.convert_folder(tmp_path / "hf", tmp_path / "f32.gguf", out_type="f32")
    convert.convert_folder(tmp_path / "hf", tmp_path / "q8.gguf", out_type="q8_0")
    with gguf.open(tmp_path / "f32.gguf") as f32, gguf.open(tmp_path / "q8.gguf") as q8:
        assert q8.tensors["rope_freqs.weight"].type_name == "F32"
        np.testing.assert_array_equal(q8.tensor_array("rope_freqs.weight"), f32.tensor_array("rope_freqs.weight"))


@pytest.mark.parametrize("scaling, error, match", [
    ({"rope_type": "dynamic", "factor": 2.0}, UnsupportedModelError, "'dynamic' cannot be converted"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}, UnsupportedModelError,
     "'longrope' cannot be converted"),
    ({"type": "ntk-by-parts", "factor": 2.0}, UnsupportedModelError, "'ntk-by-parts' is not one we convert"),
    ({"rope_type": "yarn", "factor": 4.0, "mscale": 0.7}, UnsupportedModelError, "'mscale'"),
    ({"rope_type": "yarn", "factor": 4.0, "truncate": False}, UnsupportedModelError, "truncate False"),
    ({"rope_type": "linear"}, ConversionError, "rope_scaling has no 'factor'"),
    ({"rope_type": "linear", "factor": -2.0}, ConversionError, "'factor' must be a positive number"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 64}, ConversionError, "high_freq_factor 1.0 must exceed"),
    ("linear", ConversionError, "must be an object"),
])
def test_rope_scaling_we_cannot_convert_is_a_typed_error_naming_it(tmp_path, scaling, error, match):
    config = hf_config("llama", CONFIGS["llama"])
    with pytest.raises(error, match=match):
        convert.read_shape({**config, "rope_scaling": scaling})


def test_llama3_scaling_on_qwen2_and_yarn_on_gemma3_are_refused():
    with pytest.raises(UnsupportedModelError, match="qwen2 .*'llama3'.*only for llama"):
        convert.read_shape({**hf_config("qwen2", CONFIGS["qwen2"]), "rope_scaling": ROPE_SCALINGS["llama3"][0]})
    with pytest.raises(UnsupportedModelError, match="gemma3 .*'yarn': only linear"):
        convert.read_shape({**hf_config("gemma3", CONFIGS["gemma3"]), "rope_scaling": ROPE_SCALINGS["yarn"][0]})


def test_default_or_null_rope_scaling_is_plain_rope():
    for scaling in (None, {"rope_type": "default"}):
        shape, _ = convert.read_shape({**hf_config("llama", CONFIGS["llama"]), "rope_scaling": scaling})
        assert shape.rope_scaling.kind == "none" and not shape.rope_scaling.metadata


# ------------------------------------------------- SentencePiece-style byte-fallback BPE

# Llama-2 / Mistral style tokenizer.json: BPE over text with "▁" for spaces, <0xNN> byte tokens for
# characters outside the vocabulary; a 150-character alphabet leaves much of the corpus to them.
BYTE_FALLBACK_CFG = TinyConfig(arch="llama", n_vocab=800, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96,
                               tied=False)
SPM_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
BYTE_FALLBACK_ALPHABET = 150
# How the tokenizer marks spaces: Llama-2's Prepend + Replace normalizers, or a Metaspace
# pre-tokenizer with each of its prepend schemes.
SPACE_STYLES = ["prepend", "first", "always", "never"]
_SPECIAL_SPLIT = regex.compile("(" + "|".join(regex.escape(t) for t in sorted(SPM_SPECIALS, key=len, reverse=True))
                               + ")")


def byte_fallback_writer(space: str):
    def write(folder, vocab_size: int) -> Tokenizer:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if space == "prepend":
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=space, split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        # The trainer makes no byte tokens: listed as special tokens they get ids 5..260, and taken
        # out of added_tokens afterwards they are plain vocabulary entries, as in Llama-2's file.
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPM_SPECIALS + BYTE_TOKENS,
                                      limit_alphabet=BYTE_FALLBACK_ALPHABET, show_progress=False)
        tok.train_from_iterator(training_lines(), trainer)
        saved = json.loads(tok.to_str())
        saved["added_tokens"] = [t for t in saved["added_tokens"] if t["content"] not in BYTE_TOKENS]
        (folder / "tokenizer.json").write_text(json.dumps(saved))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}))
        return Tokenizer.from_str(json.dumps(saved))
    return write


def as_llama_cpp_prefixes(text: str, space: str) -> str:
    """text with a space put in front of each piece between special tokens that llama.cpp gives a
    "▁" (add_space_prefix: every piece) and Metaspace does not: one that starts with a space
    (Metaspace prepends only to a piece not already starting with "▁"), and with prepend_scheme
    "first" one that does not start the text. tokenizers on the result gives llama.cpp's ids."""
    if space in ("prepend", "never"):   # Prepend prefixes every piece, as llama.cpp does; never: neither
        return text
    parts = _SPECIAL_SPLIT.split(text)   # pieces at even indices, special tokens between them
    for k in range(0, len(parts), 2):
        if parts[k] and (parts[k].startswith(" ") or (space == "first" and k > 0)):
            parts[k] = " " + parts[k]
    return "".join(parts)


@pytest.fixture(scope="module", params=SPACE_STYLES)
def byte_fallback_converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"byte_fallback_{request.param}")
    made = write_folder(root / "hf", "llama", cfg=BYTE_FALLBACK_CFG,
                        write_tokenizer=byte_fallback_writer(request.param))
    out = root / "model.gguf"
    convert.convert_folder(root / "hf", out, out_type="f32")
    return request.param, out, made["tokenizer"]


def test_llama_cpp_and_our_tokenizer_tokenize_a_byte_fallback_bpe_as_tokenizers_does(byte_fallback_converted):
    from llamacpp_ref import load_llama

    space, out, tokenizer = byte_fallback_converted
    ours = OurTokenizer.from_gguf(out)
    corpus = build_corpus(SPM_SPECIALS)
    llm = load_llama(out, n_ctx=32, vocab_only=True)
    differing = []
    try:
        for text in corpus:
            for add_bos, special in ((True, False), (False, False), (True, True)):   # ours as llama.cpp
                assert ours.encode(text, add_special=add_bos, parse_special=special) == \
                    llm.tokenize(text.encode(), add_bos=add_bos, special=special), (repr(text), add_bos, special)
            theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ours.encode(text, add_special=False, parse_special=True) == theirs, repr(text)
            # A genuine disagreement, not one of the conversion: for Metaspace's "first" and
            # "always" llama.cpp (as SentencePiece) prefixes pieces Metaspace leaves alone; it then
            # tokenizes as tokenizers does with those prefixes written out (as_llama_cpp_prefixes).
            seen_as = as_llama_cpp_prefixes(text, space)
            assert theirs == tokenizer.encode(seen_as, add_special_tokens=False).ids, repr(text)
            if seen_as != text:
                differing.append(text)
                assert theirs != tokenizer.encode(text, add_special_tokens=False).ids, repr(text)
    finally:
        llm.close()
    assert len(corpus) > 2000
    # e.g. " The quick brown fox": tokenizers ['▁T', 'h', ...], llama.cpp ['▁▁', 'T', 'h', ...]; and with
    # "first", "</s> and": tokenizers ['</s>', '▁and'], llama.cpp ['</s>', '▁', '▁and'].
    # Measured: 482 ("first") and 310 ("always") of the 2,348 texts; none for the other two.
    assert (len(differing) > 100) == (space in ("first", "always")), len(differing)


def test_byte_fallback_vocabulary_has_llama_cpp_token_types_and_merge_rank_scores(byte_fallback_converted):
    space, out, tokenizer = byte_fallback_converted
    with gguf.open(out) as f:
        meta = f.metadata
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    scores = meta["tokenizer.ggml.scores"]
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_space_prefix"] == (space != "never")
    assert [types[tokens.index(t)] for t in BYTE_TOKENS] == [convert.TOKEN_BYTE] * 256
    assert types[tokens.index("<unk>")] == convert.TOKEN_UNKNOWN
    assert {types[tokens.index(t)] for t in SPM_SPECIALS[1:]} == {convert.TOKEN_CONTROL}
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    for rank in (0, 1, len(merges) // 2, len(merges) - 1):
        left, right = merges[rank] if isinstance(merges[rank], list) else merges[rank].split(" ")
        assert scores[tokens.index(left + right)] == -rank
    assert tokens[meta["tokenizer.ggml.bos_token_id"]] == "<s>" and meta["tokenizer.ggml.add_bos_token"] is True


def test_a_metaspace_tokenizer_is_converted_with_a_warning_naming_the_difference(tmp_path, caplog):
    write_folder(tmp_path / "hf", "llama", cfg=BYTE_FALLBACK_CFG, write_tokenizer=byte_fallback_writer("first"))
    with caplog.at_level("WARNING", logger="edgesdk"):
        convert.convert_folder(tmp_path / "hf", tmp_path / "o.gguf")
    assert "follows a special token; llama.cpp does" in caplog.text


def _byte_fallback_folder(tmp_path, change) -> None:
    """A byte-fallback folder whose tokenizer.json `change` edits in place."""
    write_folder(tmp_path / "hf", "llama", cfg=BYTE_FALLBACK_CFG, write_tokenizer=byte_fallback_writer("prepend"))
    path = tmp_path / "hf" / "tokenizer.json"
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize("change, error, match", [
    (lambda t: t["model"]["vocab"].pop("<0x7F>"), ConversionError, r"lacks 1 byte tokens \(first <0x7F>\)"),
    (lambda t: t.update(normalizer={"type": "NFKC"}), UnsupportedModelError, "normalizer"),
    (lambda t: t.update(normalizer=None, pre_tokenizer={"type": "Metaspace", "replacement": "▁",
                                                        "prepend_scheme": "always", "split": True}),
     UnsupportedModelError, "non-splitting Metaspace"),
    (lambda t: t["model"].update(dropout=0.1), UnsupportedModelError, "dropout"),
    (lambda t: t["model"].update(ignore_merges=True), UnsupportedModelError, "ignore_merges"),
])
def test_a_byte_fallback_tokenizer_llama_cpp_would_read_otherwise_is_a_typed_error(tmp_path, change, error, match):
    _byte_fallback_folder(tmp_path, change)
    with pytest.raises(error, match=match):
        convert.convert_folder(tmp_path / "hf", tmp_path / "o.gguf")
    assert not (tmp_path / "o.gguf").exists()
