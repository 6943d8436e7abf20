"""The template sandbox's size and time limits: hostile templates are refused quickly, in bounded memory,
and the real templates of common model families render exactly as before the limits were tightened.

Hostile renders run in a child process (tests/template_bomb_child.py) whose
address space is capped, so a template the sandbox fails to bound fails its
test instead of taking the machine's memory.
"""
from __future__ import annotations

import json
import re
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgesdk import gguf
from edgesdk.errors import TemplateError
from edgesdk.template_sandbox import MAX_TEMPLATE_CHARS
from edgesdk.templates import BUILTIN_TEMPLATES, MAX_RENDER_CHARS, RENDER_TIME_LIMIT_S, ChatTemplate

from chat_templates_common import COMMON_TEMPLATES, SANDBOX_CONVERSATIONS, SYSTEMLESS

CHILD = Path(__file__).parent / "template_bomb_child.py"
# Peak memory one hostile render may add: the sandbox's whole allocation budget
# (MAX_RENDER_WORK_BYTES, 32 MiB), one value being built (up to 16 MiB) and
# Jinja's own objects. Unbounded, these templates take gigabytes.
HOSTILE_RSS_GROWTH_LIMIT = 64 << 20
# Refusals happen before the big allocation, in milliseconds; a template that
# only the deadline stops may finish one bounded C call after it.
HOSTILE_RENDER_SECONDS = RENDER_TIME_LIMIT_S + 1.5
# How long the parent waits for one answer before it kills the child: long
# enough for a slow CI machine, short enough that a hang fails the test.
CHILD_ANSWER_TIMEOUT_S = 60.0

