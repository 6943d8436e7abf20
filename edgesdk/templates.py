"""Chat templates: the model's own Jinja template, sandboxed, or a built-in one.

The model's template is compiled and rendered in edgesdk.template_sandbox,
which bounds its time and every allocation; any failure is a TemplateError
saying what happened.

Message contents must never become special tokens: the template is rendered
with a slot marker in place of each message's content, the result is split into
scaffolding (tokenized with special-token parsing) and contents (tokenized as
plain text). A check render with the real contents proves that the slot markers
stood exactly where the contents go; a template that transforms contents in a
way the check cannot explain is rendered with the built-in template instead.

Built-in templates (ChatML, Llama-2, Llama-3, Gemma, Phi-3) serve models that
carry none, chosen from the architecture and the vocabulary.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import ChatFormatError, TemplateError
from .template_sandbox import MAX_RENDER_CHARS, RENDER_TIME_LIMIT_S, compile_template, render

log = logging.getLogger("edgesdk")

ROLES = ("system", "user", "assistant")
TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL = 2, 3     # GGUF tokenizer.ggml.token_type values

# Slot marker around a content index: private-use code points no tokenizer
# scaffolding contains and that template filters such as trim/upper leave alone.
_SLOT_OPEN, _SLOT_CLOSE = "\U000F0001", "\U000F0002"


# -- built-in templates (written for edgesdk) ---------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA2 = (
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = '<<SYS>>\n' ~ m['content'] ~ '\n<</SYS>>\n\n' %}"
    "{% elif m['role'] == 'user' %}{{ bos_token }}[INST] {{ ns.system }}{{ m['content'] }} [/INST]"
    "{% set ns.system = '' %}"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}"
    "{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] ~ '\n\n' %}"
    "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if m['role'] == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
BUILTIN_TEMPLATES: Dict[str, str] = {
    "chatml": CHATML, "llama3": LLAMA3, "llama2": LLAMA2, "gemma": GEMMA, "phi3": PHI3,
}


def builtin_family(architecture: Optional[str], token_texts: "set[str]") -> str:
    """Which built-in template fits a model, from its architecture and its special tokens."""
    arch = (architecture or "").lower()
    if arch.startswith("gemma") or "<start_of_turn>" in token_texts:
        return "gemma"
    if "<|start_header_id|>" in token_texts and "<|eot_id|>" in token_texts:
        return "llama3"
    if arch.startswith("phi3") or ("<|user|>" in token_texts and "<|end|>" in token_texts):
        return "phi3"
    if "<|im_start|>" in token_texts:
        return "chatml"
    if arch == "llama" and "[INST]" not in token_texts and "<s>" in token_texts:
        return "llama2"
    return "chatml"


class _ContentsNotSeparable(TemplateError):
    """The template rewrites contents so that scaffolding and contents cannot be told apart."""


@dataclass
class RenderedPrompt:
    """A rendered conversation: the text, and its pieces marked scaffolding or content."""
    text: str
    segments: List[Tuple[str, bool]]    # (text, is_content)


class ChatTemplate:
    """One compiled chat template and the special strings it may use."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", name: str = "model"):
        if not isinstance(source, str) or not source.strip():
            raise TemplateError("the chat template is empty")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = compile_template(source, name)

    def render_text(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The template's output for these messages, within the sandbox's time and size limits."""
        variables = dict(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
                         bos_token=self.bos_token, eos_token=self.eos_token)
        return render(self._template, variables, self.name)

    def render(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True) -> RenderedPrompt:
        """Render with contents kept apart from scaffolding (see the module docstring)."""
        slotted = [dict(m, content=f"{_SLOT_OPEN}{i}{_SLOT_CLOSE}") for i, m in enumerate(messages)]
        marked = self.render_text(slotted, add_generation_prompt)
        exact = self.render_text(messages, add_generation_prompt)
        contents = [m["content"] for m in messages]
        for transform in (lambda s: s, str.strip):
            segments = _split_marked(marked, [transform(c) for c in contents])
            if segments is not None and "".join(text for text, _ in segments) == exact:
                return RenderedPrompt(exact, segments)
        raise _ContentsNotSeparable(f"the {self.name} chat template changes message contents in a way that cannot be "
                            "kept apart from its scaffolding")


def _split_marked(marked: str, contents: List[str]) -> Optional[List[Tuple[str, bool]]]:
    segments: List[Tuple[str, bool]] = []
    pos = 0
    while True:
        open_at = marked.find(_SLOT_OPEN, pos)
        if open_at < 0:
            break
        close_at = marked.find(_SLOT_CLOSE, open_at)
        if close_at < 0:
            return None
        index_text = marked[open_at + 1:close_at]
        # The template may print slot markers itself: ASCII digits only (str.isdigit() accepts '²',
        # which int() refuses), and no longer than the largest index, so that int() stays cheap.
        if (not (index_text.isascii() and index_text.isdigit()) or len(index_text) > len(str(len(contents)))
                or int(index_text) >= len(contents)):
            return None
        if open_at > pos:
            segments.append((marked[pos:open_at], False))
        segments.append((contents[int(index_text)], True))
        pos = close_at + 1
    if pos < len(marked):
        segments.append((marked[pos:], False))
    if _SLOT_CLOSE in "".join(text for text, is_content in segments if not is_content):
        return None
    return segments


def validate_messages(messages: Any) -> List[Dict[str, str]]:
    """OpenAI-style messages checked and copied: a non-empty list of {role, content: str}."""
    if not isinstance(messages, (list, tuple)):
        raise ChatFormatError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ChatFormatError("the conversation is empty: give at least one message")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ChatFormatError(f"message {i} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ChatFormatError(f"message {i} ({role}) content must be a string, got {type(content).__name__}")
        if _SLOT_OPEN in content or _SLOT_CLOSE in content:
            raise ChatFormatError(f"message {i} contains reserved code points U+F0001/U+F0002")
        checked.append({"role": role, "content": content})
    return checked


class ChatFormatter:
    """Turns messages into prompt ids for one model: its template or a built-in one.

    `special_tokens` maps the text of every control token to its id (GGUF token
    type CONTROL or UNKNOWN): the strings that special-token parsing turns into
    single ids. Tokenization mirrors llama.cpp's: the rendered text is split at
    special-token strings, longest first, and the text between two of them is
    tokenized as one plain string; only, a special-token string inside a
    message's content is not split at, so it stays plain text.
    """

    def __init__(self, tokenizer, chat_template: Optional[str], architecture: Optional[str],
                 special_tokens: Dict[str, int]):
        self.tokenizer = tokenizer
        self.special_tokens = dict(special_tokens)
        bos = _token_text_or_empty(tokenizer, tokenizer.bos_id)
        eos = _token_text_or_empty(tokenizer, tokenizer.eos_id)
        self.template: Optional[ChatTemplate] = None
        self.fallback_reason: Optional[str] = None
        if chat_template:
            try:
                self.template = ChatTemplate(chat_template, bos, eos, name="model's")
            except TemplateError as exc:
                self.fallback_reason = str(exc)
        else:
            self.fallback_reason = "the model carries no chat template"
        family = builtin_family(architecture, set(self.special_tokens))
        self.builtin_family = family
        self.builtin = ChatTemplate(BUILTIN_TEMPLATES[family], bos, eos, name=f"built-in {family}")
        if self.template is None:
            log.info("chat template: using the built-in %s template (%s)", family, self.fallback_reason)

    @property
    def template_name(self) -> str:
        return "model" if self.template is not None else f"built-in {self.builtin_family}"

    def render(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True) -> RenderedPrompt:
        messages = validate_messages(messages)
        if self.template is not None:
            try:
                return self.template.render(messages, add_generation_prompt)
            except _ContentsNotSeparable as exc:
                log.warning("chat template: %s; using the built-in %s template", exc, self.builtin_family)
        return self.builtin.render(messages, add_generation_prompt)

    def encode(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True) -> List[int]:
        """Prompt ids: special tokens parsed in the scaffolding only, contents as plain text."""
        rendered = self.render(messages, add_generation_prompt)
        # Fragments: str for raw text, int for a special token id; contents are never split.
        fragments: List[Tuple[Union[str, int], bool]] = [(text, is_content) for text, is_content in rendered.segments]
        scaffolding = "".join(text for text, is_content in rendered.segments if not is_content)
        present = sorted((t for t in self.special_tokens if t and t in scaffolding), key=len, reverse=True)
        for special in present:
            split: List[Tuple[Union[str, int], bool]] = []
            for item, is_content in fragments:
                if is_content or not isinstance(item, str) or special not in item:
                    split.append((item, is_content))
                    continue
                parts = item.split(special)
                for k, part in enumerate(parts):
                    if k:
                        split.append((self.special_tokens[special], False))
                    if part:
                        split.append((part, False))
            fragments = split
        tok = self.tokenizer
        ids: List[int] = []
        raw: List[str] = []
        for item, _ in fragments + [(-1, False)]:
            if isinstance(item, str):
                raw.append(item)
                continue
            if raw:
                ids.extend(tok.encode("".join(raw), add_special=False, parse_special=False))
                raw = []
            if item >= 0:
                ids.append(item)
        bos_id = tok.bos_id
        if tok.add_bos and bos_id is not None and 0 <= bos_id < tok.n_vocab and (not ids or ids[0] != bos_id):
            ids.insert(0, bos_id)
        return ids


def _token_text_or_empty(tokenizer, token_id: Optional[int]) -> str:
    if token_id is None or not 0 <= token_id < tokenizer.n_vocab:
        return ""
    return tokenizer.token_text(token_id)


def special_tokens_from_gguf(metadata: Dict[str, Any]) -> Dict[str, int]:
    """Text -> id of the control (and unknown) tokens of a GGUF vocabulary."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    types = metadata.get("tokenizer.ggml.token_type")
    if tokens is None or types is None:
        return {}
    found: Dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if int(kind) in (TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL) and text not in found:
            found[text] = i
    return found


__all__ = ["ChatTemplate", "ChatFormatter", "RenderedPrompt", "BUILTIN_TEMPLATES", "builtin_family",
           "validate_messages", "special_tokens_from_gguf", "RENDER_TIME_LIMIT_S", "MAX_RENDER_CHARS"]
