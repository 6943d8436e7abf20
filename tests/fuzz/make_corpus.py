"""Write the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/); run once, commit the output.

    python tests/fuzz/make_corpus.py

Seeds are small valid inputs (and a few nearly valid ones) that reach deep into each reader: a GGUF of
every value type and a tiny model with a vocabulary, texts in several scripts, the real chat templates,
session files with and without a KV cache. Inputs that found bugs are added next to them by hand,
named finding-*.
"""
from __future__ import annotations

import hashlib
import json
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

import gguf_craft  # noqa: E402
from chat_templates_common import COMMON_TEMPLATES  # noqa: E402
from tiny_gguf import TinyConfig, write_tiny  # noqa: E402

from edgesdk import gguf, registry  # noqa: E402
from edgesdk.chat import SESSION_MAGIC, SESSION_VERSION  # noqa: E402
from edgesdk.templates import BUILTIN_TEMPLATES  # noqa: E402

CORPUS = HERE / "corpus"
TINY = TinyConfig(n_vocab=12, n_embd=8, n_layer=1, n_head=2, n_head_kv=1, head_dim=4, n_ff=8, context_length=32)


def write(target: str, name: str, data: bytes) -> None:
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def gguf_seeds() -> None:
    valid = gguf_craft.small_valid().data
    write("gguf", "small_valid.gguf", valid)
    write("gguf", "small_valid_truncated.gguf", valid[: len(valid) // 2])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        write_tiny(path, TINY, vocab=True)
        write("gguf", "tiny_llama_with_vocab.gguf", path.read_bytes())


def tokenizer_seeds() -> None:
    texts = {
        "english.txt": "The quick brown fox jumps over the lazy dog. It's 3:14 pm, isn't it?",
        "code.txt": "def f(x):\n\treturn {'a': [1, 2.5e-3, None]}  # comment\n",
        "cjk.txt": "日本語のテキスト。中文文本。한국어 텍스트.",
        "emoji_and_marks.txt": "🚀👍🏽 e\u0301 Ünïcödé \u200d\u2028\ufeff",
        "whitespace.txt": "  leading\n\n\ttabs   and\r\nCRLF   \u00a0nbsp ",
        "special_tokens.txt": "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|im_start|>",
    }
    for name, text in texts.items():
        write("tokenizer", name, text.encode("utf-8"))
    write("tokenizer", "invalid_utf8.bin", b"ok\xff\xfe\xc3(\xe2\x82\xf0\x9f\x98")


def template_seeds() -> None:
    # source, then NUL-separated message contents (see fuzz_template.py)
    contents = "\0You are terse.\0Hi {{ there }} <|im_end|>\0Hello!".encode("utf-8")
    sources = {name: source for name, (source, _, _) in COMMON_TEMPLATES.items()}
    sources.update({"builtin-" + name: source for name, source in BUILTIN_TEMPLATES.items()})
    with gguf.open(registry.pull("smollm2-135m-instruct")) as f:
        sources["smollm2"] = f.metadata["tokenizer.chat_template"]
    for name, source in sources.items():
        write("template", name + ".jinja", source.encode("utf-8") + contents)
    write("template", "bounded-ops.jinja",
          b"{% set ns = namespace(s='ab') %}{% for i in range(3) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
          b"{{ ns.s | length }}{{ '%5s|%-3d' % ('x', 7) }}{{ '{:>4}'.format(1) }}{{ [1, 2] * 2 }}"
          b"{{ messages | tojson(indent=2) }}{{ 'a b'.split() | join(',') }}{{ (2 ** 10) // 3 }}")


def session_file(history, state: bytes) -> bytes:
    # The layout edgesdk.chat.ChatSession.save writes.
    header = json.dumps({
        "version": SESSION_VERSION, "identity": {"gguf_sha256": "0" * 64, "backend": "native", "n_ctx": 64},
        "model": "fuzz", "system": "Be brief.", "history": history, "sampling": {"temperature": 0.5},
        "reserve": None, "cache_ids": list(range(len(state) // 2)), "n_past": len(state) // 2,
    }).encode("utf-8")
    body = SESSION_MAGIC + struct.pack("<IQ", SESSION_VERSION, len(header)) + header
    body += struct.pack("<Q", len(state)) + state
    return body + hashlib.sha256(body).digest()


def session_seeds() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    for name, raw in {"with_cache": session_file(history, bytes(range(16))), "no_cache": session_file([], b"")}.items():
        write("session", name + ".raw", b"\0" + raw)                # read as it is
        write("session", name + ".unsummed", b"\1" + raw[:-32])     # the target appends the checksum


def http_seeds() -> None:
    """Request bodies of both endpoints; the first byte picks the endpoint (even: chat)."""
    chat = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
            "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n", "END"], "stream": True,
            "stream_options": {"include_usage": True}, "n": 1, "presence_penalty": 0}
    text = {"model": "m", "prompt": "Once upon a time", "max_tokens": 8, "top_k": 40, "min_p": 0.05,
            "repeat_penalty": 1.1, "echo": False, "logprobs": None}
    ids = {"model": "m", "prompt": [1, 2, 3], "max_completion_tokens": 4}
    write("http", "chat.json", b"\0" + json.dumps(chat).encode())
    write("http", "text.json", b"\1" + json.dumps(text).encode())
    write("http", "ids.json", b"\1" + json.dumps(ids).encode())
    write("http", "bad_types.json", b"\0" + json.dumps(dict(chat, temperature="hot", stop=[1])).encode())


if __name__ == "__main__":
    gguf_seeds()
    tokenizer_seeds()
    template_seeds()
    session_seeds()
    http_seeds()