BIG = "'x' * 4000000"
WIDE = "'日' * 1000000"            # non-Latin-1: every character taken out of it is a new str object
DAG_LIST = "{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(60) %}{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
DAG_TUPLE = "{% set ns = namespace(t=(1,)) %}{% for i in range(60) %}{% set ns.t = (ns.t, ns.t) %}{% endfor %}"
REFS = "{% set refs = ([0] * 1000) | map('default', " + BIG + ", true) | list %}"   # 1000 references to one big string
INT_TOWER = "{% set ns = namespace(n=10 ** 60) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}"
SANDBOX = "sandbox forbids"
HOSTILE = {
    # the issue's cases
    "percent star width": ("{{ ('%*s' % (1000000000, 'x')) | length }}", SANDBOX),
    "percent star width from **": ("{{ ('%*s' % (10 ** 9, 'x')) | length }}", SANDBOX),
    "format nested width": ("{{ '{:>{}}'.format('x', 10 ** 9) | length }}", SANDBOX),
    "bytes repeat": ("{{ ('x'.encode() * 1000000000) | length }}", SANDBOX),
    "bytes center": ("{{ 'x'.encode().center(1000000000) | length }}", SANDBOX),
    "bytes expandtabs": ("{{ '\\t'.encode().expandtabs(1000000000) | length }}", SANDBOX),
    "big separator join": ("{{ ('x' * 100000).join(range(20000) | map('string')) | length }}", SANDBOX),
    "tojson indent": ("{{ (range(1000) | list) | tojson(indent=100000000) | length }}", SANDBOX),
    "concat doubling": ("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(12) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}", SANDBOX),
    "int squaring": (INT_TOWER + "{{ ns.n > 0 }}", SANDBOX),
    "int power tower": ("{{ ((((7 ** 64) ** 64) ** 64) ** 64) > 0 }}", SANDBOX),
    # str methods, each argument within the old width cap but the product not
    "expandtabs product": ("{{ ('\\t' * 100000).expandtabs(100000) | length }}", SANDBOX),
    "zfill": ("{{ 'x'.zfill(1000000000) | length }}", SANDBOX),
    "translate": ("{{ ('x' * 10000).translate({120: 'y' * 1000000}) | length }}", SANDBOX),
    "percent key repeated": ("{{ (('%(a)s' * 1000) % {'a': " + BIG + "}) | length }}", SANDBOX),
    "format field repeated": ("{{ ('{0}' * 1000).format(" + BIG + ") | length }}", SANDBOX),
    "format_map width": ("{{ '{a:>{w}}'.format_map({'a': 'x', 'w': 1000000000}) | length }}", SANDBOX),
    "percent precision float": ("{{ ('%.*f' % (1000000000, 1.0)) | length }}", SANDBOX),
    "int to_bytes": ("{{ (1).to_bytes(1000000000, 'big') | length }}", SANDBOX),
    "split into new strings": ("{{ ('日 ' * 2000000).split() | length }}", SANDBOX),
    "concat chain": ("{% set s = " + BIG + " %}{% set t = s ~ s ~ s ~ s ~ s ~ s ~ s ~ s %}{{ (t ~ t ~ t ~ t) | length }}", SANDBOX),
    "plus chain": ("{% set s = " + BIG + " %}{% set t = s + s + s + s + s + s + s + s %}{{ (t + t + t + t) | length }}", SANDBOX),
    # sequences
    "nested list repeat joined": ("{{ ([['x'] * 4000000] * 4000000) | join | length }}", SANDBOX),
    "list of characters": ("{{ (" + WIDE + " * 4) | list | length }}", SANDBOX),
    "loop length over characters": ("{% for c in (" + WIDE + " * 4) | select %}{{ loop.length }}{% break %}{% endfor %}", SANDBOX),
    "references printed": (REFS + "{{ refs }}", SANDBOX),
    "references joined": (REFS + "{{ refs | join | length }}", SANDBOX),
    "references formatted": (REFS + "{{ ('%s' % (refs,)) | length }}", SANDBOX),
    "sum of lists": ("{{ ([[1] * 100000] * 1000) | sum(start=[]) | length }}", SANDBOX),
    "map center": ("{{ range(100000) | map('center', 100000) | list | length }}", SANDBOX),
    "dict repr": ("{% set s = " + BIG + " %}{{ dict(a=s, b=s, c=s, d=s, e=s, f=s, g=s, h=s) | string | length }}", SANDBOX),
    # structures that share their parts: small in memory, 2**60 to compare, hash, print or serialise
    "shared list compared": (DAG_LIST + "{{ ns.a == ns.b }}", SANDBOX),
    "shared list printed": (DAG_LIST + "{{ ns.a }}", SANDBOX),
    "shared list as json": (DAG_LIST + "{{ ns.a | tojson | length }}", SANDBOX),
    "shared tuple hashed": (DAG_TUPLE + "{{ {ns.t: 1} | length }}", SANDBOX),
    "shared list searched": (DAG_LIST + "{{ ns.b in [ns.a] }}", SANDBOX),
    # a tuple nested 100,000 deep: CPython hashes it by recursing in C, and crashes
    "deep tuple hashed": ("{% set ns = namespace(t=()) %}{% for i in range(100000) %}{% set ns.t = (ns.t,) %}"
                          "{% endfor %}{{ {ns.t: 1} | length }}", SANDBOX),
    # filters
    "replace filter": ("{{ ('x' * 4000) | replace('x', 'y' * 4000) | length }}", SANDBOX),
    "indent by a string": ("{{ ('a\\n' * 100000) | indent('x' * 100000) | length }}", SANDBOX),
    "batch fill": ("{{ [1] | batch(1000000000, 'x') | list | length }}", SANDBOX),
    "slice count": ("{{ range(10) | slice(100000000) | list | length }}", SANDBOX),
    "format filter star": ("{{ '%*s' | format(1000000000, 'x') | length }}", SANDBOX),
    "title of many words": ("{{ ('a ' * 2000000) | title | length }}", SANDBOX),
    "round precision": ("{{ 1.5 | round(1000000000, 'floor') }}", SANDBOX),
    "round negative precision": ("{{ 5 | round(-1000000000) }}", SANDBOX),
    "int of a long number": ("{{ ('9' * 1000000) | int > 0 }}", SANDBOX),
    "tojson indent string": ("{{ (range(1000) | list) | tojson(indent='x' * 100000) | length }}", SANDBOX),
    "strftime of a long format": ("{{ strftime_now('%c' * 1000000) | length }}", SANDBOX),
    # template-level buffers: macros, set blocks, filter blocks, blocks
    "macro output": ("{% macro m(s) %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endmacro %}{{ m(" + BIG + ") | length }}", SANDBOX),
    "set block": ("{% set s = " + BIG + " %}{% set t %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endset %}{{ t | length }}", SANDBOX),
    "filter block": ("{% set s = " + BIG + " %}{% filter length %}{% for i in range(1000) %}{{ s }}{% endfor %}{% endfilter %}", SANDBOX),
    "recursion holding copies": ("{% macro f(s, n) %}{% if n %}{{ f(s ~ 'x', n - 1) | length }}{% endif %}{% endmacro %}{{ f(" + BIG + ", 150) }}", SANDBOX),
    "block called as a function": ("{% block b %}{% if go is defined %}{% for i in range(1000) %}{{ " + BIG + " }}{% endfor %}"
                                   "{% endif %}{% endblock %}{% set go = 1 %}{{ self.b() | length }}", "sandbox forbids|unsafe"),
    # removed from what a template may call
    "lipsum": ("{{ lipsum(1000000) | length }}", "lipsum"),
    "pprint": (REFS + "{{ refs | pprint | length }}", "No filter named 'pprint'"),
    "wordwrap": ("{{ ('x ' * 1000000) | wordwrap(1, wrapstring='y' * 100000) | length }}", "No filter named 'wordwrap'"),
    "urlize": ("{{ ('www.x.com ' * 400000) | urlize | length }}", "No filter named 'urlize'"),
}

