"""The openai judge against real HTTP servers on 127.0.0.1: a scripted stdlib server (answers, failures,
headers) and ``transformers serve`` on a tiny local model (slow)."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from align.errors import AlignError
from align.eval.judge_factory import build_judge
from align.eval.openai_judge import OpenAIJudge, parse_answer

KEY = "sk-test-0123456789abcdef"
PROMPTS = ["the cat", [{"role": "user", "content": "a phone ünï"}], "x"]
LONG = ["is a good cat indeed", "works well", "yes yes yes"]
SHORT = ["ok", "fine", ""]


def shown(body: dict) -> tuple[str, str]:
    """The two responses as the judge showed them (A, B), read back from the default template."""
    text = body["messages"][-1]["content"]
    return (re.search(r"Response A: (.*?)\n\nResponse B:", text, re.S)[1],
            re.search(r"Response B: (.*?)\n\nWhich", text, re.S)[1])


def completion(content: str, **choice) -> dict:
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                         **choice}]}


def prefers_longer(body: dict) -> tuple[int, dict]:
    a, b = shown(body)
    return 200, completion("A" if len(a) > len(b) else "**B** is better.")


class Scripted:
    """A real HTTP server in a thread; ``reply(body) -> (status, payload[, headers])``; records every request."""

    def __init__(self, reply):
        self.reply, self.requests = reply, []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scripted.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload, *headers = scripted.reply(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers[0] if headers else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def start(reply):
        servers.append(Scripted(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def judge_for(url, tmp_path, **options):
    spec = {"openai": {"base_url": url, "model": "judge-model", **options}}
    return build_judge("strong", spec, cache_dir=tmp_path / "cache")


def test_asks_both_orders_sends_the_key_and_caches_without_it(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    server = scripted(prefers_longer)
    judge = judge_for(server.url, tmp_path, api_key_env="MY_JUDGE_KEY", max_concurrency=3)
    assert isinstance(judge, OpenAIJudge)
    assert judge.compare(PROMPTS, LONG, SHORT) == [1.0, 1.0, 1.0]
    assert judge.compare(PROMPTS, SHORT, LONG) == [0.0, 0.0, 0.0]
    # Six distinct questions: each pair in both orders; the swapped comparison reuses them all.
    assert len(server.requests) == 6
    assert {shown(r["body"]) for r in server.requests} == {*zip(LONG, SHORT), *zip(SHORT, LONG)}
    assert all(r["path"] == "/v1/chat/completions" and r["headers"]["Authorization"] == f"Bearer {KEY}"
               and r["body"]["model"] == "judge-model" for r in server.requests)
    assert judge.position_bias == {"pairs": 6, "flip_rate": 0.0, "first_rate": 0.5}
    assert judge.metrics()["requests"] == 6 and judge.metrics()["cache_hits"] == 6

    # A new judge (a new run) with the same settings reads every verdict from the file: no request.
    again = judge_for(server.url, tmp_path, api_key_env="MY_JUDGE_KEY")
    assert again.score(PROMPTS, LONG) == [1.0, 1.0, 1.0]  # vs the reference "": new questions but
    assert len(server.requests) == 10  # ("yes yes yes", "") both ways, which compare already asked
    assert again.compare(PROMPTS, LONG, SHORT) == [1.0, 1.0, 1.0]
    assert again.score(PROMPTS, LONG) == [1.0, 1.0, 1.0]
    assert len(server.requests) == 10 and again.requests == 4
    # Another model (or template, endpoint, setting) is another question.
    other = build_judge("strong", {"openai": server.url, "model": "other-model"}, cache_dir=tmp_path / "cache")
    other.compare(PROMPTS[:1], LONG[:1], SHORT[:1])
    assert len(server.requests) == 12

    cache_file = tmp_path / "cache" / "openai_verdicts.sqlite"
    assert cache_file.exists()
    assert KEY.encode() not in cache_file.read_bytes()
    with sqlite3.connect(cache_file) as db:
        rows = db.execute("SELECT model, base_url, p_first FROM verdicts").fetchall()
    assert len(rows) == 12 and {(m, u) for m, u, _ in rows} == {("judge-model", server.url), ("other-model", server.url)}
    assert KEY not in repr(judge) and KEY not in json.dumps(judge.metrics())


def test_the_key_is_redacted_from_what_the_server_echoes(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    echo = scripted(lambda body: (200, completion(f"A, says the proxy to Bearer {KEY}")))
    judge = judge_for(echo.url, tmp_path, api_key_env="MY_JUDGE_KEY")
    assert judge.compare(["p"], ["x"], ["y"]) == [0.5]
    assert KEY.encode() not in (tmp_path / "cache" / "openai_verdicts.sqlite").read_bytes()
    denied = scripted(lambda body: (401, {"error": f"bad key {KEY}"}))
    with pytest.raises(AlignError, match=r"HTTP 401: .*bad key \*\*\*.*MY_JUDGE_KEY holds a valid key") as error:
        judge_for(denied.url, tmp_path, api_key_env="MY_JUDGE_KEY").compare(["p"], ["x"], ["y"])
    assert KEY not in str(error.value)


def test_position_bias_of_a_judge_that_always_says_a(scripted, tmp_path):
    server = scripted(lambda body: (200, completion("A")))
    judge = judge_for(server.url, tmp_path, cache=False)
    assert judge.compare(PROMPTS, LONG, SHORT) == [0.5, 0.5, 0.5]
    assert judge.position_bias == {"pairs": 3, "flip_rate": 1.0, "first_rate": 1.0}
    judge.compare(PROMPTS, LONG, SHORT)
    assert len(server.requests) == 12  # cache: false asks every time
    assert not (tmp_path / "cache").exists()


def test_default_cache_location(scripted, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    server = scripted(prefers_longer)
    build_judge("j", {"openai": server.url, "model": "m"}).compare(["p"], ["long one"], ["s"])
    assert (tmp_path / "xdg" / "align" / "judges" / "openai_verdicts.sqlite").exists()
    judge = build_judge("j", {"openai": {"base_url": server.url, "model": "m", "cache_dir": str(tmp_path / "mine")}},
                        cache_dir=tmp_path / "caller")
    judge.compare(["p"], ["long one"], ["s"])
    assert (tmp_path / "mine" / "openai_verdicts.sqlite").exists() and not (tmp_path / "caller").exists()


def test_retries_transient_failures(scripted, tmp_path):
    failures = [(503, {"error": "loading"}), (429, {"error": "slow down"}, {"Retry-After": "0"})]
    server = scripted(lambda body: failures.pop(0) if failures else prefers_longer(body))
    judge = judge_for(server.url, tmp_path, max_concurrency=1, backoff=0.01)
    assert judge.compare(["p"], ["long answer"], ["no"]) == [1.0]
    assert len(server.requests) == 4 and judge.requests == 4


def test_concurrency_is_bounded_and_slow_answers_time_out(scripted, tmp_path):
    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def slow(body):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.6 if "stuck" in body["messages"][-1]["content"] else 0.05)
        with lock:
            state["now"] -= 1
        return prefers_longer(body)

    server = scripted(slow)
    assert judge_for(server.url, tmp_path, max_concurrency=2).compare(PROMPTS, LONG, SHORT) == [1.0, 1.0, 1.0]
    assert state["most"] == 2
    judge = judge_for(server.url, tmp_path, timeout=0.2, max_retries=1, backoff=0.01)
    with pytest.raises(AlignError, match=r"no answer after 2 attempt\(s\) \(last: .*timed out"):
        judge.compare(["stuck"], ["a"], ["b"])


def test_server_down_names_the_judge_and_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = judge_for(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2, backoff=0.01, timeout=5)
    with pytest.raises(AlignError, match=rf"judge 'strong' .*http://127\.0\.0\.1:{port}/v1/chat/completions.*"
                                         rf"no answer after 3 attempt"):
        judge.compare(PROMPTS, LONG, SHORT)


@pytest.mark.parametrize("reply, message", [
    (lambda body: (200, completion("I cannot decide; both are fine.")), "names neither A nor B"),
    (lambda body: (200, completion("")), "names neither A nor B"),
    (lambda body: (200, b"<html>proxy error</html>"), "not JSON"),
    (lambda body: (200, {"result": "A"}), "not a chat completion"),
    (lambda body: (404, {"error": "no such model"}), "HTTP 404"),
])
def test_garbage_answers_are_errors(scripted, tmp_path, reply, message):
    server = scripted(reply)
    judge = judge_for(server.url, tmp_path, backoff=0.01)
    with pytest.raises(AlignError, match=rf"judge 'strong' .*{re.escape(server.url)}.*{message}"):
        judge.compare(PROMPTS, LONG, SHORT)
    assert judge.cache.get([judge.cache_key(r["body"]) for r in server.requests]) == {}  # nothing cached


def test_logprobs_give_a_graded_verdict(scripted, tmp_path):
    import math

    def reply(body):
        assert body["logprobs"] is True
        top = [{"token": "A", "logprob": math.log(0.6)}, {"token": "B", "logprob": math.log(0.2)},
               {"token": "C", "logprob": math.log(0.2)}]
        return 200, completion("A", logprobs={"content": [{"token": "A", "logprob": math.log(0.6), "top_logprobs": top}]})

    judge = judge_for(scripted(reply).url, tmp_path, logprobs=True)
    assert judge.compare(["p"], ["x"], ["y"]) == [pytest.approx((0.75 + 0.25) / 2)]


def test_spec_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(AlignError, match=r"judges\.s\.openai: needs model"):
        build_judge("s", {"openai": {"base_url": "http://127.0.0.1:1/v1"}})
    with pytest.raises(AlignError, match=r"unknown keys \['api_key'\]"):
        build_judge("s", {"openai": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": KEY}})
    with pytest.raises(AlignError, match=r"\['model'\] given both"):
        build_judge("s", {"openai": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}, "model": "n"})
    with pytest.raises(AlignError, match=r"judges\.s\.base_url: expected an http"):
        build_judge("s", {"openai": "127.0.0.1:1", "model": "m"})
    with pytest.raises(AlignError, match=r"NO_SUCH_KEY_VAR \(api_key_env\) is not set"):
        build_judge("s", {"openai": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"})
    with pytest.raises(AlignError, match=r"judges\.s\.template"):
        build_judge("s", {"openai": "http://127.0.0.1:1/v1", "model": "m", "template": "{prompt}"})


@pytest.mark.parametrize("text, verdict", [
    ("A", 1.0), (" B\n", 0.0), ("**A**", 1.0), ("(B).", 0.0), ("Response B is better.", 0.0),
    ("Answer: A", 1.0), ("ABBA", None), ("Both", None), ("", None),
])
def test_parse_answer(text, verdict):
    assert parse_answer(text) == verdict


# -- transformers serve on a tiny local model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``transformers serve`` on a random tiny Qwen2.5 replica whose generation config only allows "A" or "B".

    The answer still comes from the model's own logits over the two, so it depends on the question.
    """
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("openai")
    from transformers import AutoTokenizer

    from align.testing import build_replica

    path = build_replica("qwen2_5", tmp_path_factory.mktemp("served") / "qwen")
    tokenizer = AutoTokenizer.from_pretrained(path)
    allowed = {tokenizer("A", add_special_tokens=False)["input_ids"][0], tokenizer("B", add_special_tokens=False)["input_ids"][0]}
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    (path / "generation_config.json").write_text(json.dumps({
        "do_sample": False, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "suppress_tokens": [i for i in range(vocab) if i not in allowed]}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = path.parent / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", str(path),
                                    "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1", str(path), log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def served_requests(log) -> int:
    """Chat completions the server answered, from its own access log."""
    return log.read_text(errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.mark.slow
def test_transformers_serve_judge(served, tmp_path):
    url, model, log = served
    spec = {"openai": {"base_url": url, "model": model, "max_tokens": 1, "max_concurrency": 2}}
    judge = build_judge("strong", spec, cache_dir=tmp_path)
    prompts = ["the cat", "a phone", [{"role": "user", "content": "rate the lamp"}], "price", "design"]
    a = ["is good", "works really well", "the lamp is bright", "too high", "red and blue"]
    b = ["is bad", "breaks", "", "fair", "very slow delivery"]
    verdicts = judge.compare(prompts, a, b)
    assert len(verdicts) == 5 and all(0.0 <= v <= 1.0 for v in verdicts)
    assert set(verdicts) <= {0.0, 0.5, 1.0}  # text answers: each order is a 0/1 verdict
    assert served_requests(log) == 10  # both orders of every pair
    bias = judge.position_bias
    assert bias["pairs"] == 5 and 0.0 <= bias["flip_rate"] <= 1.0 and 0.0 <= bias["first_rate"] <= 1.0
    assert bias["flip_rate"] == sum(v == 0.5 for v in verdicts) / 5  # a 0.5 here is a flip: the same position twice

    scores = judge.score(prompts[:2], a[:2])
    assert all(0.0 <= s <= 1.0 for s in scores) and served_requests(log) == 14

    again = build_judge("strong", spec, cache_dir=tmp_path)
    assert again.compare(prompts, a, b) == verdicts and again.score(prompts[:2], a[:2]) == scores
    assert served_requests(log) == 14 and again.requests == 0  # all from the cache
