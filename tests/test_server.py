"""edgesdk serve's HTTP API with the real openai client and raw httpx, on loopback, against SmolLM2.

Answers are compared with Model.chat / Model.generate on a model of their own
(greedy, or seeded), computed before the servers start. The hostile half
sends what a hostile or broken client would, and checks that the others keep
being served."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import edgesdk
from edgesdk.errors import InvalidArgumentError
from edgesdk.serve.http import OpenAIServer, ServerSettings, host_header_allowed
from edgesdk.serve.openai_api import RequestLimits

N_CTX = 512
LOAD = dict(backend="native", n_ctx=N_CTX, threads=1)
MAX_TOKENS_CAP = 48
API_KEY = "test-key-0123456789abcdef"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish."]
TEXT_PROMPT = "The three primary colors are"
BODY_CAP = 64 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def chat_messages(question):
    return [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def refs(smollm2_path):
    """Single-user answers: greedy chat per question, a seeded one, a text completion, one with the cap."""
    m = edgesdk.load(str(smollm2_path), **LOAD)
    try:
        out = {"model": m.name}
        for q in QUESTIONS:
            out[q] = m.chat(chat_messages(q), temperature=0, max_tokens=24)["choices"][0]["message"]["content"]
        out["seeded"] = m.chat(chat_messages(QUESTIONS[1]), temperature=0.8, seed=99,
                               max_tokens=24)["choices"][0]["message"]["content"]
        out["text"] = m.generate(TEXT_PROMPT, temperature=0, max_tokens=16)
        out["text_stop"] = m.generate(TEXT_PROMPT, temperature=0, max_tokens=16, stop=[","])
        out["capped"] = m.generate(TEXT_PROMPT, temperature=0, max_tokens=MAX_TOKENS_CAP)   # the server's cap
        out["capped_tokens"] = m.last_stats.completion_tokens
        return out
    finally:
        m.close()


def start(model, **settings):
    settings.setdefault("limits", RequestLimits(max_tokens=MAX_TOKENS_CAP))
    server = OpenAIServer(ServerSettings(port=0, **settings), model=model)
    port = server.start()
    server.wait_ready()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(smollm2_path, refs):
    """A server whose model holds three sequences (the native engine's own); body limits small enough to hit."""
    model = edgesdk.load(str(smollm2_path), n_seq=3, **LOAD)
    server, base = start(model, max_body_bytes=BODY_CAP, body_timeout_s=1.0, header_timeout_s=2.0)
    yield server, base
    server.stop()
    model.close()


@pytest.fixture
def base(served):
    return served[1]


@pytest.fixture
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(base, path, body, **kwargs):
    return httpx.post(base + path, json=body, timeout=120, **kwargs)


def chat_body(refs, question=QUESTIONS[0], **fields):
    return dict({"model": refs["model"], "messages": chat_messages(question), "temperature": 0, "max_tokens": 24},
                **fields)


def error_of(response):
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# -- the API with the openai client ----------------------------------------------------------

def test_chat_completion_equals_the_single_user_answer(client, refs):
    result = client.chat.completions.create(model=refs["model"], messages=chat_messages(QUESTIONS[0]),
                                            temperature=0, max_tokens=24)
    assert result.object == "chat.completion" and result.model == refs["model"]
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == refs[QUESTIONS[0]]
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_streamed_chat_adds_up_to_the_answer_and_reports_usage(client, refs):
    stream = client.chat.completions.create(model=refs["model"], messages=chat_messages(QUESTIONS[2]),
                                            temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == refs[QUESTIONS[2]]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_seeded_sampling_equals_the_single_user_answer(client, refs):
    result = client.chat.completions.create(model=refs["model"], messages=chat_messages(QUESTIONS[1]),
                                            temperature=0.8, seed=99, max_tokens=24)
    assert result.choices[0].message.content == refs["seeded"]


def test_text_completion_streamed_and_not_with_stop(client, refs):
    result = client.completions.create(model=refs["model"], prompt=TEXT_PROMPT, temperature=0, max_tokens=16)
    assert result.object == "text_completion" and result.choices[0].text == refs["text"]
    stopped = client.completions.create(model=refs["model"], prompt=TEXT_PROMPT, temperature=0, max_tokens=16,
                                        stop=[","])
    assert stopped.choices[0].text == refs["text_stop"] and stopped.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in client.completions.create(
        model=refs["model"], prompt=TEXT_PROMPT, temperature=0, max_tokens=16, stream=True)]
    assert "".join(pieces) == refs["text"]


def test_a_missing_max_tokens_gets_the_cap(base, refs):
    body = {"model": refs["model"], "prompt": TEXT_PROMPT, "temperature": 0}
    result = post(base, "/v1/completions", body).json()
    assert result["usage"]["completion_tokens"] == refs["capped_tokens"] <= MAX_TOKENS_CAP
    assert result["choices"][0]["text"] == refs["capped"]


def test_concurrent_clients_each_get_their_own_answer(base, refs):
    def ask(question):
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        if question == QUESTIONS[3]:     # one of them streams
            stream = c.chat.completions.create(model=refs["model"], messages=chat_messages(question),
                                               temperature=0, max_tokens=24, stream=True)
            return "".join(ch.choices[0].delta.content or "" for ch in stream)
        return c.chat.completions.create(model=refs["model"], messages=chat_messages(question), temperature=0,
                                         max_tokens=24).choices[0].message.content

    with ThreadPoolExecutor(len(QUESTIONS) * 2) as pool:
        answers = list(pool.map(ask, QUESTIONS * 2))
    assert answers == [refs[q] for q in QUESTIONS * 2]


def test_models_health_and_metrics(base, refs, client):
    assert [m.id for m in client.models.list()] == [refs["model"]]
    assert client.models.retrieve(refs["model"]).id == refs["model"]
    assert httpx.get(base + "/v1/models/other").status_code == 404
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    metrics = httpx.get(base + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.text.splitlines()
              if line and not line.startswith("#")}
    assert values["edgesdk_completion_tokens_total"] > 0 and values["edgesdk_prompt_tokens_total"] > 0
    assert values["edgesdk_queue_depth"] == 0 and values["edgesdk_sequences"] == 3
    assert 'edgesdk_requests_total{path="/v1/chat/completions",status="200"}' in values
    assert "edgesdk_tokens_per_second" in values


# -- hostile requests ---------------------------------------------------------------------------

@pytest.mark.parametrize("fields, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
    ({"max_tokens": 10**30}, "max_tokens"),
    ({"seed": -3}, "seed"),
    ({"seed": "x"}, "seed"),
    ({"n": 2}, "n"),
    ({"stream": "yes"}, "stream"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ["x" * 65]}, "stop"),
    ({"stop": [1]}, "stop"),
    ({"tools": []}, "tools"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages"),
    ({"messages": [{"role": "user", "content": "hi", "extra": 1}]}, "messages[0].extra"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages[0].content"),
])
def test_wrong_types_and_out_of_range_fields_are_400_naming_the_field(base, refs, fields, param):
    response = post(base, "/v1/chat/completions", chat_body(refs, **fields))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_fields_are_named(base, refs):
    response = post(base, "/v1/chat/completions", chat_body(refs, frobnicate=1, zeal=2))
    assert response.status_code == 400
    assert "frobnicate" in error_of(response)["message"] and "zeal" in error_of(response)["message"]


def test_neutral_values_of_unsupported_fields_are_accepted(base, refs):
    body = chat_body(refs, n=1, presence_penalty=0, frequency_penalty=0.0, logprobs=False, user="me",
                     response_format={"type": "text"}, top_k=None)
    response = post(base, "/v1/chat/completions", body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == refs[QUESTIONS[0]]


@pytest.mark.parametrize("body", [b"{bad", b"[1, 2]", b'{"a": NaN}', b"\xff\xfe", b"[" * 50000, b"",
                                  b'{"model": 1e999}'])
def test_malformed_json_is_400(base, body):
    response = httpx.post(base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["type"] == "invalid_request_error"


def test_wrong_content_type_is_415(base, refs):
    response = httpx.post(base + "/v1/chat/completions", content=json.dumps(chat_body(refs)),
                          headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_a_huge_body_is_413_declared_or_chunked(base, refs):
    huge = json.dumps(chat_body(refs, user="x" * BODY_CAP)).encode()
    declared = httpx.post(base + "/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413

    def chunks():
        for i in range(0, len(huge), 4096):
            yield huge[i:i + 4096]

    chunked = httpx.post(base + "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_prompt_limits(base, refs):
    too_long = post(base, "/v1/completions", {"model": refs["model"], "prompt": "word " * N_CTX})
    assert too_long.status_code == 400 and error_of(too_long)["code"] == "context_length_exceeded"
    bad_ids = post(base, "/v1/completions", {"model": refs["model"], "prompt": [1, 10**9]})
    assert bad_ids.status_code == 400 and error_of(bad_ids)["param"] == "prompt"
    two_prompts = post(base, "/v1/completions", {"model": refs["model"], "prompt": ["a", "b"]})
    assert two_prompts.status_code == 400
    ids = post(base, "/v1/completions", {"model": refs["model"], "prompt": [1, 504, 3326], "max_tokens": 2})
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3


def test_another_model_name_paths_and_methods(base, refs):
    other = post(base, "/v1/chat/completions", chat_body(refs, model="gpt-4"))
    assert other.status_code == 404 and error_of(other)["code"] == "model_not_found"
    assert post(base, "/v1/models/pull", {"name": "x"}).status_code == 405
    assert post(base, "/api/pull", {"name": "x"}).status_code == 404
    assert httpx.get(base + "/v1/chat/completions").status_code == 405
    assert httpx.get(base + "/../../etc/passwd").status_code == 404


def test_a_foreign_host_header_is_refused(base):
    for host in ("evil.example.com", "attacker.localhost", "localhost.evil.com:8080", ""):
        response = httpx.get(base + "/v1/models", headers={"host": host})
        assert response.status_code in (400, 403), host
    assert httpx.get(base + "/v1/models", headers={"host": "localhost:1234"}).status_code == 200


def test_host_header_rules():
    names = frozenset({"localhost", "box.local"})
    assert host_header_allowed("localhost:8080", names) and host_header_allowed("LOCALHOST.", names)
    assert host_header_allowed("127.0.0.1:80", names) and host_header_allowed("[::1]:8080", names)
    assert host_header_allowed("192.168.1.20", names) and host_header_allowed("box.local:8080", names)
    assert not host_header_allowed("rebind.attacker.com", names)
    assert not host_header_allowed("[::1", names) and not host_header_allowed("a:b:c", names)


def test_no_cors_headers_unless_origins_are_listed(base, refs):
    origin = {"origin": "https://evil.example"}
    response = post(base, "/v1/chat/completions", chat_body(refs, max_tokens=1), headers=origin)
    assert "access-control-allow-origin" not in response.headers
    preflight = httpx.options(base + "/v1/chat/completions",
                              headers=dict(origin, **{"access-control-request-method": "POST"}))
    assert "access-control-allow-origin" not in preflight.headers


def test_listed_cors_origins_are_allowed_and_others_not(smollm2_path, refs):
    model = edgesdk.load(str(smollm2_path), **LOAD)
    server, base = start(model, cors_origins=("https://app.example",))
    try:
        ok = httpx.options(base + "/v1/chat/completions", headers={"origin": "https://app.example",
                                                                   "access-control-request-method": "POST"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(base + "/v1/chat/completions", headers={"origin": "https://evil.example",
                                                                      "access-control-request-method": "POST"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        server.stop()
        model.close()


def test_slow_clients_time_out_while_others_are_served(base, refs, client):
    port = int(base.rsplit(":", 1)[1])
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"model\": ")
    slow_headers = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    for s in slow_headers:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0")
    try:
        result = client.chat.completions.create(model=refs["model"], messages=chat_messages(QUESTIONS[0]),
                                                temperature=0, max_tokens=24)
        assert result.choices[0].message.content == refs[QUESTIONS[0]]
        slow_body.settimeout(10)
        reply = slow_body.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")
        for s in slow_headers:      # closed after header_timeout_s, so they cannot fill max_connections
            s.settimeout(10)
            assert s.recv(4096) == b""
    finally:
        slow_body.close()
        for s in slow_headers:
            s.close()


# -- keys, the queue, disconnects, loading ---------------------------------------------------------

def test_binding_another_address_needs_a_key():
    with pytest.raises(InvalidArgumentError, match="API key"):
        ServerSettings(host="0.0.0.0")
    with pytest.raises(InvalidArgumentError, match="at least 16"):
        ServerSettings(host="0.0.0.0", api_key="short")
    with pytest.raises(InvalidArgumentError, match="every web page"):
        ServerSettings(cors_origins=("*",))
    assert "test-key" not in repr(ServerSettings(host="0.0.0.0", api_key=API_KEY))


def test_a_key_is_required_when_set(smollm2_path, refs):
    model = edgesdk.load(str(smollm2_path), **LOAD)
    server, base = start(model, api_key=API_KEY)
    try:
        assert httpx.get(base + "/health").status_code == 200         # liveness needs no key
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": API_KEY},
                        {"authorization": f"Bearer {API_KEY}x"}):
            response = post(base, "/v1/chat/completions", chat_body(refs), headers=headers)
            assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
            assert httpx.get(base + "/metrics", headers=headers).status_code == 401
        keyed = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
        assert keyed.chat.completions.create(model=refs["model"], messages=chat_messages(QUESTIONS[0]),
                                             temperature=0, max_tokens=24).choices[0].message.content \
            == refs[QUESTIONS[0]]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        server.stop()
        model.close()


@pytest.fixture(scope="module")
def busy(smollm2_path):
    """One sequence, no queue: the second request at once is refused."""
    model = edgesdk.load(str(smollm2_path), **LOAD)
    server, base = start(model, max_queue=0, limits=RequestLimits(max_tokens=400))
    yield server, base
    server.stop()
    model.close()


def wait_idle(server, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while server.scheduler.active or server.scheduler.queue_depth:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.02)


def long_body(refs, **fields):
    return dict({"model": refs["model"], "prompt": "Once upon a time", "temperature": 0, "max_tokens": 400,
                 "repeat_penalty": 1.0}, **fields)


def test_a_full_queue_is_429_with_retry_after_and_a_disconnect_frees_the_slot(busy, refs):
    server, base = busy
    before = server.scheduler.counters.completion_tokens
    with httpx.stream("POST", base + "/v1/completions", json=long_body(refs, stream=True), timeout=60) as first:
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        refused = post(base, "/v1/completions", long_body(refs, max_tokens=4))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert error_of(refused)["code"] == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0).completions.create(
                model=refs["model"], prompt="Hi", max_tokens=2)
    wait_idle(server)
    assert server.scheduler.counters.completion_tokens - before < 400
    assert post(base, "/v1/completions", long_body(refs, max_tokens=4)).status_code == 200


def test_a_client_that_disconnects_before_a_whole_answer_cancels_it(busy, refs):
    server, base = busy
    port = int(base.rsplit(":", 1)[1])
    before = server.scheduler.counters.completion_tokens
    body = json.dumps(long_body(refs)).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    deadline = time.monotonic() + 10
    while not server.scheduler.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sock.close()
    wait_idle(server)
    assert server.scheduler.counters.completion_tokens - before < 400


def test_health_is_503_while_loading(smollm2_path, refs):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return edgesdk.load(str(smollm2_path), **LOAD)

    server = OpenAIServer(ServerSettings(port=0), load=slow_load, model_name=refs["model"])
    base = f"http://127.0.0.1:{server.start()}"
    try:
        health = httpx.get(base + "/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        busy_chat = post(base, "/v1/chat/completions", chat_body(refs))
        assert busy_chat.status_code == 503 and error_of(busy_chat)["code"] == "model_loading"
        release.set()
        server.wait_ready()
        assert httpx.get(base + "/health").status_code == 200
        assert post(base, "/v1/chat/completions", chat_body(refs)).json()["choices"][0]["message"]["content"] \
            == refs[QUESTIONS[0]]
    finally:
        release.set()
        server.stop()


# -- the command ----------------------------------------------------------------------------------

def cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "edgesdk.cli", "serve", *args], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO), stderr=subprocess.PIPE, text=True, **kwargs)


def test_the_command_refuses_another_address_without_a_key():
    env_free = {k: v for k, v in os.environ.items() if k != "EDGESDK_API_KEY"}
    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "serve", "--host", "0.0.0.0"], cwd=REPO,
                         env=dict(env_free, PYTHONPATH=REPO), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "API key" in out.stderr


@pytest.mark.slow
def test_the_command_serves_until_sigterm(smollm2_path, refs, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    process = cli(str(smollm2_path), "--port", "0", "--n-ctx", "256", "--threads", "1",
                  "--api-key-file", str(key_file))
    try:
        port = None
        for line in process.stderr:
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line, re.IGNORECASE)
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(base + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        name = os.path.basename(str(smollm2_path))
        response = post(base, "/v1/completions", {"model": name, "prompt": TEXT_PROMPT, "max_tokens": 16,
                                                  "temperature": 0}, headers={"authorization": f"Bearer {API_KEY}"})
        assert response.json()["choices"][0]["text"] == refs["text"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