# Renders of the templates above with edgesdk at 0bbeb76 (before the sandbox was tightened).
EXPECTED_RENDERS = {
    ('llama3.1', 'one user turn', True):
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    ('llama3.1', 'one user turn', False):
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|>',
    ('llama3.1', 'system and turns', True):
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName three primary colors.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    ('llama3.1', 'system and turns', False):
        '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName three primary colors.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|eot_id|>',
    ('qwen2.5', 'one user turn', True):
        '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n',
    ('qwen2.5', 'one user turn', False):
        '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n',
    ('qwen2.5', 'system and turns', True):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n<|im_start|>assistant\n',
    ('qwen2.5', 'system and turns', False):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n',
    ('qwen3', 'one user turn', True):
        '<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n',
    ('qwen3', 'one user turn', False):
        '<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n',
    ('qwen3', 'system and turns', True):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n<|im_start|>assistant\n',
    ('qwen3', 'system and turns', False):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n',
    ('gemma2', 'one user turn', True):
        '<bos><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n<start_of_turn>model\n',
    ('gemma2', 'one user turn', False):
        '<bos><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n',
    ('gemma2', 'system and turns', True):
        '<bos><start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n<start_of_turn>model\n',
    ('gemma2', 'system and turns', False):
        '<bos><start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n',
    ('gemma3', 'one user turn', True):
        '<bos><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n<start_of_turn>model\n',
    ('gemma3', 'one user turn', False):
        '<bos><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n',
    ('gemma3', 'system and turns', True):
        '<bos><start_of_turn>user\n  You are terse.  \n\n\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n<start_of_turn>model\n',
    ('gemma3', 'system and turns', False):
        '<bos><start_of_turn>user\n  You are terse.  \n\n\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n',
    ('mistral', 'one user turn', True):
        '<s> [INST] What is 2 plus 2? [/INST]',
    ('mistral', 'one user turn', False):
        '<s> [INST] What is 2 plus 2? [/INST]',
    ('mistral', 'system and turns', True):
        '<s> [INST]   You are terse.  \n\n\nName three primary colors. [/INST] <think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.</s> [INST] Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0} [/INST]',
    ('mistral', 'system and turns', False):
        '<s> [INST]   You are terse.  \n\n\nName three primary colors. [/INST] <think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.</s> [INST] Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0} [/INST]',
    ('phi3', 'one user turn', True):
        '<|user|>\nWhat is 2 plus 2?<|end|>\n<|assistant|>\n',
    ('phi3', 'one user turn', False):
        '<|user|>\nWhat is 2 plus 2?<|end|>\n<|endoftext|>',
    ('phi3', 'system and turns', True):
        '<|system|>\n  You are terse.  \n<|end|>\n<|user|>\nName three primary colors.<|end|>\n<|assistant|>\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|end|>\n<|user|>\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|end|>\n<|assistant|>\n',
    ('phi3', 'system and turns', False):
        '<|system|>\n  You are terse.  \n<|end|>\n<|user|>\nName three primary colors.<|end|>\n<|assistant|>\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|end|>\n<|user|>\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|end|>\n<|endoftext|>',
    ('deepseek-r1', 'one user turn', True):
        '<｜begin▁of▁sentence｜><｜User｜>What is 2 plus 2?<｜Assistant｜><think>\n',
    ('deepseek-r1', 'one user turn', False):
        '<｜begin▁of▁sentence｜><｜User｜>What is 2 plus 2?',
    ('deepseek-r1', 'system and turns', True):
        '<｜begin▁of▁sentence｜>  You are terse.  \n<｜User｜>Name three primary colors.<｜Assistant｜>\n\nRed, blue and yellow.<｜end▁of▁sentence｜><｜User｜>Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<｜Assistant｜><think>\n',
    ('deepseek-r1', 'system and turns', False):
        '<｜begin▁of▁sentence｜>  You are terse.  \n<｜User｜>Name three primary colors.<｜Assistant｜>\n\nRed, blue and yellow.<｜end▁of▁sentence｜><｜User｜>Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}',
    ('smollm2', 'one user turn', True):
        '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n',
    ('smollm2', 'one user turn', False):
        '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n',
    ('smollm2', 'system and turns', True):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n<|im_start|>assistant\n',
    ('smollm2', 'system and turns', False):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n',
    ('builtin-chatml', 'one user turn', True):
        '<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n',
    ('builtin-chatml', 'one user turn', False):
        '<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n',
    ('builtin-chatml', 'system and turns', True):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n<|im_start|>assistant\n',
    ('builtin-chatml', 'system and turns', False):
        '<|im_start|>system\n  You are terse.  \n<|im_end|>\n<|im_start|>user\nName three primary colors.<|im_end|>\n<|im_start|>assistant\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|im_end|>\n<|im_start|>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|im_end|>\n',
    ('builtin-llama3', 'one user turn', True):
        '<s><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    ('builtin-llama3', 'one user turn', False):
        '<s><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 plus 2?<|eot_id|>',
    ('builtin-llama3', 'system and turns', True):
        '<s><|start_header_id|>system<|end_header_id|>\n\n  You are terse.  \n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName three primary colors.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
    ('builtin-llama3', 'system and turns', False):
        '<s><|start_header_id|>system<|end_header_id|>\n\n  You are terse.  \n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName three primary colors.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|eot_id|>',
    ('builtin-llama2', 'one user turn', True):
        '<s>[INST] What is 2 plus 2? [/INST]',
    ('builtin-llama2', 'one user turn', False):
        '<s>[INST] What is 2 plus 2? [/INST]',
    ('builtin-llama2', 'system and turns', True):
        '<s>[INST] <<SYS>>\n  You are terse.  \n\n<</SYS>>\n\nName three primary colors. [/INST] <think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow. </s><s>[INST] Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0} [/INST]',
    ('builtin-llama2', 'system and turns', False):
        '<s>[INST] <<SYS>>\n  You are terse.  \n\n<</SYS>>\n\nName three primary colors. [/INST] <think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow. </s><s>[INST] Ünïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0} [/INST]',
    ('builtin-gemma', 'one user turn', True):
        '<s><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n<start_of_turn>model\n',
    ('builtin-gemma', 'one user turn', False):
        '<s><start_of_turn>user\nWhat is 2 plus 2?<end_of_turn>\n',
    ('builtin-gemma', 'system and turns', True):
        '<s><start_of_turn>user\n  You are terse.  \n\n\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n<start_of_turn>model\n',
    ('builtin-gemma', 'system and turns', False):
        '<s><start_of_turn>user\n  You are terse.  \n\n\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<end_of_turn>\n<start_of_turn>user\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<end_of_turn>\n',
    ('builtin-phi3', 'one user turn', True):
        '<|user|>\nWhat is 2 plus 2?<|end|>\n<|assistant|>\n',
    ('builtin-phi3', 'one user turn', False):
        '<|user|>\nWhat is 2 plus 2?<|end|>\n',
    ('builtin-phi3', 'system and turns', True):
        '<|system|>\n  You are terse.  \n<|end|>\n<|user|>\nName three primary colors.<|end|>\n<|assistant|>\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|end|>\n<|user|>\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|end|>\n<|assistant|>\n',
    ('builtin-phi3', 'system and turns', False):
        '<|system|>\n  You are terse.  \n<|end|>\n<|user|>\nName three primary colors.<|end|>\n<|assistant|>\n<think>\nprimary: red, yellow, blue\n</think>\n\nRed, blue and yellow.<|end|>\n<|user|>\nÜnïcödé — 日本語 🚀 tabs\tand\nnewlines {{ not a tag }} %s {0}<|end|>\n',
}


