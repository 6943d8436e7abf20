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
from pathlib import Path

import pytest

from edgesdk import gguf
from edgesdk.errors import TemplateError
from edgesdk.templates import BUILTIN_TEMPLATES, RENDER_TIME_LIMIT_S, ChatTemplate

from chat_templates_common import COMMON_TEMPLATES, SANDBOX_CONVERSATIONS, SYSTEMLESS

CHILD = Path(__file__).parent / "template_bomb_child.py"
# Peak memory one hostile render may add: the sandbox's whole allocation budget
# (MAX_RENDER_WORK_BYTES, 32 MiB) plus Jinja's and the interpreter's own
# objects. Unbounded, these templates take gigabytes.
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
    # the cases
    "percent star width": ("{{ ('%*s' % (1000000000, 'x')) | length }}", SANDBOX),
    "percent star width from **": ("{{ ('%*s' % (10 ** 9, 'x')) | length }}", SANDBOX),
    "format nested width": ("{{ '{:>{}}'.format('x', 10 ** 9) | length }}", SANDBOX),
    "bytes repeat": ("{{ ('x'.encode() * 1000000000) | length }}", SANDBOX),
    "bytes center": ("{{ 'x'.encode().center(1000000000) | length }}", SANDBOX),
    "bytes expandtabs": ("{{ '\\t'.encode().expandtabs(1000000000) | length }}", SANDBOX),
    "big separator join": ("{{ ('x' * 100000).join(range(100000) | map('string')) | length }}", SANDBOX),
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