# Expressions real templates use: the sandbox must render each exactly as plain Jinja does.
LEGIT = [
    # str methods
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ ' a'.lstrip() }}|{{ 'a\\n'.rstrip('\\n') }}",
    "{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ 'x\\ny\\r\\nz'.splitlines() }}",
    "{{ 'k=v=w'.partition('=') }}|{{ 'k=v=w'.rpartition('=') }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}",
    "{{ 'banana'.find('an') }}|{{ 'banana'.rfind('an') }}|{{ 'banana'.count('a') }}|{{ 'banana'.index('n') }}",
    "{{ 'aXa'.replace('a', 'bb') }}|{{ 'aaa'.replace('a', 'b', 2) }}|{{ 'ab'.replace('', '-') }}",
    "{{ 'ßtraße ﬃ'.upper() }}|{{ 'ÀB'.lower() }}|{{ 'hello world'.title() }}|{{ 'hELLO'.capitalize() }}|{{ 'Aß'.casefold() }}",
    "{{ 'ab'.center(7, '*') }}|{{ 'ab'.ljust(5) }}.|{{ 'ab'.rjust(5, '0') }}|{{ '-7'.zfill(5) }}|{{ 'a\\tb'.expandtabs(4) }}",
    "{{ ', '.join(['a', 'b']) }}|{{ ''.join(messages | map(attribute='role')) }}|{{ 'pre-x'.removeprefix('pre-') }}",
    "{{ '12'.isdigit() }}{{ 'a1'.isalnum() }}{{ ' '.isspace() }}{{ 'Ab'.istitle() }}{{ 'x'.isidentifier() }}",
    # formatting
    "{{ '{}-{:>5}|{:<4}|{:^6}'.format('a', 'b', 'c', 'd') }}|{{ '{0}{1}{0}'.format('x', 'y') }}|{{ '{k}'.format(k=3) }}",
    "{{ '{:05.2f}|{:,}|{:x}|{:b}|{:.3}|{!r}'.format(3.14159, 1234567, 255, 5, 'abcdef', 'q') }}",
    "{{ '{a}-{b}'.format_map({'a': 1, 'b': 2}) }}|{{ '{0[role]}'.format(messages[0]) }}",
    "{{ '%s=%d' % ('a', 3) }}|{{ '%5.2f|%-4s|%03d|%x|%r' % (3.14159, 'ab', 7, 255, 'q') }}|{{ '%(k)s!' % {'k': 1} }}",
    "{{ '%*d|%.*f|%%' % (5, 42, 2, 1.5) }}|{{ '%s' % [1, 'a'] }}|{{ '%c%c' % (65, 'b') }}",
    "{{ '%s-%s' | format(1, 2) }}|{{ '%(a)s' | format(a='x') }}",
    # filters on strings
    "{{ '  x ' | trim }}|{{ 'xyx' | trim('x') }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'a-b c' | title }}|{{ 'aB' | capitalize }}",
    "{{ 'ab' | center(6) }}|{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('> ', blank=true) }}",
    "{{ 'aXa' | replace('a', 'b') }}|{{ 'aaa' | replace('a', 'b', 1) }}|{{ 12 | replace('1', 'x') }}",
    "{{ 'hello world foo bar' | truncate(11) }}|{{ 'hello world foo' | truncate(9, true, '~') }}|{{ 'short' | truncate(10) }}",
    "{{ '<a href=\"x\">&' | e }}|{{ '<b>' | escape }}|{{ '<i>' | forceescape }}|{{ '<s>' | safe }}|{{ 5 | string }}",
    "{{ 'abc' | reverse }}|{{ 'abc' | list }}|{{ 'abc' | first }}|{{ 'abc' | last }}|{{ 'abc' | length }}",
    # filters on sequences
    "{{ [3, 1, 2] | sort }}|{{ ['b', 'A', 'c'] | sort }}|{{ [3, 1, 2] | sort(reverse=true) }}|{{ ['a', 'A', 'b'] | unique | list }}",
    "{{ [1, 2, 3] | reverse | list }}|{{ [1, 2, 3] | first }}|{{ [1, 2, 3] | last }}|{{ [1, 2, 3] | min }}|{{ ['a', 'B'] | max }}",
    "{{ [1, 2, 3] | sum }}|{{ [1.5, 2] | sum(start=1) }}|{{ messages | map(attribute='content') | map('length') | sum }}",
    "{{ [1, 2, 3, 4, 5] | batch(2) | list }}|{{ [1, 2, 3] | batch(2, 'x') | list }}|{{ [1, 2, 3, 4, 5] | slice(2) | list }}",
    "{{ [1, 2, 3] | join('-') }}|{{ messages | join(', ', attribute='role') }}|{{ [1, 'a'] | join }}",
    "{% for g in messages | groupby('role') %}{{ g.grouper }}={{ g.list | length }};{% endfor %}",
    "{{ messages | map(attribute='role') | list }}|{{ [1, 2, 3, 4] | select('odd') | list }}|{{ [1, 2] | reject('equalto', 1) | list }}",
    "{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|{{ messages | rejectattr('role', 'in', ['user']) | list | length }}",
    "{{ {'b': 1, 'a': 2} | dictsort }}|{{ {'b': 1, 'a': 2} | dictsort(by='value') }}|{{ {'a': 1} | items | list }}",
    "{{ '42' | int }}|{{ '4.7' | int }}|{{ 'x' | int(-1) }}|{{ '0x1f' | int(0, 16) }}|{{ '2.5' | float }}|{{ -3 | abs }}",
    "{{ 2.567 | round(2) }}|{{ 2.5 | round(0, 'floor') }}|{{ 2.1 | round(0, 'ceil') }}|{{ 1500000 | filesizeformat }}",
    "{{ none | default('d') }}|{{ undefined_name | d('u') }}|{{ '' | default('e', true) }}|{{ messages[0] | attr('items') is callable }}",
    "{{ messages | tojson }}|{{ {'a': [1, {'b': None}], 'c': 'é\\n'} | tojson(indent=2) }}|{{ [1, 2] | tojson(separators=(',', ':')) }}",
    "{{ {'k': 'ü'} | tojson(ensure_ascii=true) }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ [] | tojson(indent=4) }}|{{ {} | tojson(indent='\\t') }}",
    # operators, literals, slicing, tests
    "{{ 'a' ~ 1 ~ none ~ [1] ~ {'k': 'v'} }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ (1,) + (2, 3) }}|{{ 'ab' * 3 }}|{{ [0] * 3 }}|{{ 3 * 'x' }}",
    "{{ 7 - 2 }}|{{ 7 / 2 }}|{{ 7 // 2 }}|{{ 7 % 3 }}|{{ 2 ** 10 }}|{{ 2 ** -1 }}|{{ 1.5 * 2 }}|{{ 10 ** 20 * 10 ** 20 }}",
    "{{ 'abcdef'[1:3] }}|{{ 'abc'[::-1] }}|{{ messages[1:] | length }}|{{ messages[-1].role }}|{{ [1, 2, 3][::2] }}|{{ (1, 2)[0] }}",
    "{{ 1 < 2 < 3 }}|{{ 'a' in 'abc' }}|{{ 'x' not in ['a'] }}|{{ [1, [2]] == [1, [2]] }}|{{ {'a': 1} == {'a': 1} }}",
    "{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ none is none }}{{ 'x' is string }}{{ {} is mapping }}{{ 1 is number }}{{ x is defined }}",
    # loops, namespaces, macros, blocks
    "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for m in messages %}{{ loop.previtem.role if loop.previtem }}>{{ loop.nextitem.role if loop.nextitem }};{% if loop.changed(m.role) %}c{% endif %}{% endfor %}",
    "{% for x in [[1, [2]], [3]] recursive %}[{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}]{% endfor %}",
    "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% else %}none{% endfor %}",
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}",
    "{% macro tag(name, body='') %}<{{ name }}>{{ body }}{{ caller() if caller }}</{{ name }}>{% endmacro %}{{ tag('a', 'x') }}{% call tag('b') %}in{% endcall %}",
    "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
    "{% set block %}line1\\nline2{% endset %}{{ block | indent(1) }}|{% filter upper %}shout {{ messages[0].role }}{% endfilter %}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}|{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('z', 0) }}",
    "{{ messages[0].keys() | list }}|{{ messages[0].values() | list | length }}|{{ [1, 2, 1].count(1) }}|{{ [1, 2].index(2) }}",
    "{% set c = cycler('x', 'y') %}{{ c.next() }}{{ c.next() }}{{ c.current }}|{% set j = joiner('+') %}{{ j() }}a{{ j() }}b|{{ dict(a=1, b=2) }}|{{ range(3) | list }}",
    "{% with x = 5 %}{{ x }}{% endwith %}|{% raw %}{{ raw }}{% endraw %}|{{ messages[0]['role'] | length }}|{{ messages | length > 0 }}",
    "{{- ' trimmed ' -}}|{%- if true %} kept {% endif -%}|",
]

LEGIT_MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 'Hi <there> & "you"'},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Ünï 日本 🚀"}]
# A conversation near the output cap, in two-byte characters: 40 turns, 3.3 M characters in all.
NEAR_CAP_CONVERSATION = [{"role": "user" if i % 2 == 0 else "assistant", "content": "日本語のテキスト。" * (i + 1) * 450}
                         for i in range(40)]
# Rendering 3.3 M characters through Jinja takes tens of milliseconds; this leaves room for a slow machine.
NEAR_CAP_RENDER_SECONDS = RENDER_TIME_LIMIT_S


def _plain_jinja(source: str):
    """Jinja's own sandbox with Hugging Face's options and tojson: the reference the sandbox must match."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
        json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = lambda message: None
    return env.from_string(source)


class BombChild:
    """A long-lived template_bomb_child.py process; restarted after a request that killed or hung it."""

    def __init__(self):
        self.proc = None

    def _start(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CHILD.parent.parent), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)

    def run(self, source: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"source": source}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CHILD_ANSWER_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            status = "hung" if self.proc.poll() is None else f"died with status {self.proc.returncode}"
            self.close()
            return {"outcome": f"child {status}", "message": "", "seconds": float("nan"), "rss_growth": 0}
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def bomb_child():
    child = BombChild()
    yield child
    child.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_refused_quickly_in_bounded_memory(bomb_child, name):
    source, expected_message = HOSTILE[name]
    result = bomb_child.run(source)
    assert result["outcome"] == "TemplateError", result
    assert re.search(expected_message, result["message"]), result
    assert result["seconds"] < HOSTILE_RENDER_SECONDS, result
    assert result["rss_growth"] < HOSTILE_RSS_GROWTH_LIMIT, result


@pytest.fixture(scope="module")
def real_templates(smollm2_path):
    """name -> (source, bos, eos): the common families, SmolLM2's own template, and the built-in ones."""
    with gguf.open(smollm2_path) as f:
        smol = f.metadata["tokenizer.chat_template"]
    sources = dict(COMMON_TEMPLATES)
    sources["smollm2"] = (smol, "<|im_start|>", "<|im_end|>")
    for name, source in BUILTIN_TEMPLATES.items():
        sources["builtin-" + name] = (source, "<s>", "</s>")
    return sources


@pytest.mark.parametrize("key", sorted(EXPECTED_RENDERS), ids=lambda k: f"{k[0]}-{k[1]}-{'gen' if k[2] else 'nogen'}")
def test_real_template_renders_byte_for_byte_as_before(real_templates, key):
    name, conversation, add_generation_prompt = key
    source, bos, eos = real_templates[name]
    messages = SANDBOX_CONVERSATIONS[conversation]
    if name in SYSTEMLESS and messages[0]["role"] == "system":
        messages = messages[1:]
    assert ChatTemplate(source, bos, eos).render_text(messages, add_generation_prompt) == EXPECTED_RENDERS[key]


@pytest.mark.parametrize("source", LEGIT)
def test_allowed_operations_render_exactly_as_plain_jinja(source):
    variables = dict(messages=LEGIT_MESSAGES, add_generation_prompt=True, bos_token="", eos_token="")
    assert ChatTemplate(source).render_text(LEGIT_MESSAGES) == _plain_jinja(source).render(**variables)


@pytest.mark.parametrize("name", sorted(COMMON_TEMPLATES))
def test_real_template_renders_a_conversation_near_the_output_cap_as_plain_jinja(name):
    source, bos, eos = COMMON_TEMPLATES[name]
    messages = NEAR_CAP_CONVERSATION
    expected = _plain_jinja(source).render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)
    assert 3_000_000 < len(expected) < MAX_RENDER_CHARS
    started = time.monotonic()
    assert ChatTemplate(source, bos, eos).render_text(messages) == expected
    assert time.monotonic() - started < NEAR_CAP_RENDER_SECONDS


def test_template_source_longer_than_the_cap_is_refused_before_compiling():
    with pytest.raises(TemplateError, match=f"at most {MAX_TEMPLATE_CHARS}"):
        ChatTemplate("{{ 'x' }}" * (MAX_TEMPLATE_CHARS // 9 + 1))


def test_autoescape_block_is_refused_at_compile_time():
    with pytest.raises(TemplateError, match="does not compile.*autoescape"):
        ChatTemplate("{% autoescape true %}{{ messages }}{% endautoescape %}")


def test_deadline_stops_long_work_inside_jinja_filters_not_only_template_loops():
    # One template line; the work is 5 million filter calls in Jinja's map generators, which the
    # deadline sees at each Python call (it traces only the template's own lines line by line).
    source = "{{ range(100000)" + " | map('abs')" * 50 + " | sum }}"
    started = time.monotonic()
    with pytest.raises(TemplateError, match="longer than"):
        ChatTemplate(source).render_text([{"role": "user", "content": "hi"}])
    assert time.monotonic() - started < HOSTILE_RENDER_SECONDS
