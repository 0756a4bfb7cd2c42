"""A judge served over HTTP by any OpenAI-compatible chat completions endpoint.

```yaml
judges:
  strong:
    openai: {base_url: "http://127.0.0.1:8000/v1", model: Qwen/Qwen2.5-7B-Instruct, api_key_env: OPENAI_API_KEY}
```

``compare`` asks ``POST {base_url}/chat/completions`` which of two responses is better ("A" or "B"),
in both orders, and averages the two estimates of P(a better) as :class:`~align.eval.judges.LLMJudge`
does: a judge that always names one position returns 0.5, a real preference survives the swap. How
often the verdict flips with the order is recorded (``position_bias``). ``score`` is P(response
better than ``reference``).

Verdicts (one per prompt, ordered pair of responses and request setting) are kept in a SQLite file,
``<cache_dir>/openai_verdicts.sqlite``, so that running again sends no request. The API key is read
from the environment variable named by ``api_key_env`` when a request is sent; it is never stored on
disk, in the cache, in errors or in logs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from align.errors import AlignError
from align.eval.judges import DEFAULT_TEMPLATE, Judge, check_template, prompt_text

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
CACHE_FILE = "openai_verdicts.sqlite"
ANSWER = re.compile(r"(?<![A-Za-z0-9])([AB])(?![A-Za-z0-9])")


OPTIONS = ("base_url", "model", "api_key_env", "template", "system", "reference", "tie_tolerance", "max_concurrency",
           "timeout", "max_retries", "backoff", "max_tokens", "temperature", "logprobs", "extra_body", "cache", "cache_dir")


def spec_options(where: str, spec: dict) -> dict:
    """``{openai: {base_url: ..., model: ...}}`` or the short ``{openai: URL, model: ...}``, as one dict of options."""
    nested = spec["openai"] if isinstance(spec["openai"], dict) else {"base_url": spec["openai"]}
    siblings = {k: v for k, v in spec.items() if k != "openai"}
    twice = sorted(set(nested) & set(siblings))
    if twice:
        raise AlignError(f"{where}: {twice} given both inside openai: and next to it; keep one.")
    options = {**nested, **siblings}
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise AlignError(f"{where}: unknown keys {sorted(unknown)} for an openai judge; valid: {', '.join(OPTIONS)}.")
    missing = [k for k in ("base_url", "model") if not options.get(k)]
    if missing:
        raise AlignError(f"{where}.openai: needs {' and '.join(missing)}, e.g. {{openai: {{base_url: "
                         f"http://127.0.0.1:8000/v1, model: NAME, api_key_env: OPENAI_API_KEY}}}}.")
    return options


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/align/judges``, i.e. ``~/.cache/align/judges`` by default."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "align" / "judges"


def parse_answer(text: str) -> float | None:
    """1.0 when the answer names A (the first shown), 0.0 for B, None when it names neither.

    The whole answer "A", "**B**", "(A)." first; otherwise the first standalone A or B ("Response B is
    better", "Answer: A"), so a word such as "Both" or "ABC" is not read as an answer.
    """
    stripped = text.strip().strip("*_`'\"().:[]{} \n").upper()
    if stripped in ("A", "B"):
        return 1.0 if stripped == "A" else 0.0
    match = ANSWER.search(text)
    return None if match is None else (1.0 if match[1] == "A" else 0.0)


def logprob_answer(choice: dict) -> float | None:
    """P(A) / (P(A) + P(B)) from the top log-probabilities at the first answer token, when the server sent them."""
    content = ((choice.get("logprobs") or {}).get("content")) or []
    for position in content:
        if not isinstance(position, dict):
            return None
        if str(position.get("token", "")).strip(" *_`'\"(.:\n").upper() not in ("A", "B"):
            continue
        probs = {"A": 0.0, "B": 0.0}
        for alt in position.get("top_logprobs") or [position]:
            token = str(alt.get("token", "")).strip(" *_`'\"(.:\n").upper()
            if token in probs and isinstance(alt.get("logprob"), (int, float)):
                probs[token] += math.exp(alt["logprob"])
        total = probs["A"] + probs["B"]
        return probs["A"] / total if total > 0 else None
    return None


class VerdictCache:
    """A SQLite table key -> P(first shown is better); safe for several processes sharing the file."""

    def __init__(self, folder):
        self.path = Path(folder).expanduser() / CACHE_FILE
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, model TEXT, base_url TEXT, "
                           "p_first REAL, answer TEXT, created REAL)")
        except (OSError, sqlite3.Error) as e:
            raise AlignError(f"cannot use the judge cache {self.path} ({type(e).__name__}: {e}); set the judge's "
                             f"cache_dir to a writable folder, or cache: false.") from e

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=60)

    def get(self, keys: list[str]) -> dict[str, float]:
        found = {}
        with self.connect() as db:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                rows = db.execute(f"SELECT key, p_first FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update(rows.fetchall())
        return found

    def put(self, key: str, model: str, base_url: str, p_first: float, answer: str) -> None:
        with self.connect() as db:
            db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                       (key, model, base_url, p_first, answer, time.time()))


class OpenAIJudge(Judge):
    """Pairwise verdicts from a model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Options: ``template`` (fields {prompt}, {response_a}, {response_b}), ``system`` (a system message),
    ``reference`` (what ``score`` compares against, default ""), ``tie_tolerance``, ``max_concurrency``
    (requests in flight, default 4), ``timeout`` (seconds per request, 60), ``max_retries`` (5, on
    connection errors, timeouts, 429 and 5xx, waiting ``backoff`` * 2^attempt seconds, or the server's
    Retry-After), ``max_tokens`` (16; null leaves it out), ``temperature`` (0; null leaves it out),
    ``logprobs`` (ask for the answer token's top log-probabilities and return a graded P(A) when the
    server sends them), ``extra_body`` (merged into every request, e.g. ``{max_completion_tokens: 16}``),
    ``cache`` (true) and ``cache_dir``.

    ``position_bias`` summarises every pair judged so far (cached ones included): ``pairs``,
    ``flip_rate`` (share of pairs whose winner changed when the order was swapped: the judge named the
    same position both times) and ``first_rate`` (share of single verdicts for the response shown
    first; 0.5 is unbiased).
    """

    def __init__(self, base_url: str, *, model: str, name: str = "openai", api_key_env: str | None = None,
                 template: str = DEFAULT_TEMPLATE, system: str | None = None, reference: str = "",
                 tie_tolerance: float = 1e-6, max_concurrency: int = 4, timeout: float = 60.0, max_retries: int = 5,
                 backoff: float = 1.0, max_tokens: int | None = 16, temperature: float | None = 0.0,
                 logprobs: bool = False, extra_body: dict | None = None, cache: bool = True,
                 cache_dir: str | Path | None = None):
        where = f"judges.{name}"
        url = urllib.parse.urlsplit(str(base_url or ""))
        if url.scheme not in ("http", "https") or not url.netloc:
            raise AlignError(f"{where}.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1 (the part "
                             f"before /chat/completions); got {base_url!r}.")
        if not model or not isinstance(model, str):
            raise AlignError(f"{where}.model: name the model the server should answer with, e.g. model: gpt-4o-mini.")
        if api_key_env is not None and (not isinstance(api_key_env, str) or not api_key_env):
            raise AlignError(f"{where}.api_key_env: the name of an environment variable holding the key, e.g. "
                             f"OPENAI_API_KEY (never the key itself); got a {type(api_key_env).__name__}.")
        if extra_body is not None and not isinstance(extra_body, dict):
            raise AlignError(f"{where}.extra_body: expected a mapping of request fields; got {extra_body!r}.")
        if int(max_concurrency) < 1 or int(max_retries) < 0 or float(timeout) <= 0:
            raise AlignError(f"{where}: max_concurrency must be >= 1, max_retries >= 0 and timeout > 0.")
        check_template(template, name)
        self.name, self.model, self.template, self.system = name, model, template, system
        self.base_url = str(base_url).rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.reference, self.tie_tolerance = reference, float(tie_tolerance)
        self.max_concurrency, self.timeout = int(max_concurrency), float(timeout)
        self.max_retries, self.backoff = int(max_retries), float(backoff)
        self.max_tokens, self.temperature, self.logprobs = max_tokens, temperature, bool(logprobs)
        self.extra_body = dict(extra_body or {})
        if api_key_env:
            self.headers()  # fails now, not after the policies have been sampled, when the variable is unset
        self.cache = VerdictCache(cache_dir or default_cache_dir()) if cache else None
        # Loopback servers are never reached through a proxy; other hosts follow the usual *_proxy variables.
        handlers = [urllib.request.ProxyHandler({})] if url.hostname in LOOPBACK else []
        self.opener = urllib.request.build_opener(*handlers)
        self.requests = self.cache_hits = 0
        self.pairs = self.flips = self.first_choices = self.verdicts = 0

    def __repr__(self) -> str:
        return f"OpenAIJudge(name={self.name!r}, model={self.model!r}, url={self.url!r})"

    @property
    def position_bias(self) -> dict:
        return {"pairs": self.pairs, "flip_rate": self.flips / self.pairs if self.pairs else None,
                "first_rate": self.first_choices / self.verdicts if self.verdicts else None}

    def metrics(self) -> dict:
        """What an evaluation can record: position bias, requests sent and verdicts read from the cache."""
        return {"position_bias": self.position_bias, "requests": self.requests, "cache_hits": self.cache_hits}

    # -- requests -----------------------------------------------------------------------------------------------

    def where(self) -> str:
        return f"judge '{self.name}' (model {self.model!r} at {self.url})"

    def body(self, text: str) -> dict:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + \
                   [{"role": "user", "content": text}]
        body = {"model": self.model, "messages": messages}
        if self.max_tokens is not None:
            body["max_tokens"] = int(self.max_tokens)
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=5)
        return {**body, **self.extra_body}

    def cache_key(self, body: dict) -> str:
        """Everything that decides the answer: endpoint, model, messages (template, prompt, both responses in
        their order) and the request settings. Not the key, which does not change the answer."""
        canonical = json.dumps({"base_url": self.base_url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise AlignError(f"{self.where()}: the environment variable {self.api_key_env} (api_key_env) is not "
                                 f"set; export the API key there.")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def redact(self, text: str) -> str:
        """Server text goes into errors and logs: never with the key in it, should a proxy echo the request."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    @staticmethod
    def read_error(error) -> str:
        try:
            return error.read()[:300].decode("utf-8", "replace").strip()
        except Exception:
            return ""

    def hint(self, status: int) -> str:
        if status in (401, 403):
            return (f" Check that {self.api_key_env} holds a valid key." if self.api_key_env
                    else " The server may want a key: name its environment variable in api_key_env.")
        if status in (400, 404, 422):
            return " Check base_url (it ends before /chat/completions) and model."
        return ""

    def post(self, body: dict) -> tuple[dict, int]:
        """The decoded JSON answer and the number of HTTP requests it took, retrying transient failures."""
        data = json.dumps(body).encode("utf-8")
        attempts, last = 0, ""
        while True:
            attempts += 1
            retry_after = None
            request = urllib.request.Request(self.url, data=data, headers=self.headers(), method="POST")
            try:
                with self.opener.open(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                detail = self.redact(self.read_error(e)) or str(e.reason)
                if e.code not in RETRY_STATUS:
                    raise AlignError(f"{self.where()}: the server answered HTTP {e.code}: {detail}."
                                     f"{self.hint(e.code)}") from None
                last = f"HTTP {e.code}: {detail}"
                header = (e.headers.get("Retry-After") or "").strip() if e.headers else ""
                retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
            except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeouts
                reason = getattr(e, "reason", e)
                last = self.redact(f"{type(reason).__name__}: {reason}")
            if attempts > self.max_retries:
                raise AlignError(f"{self.where()}: no answer after {attempts} attempt(s) (last: {last}). Is the server "
                                 f"running and is base_url right?")
            delay = min(retry_after if retry_after is not None else self.backoff * 2 ** (attempts - 1), 60.0)
            delay *= 1 + 0.1 * random.random()
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", self.where(), last, delay, attempts + 1,
                        self.max_retries + 1)
            time.sleep(delay)
        try:
            return json.loads(raw), attempts
        except ValueError:
            raise AlignError(f"{self.where()}: the server answered something that is not JSON: "
                             f"{self.redact(raw[:200].decode('utf-8', 'replace'))!r}.") from None

    def ask(self, body: dict) -> tuple[float, str, int]:
        """P(the response shown first is better), the answer text and the requests it took."""
        reply, attempts = self.post(body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise AlignError(f"{self.where()}: the reply is not a chat completion (no choices[0].message.content): "
                             f"{self.redact(json.dumps(reply)[:300])}") from None
        p = logprob_answer(choice) if self.logprobs else None
        if p is None:
            p = parse_answer(text)
        if p is None:
            raise AlignError(f"{self.where()}: answered {self.redact(text[:200])!r}, which names neither A nor B. "
                             f"Use a model that follows the instruction, raise max_tokens, or change the template "
                             f"or system message.")
        return p, text, attempts

    def prefers_first(self, prompts: list, first: list[str], second: list[str]) -> list[float]:
        """P(the response shown as A is better) per item: from the cache, else from the server (in parallel)."""
        bodies = [self.body(self.template.format(prompt=prompt_text(p), response_a=a, response_b=b))
                  for p, a, b in zip(prompts, first, second, strict=True)]
        keys = [self.cache_key(body) for body in bodies]
        found = self.cache.get(list(set(keys))) if self.cache else {}
        results: dict[str, float] = {k: found[k] for k in keys if k in found}
        self.cache_hits += sum(k in found for k in keys)
        todo = {k: body for k, body in zip(keys, bodies) if k not in results}  # duplicates are asked once
        if todo:
            pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo)), thread_name_prefix=self.name)
            futures = {pool.submit(self.ask, body): key for key, body in todo.items()}
            pending, failed = set(futures), True
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:  # each verdict is cached as it comes, so a failed run keeps them
                        p, text, attempts = future.result()
                        self.requests += attempts
                        results[futures[future]] = p
                        if self.cache:
                            self.cache.put(futures[future], self.model, self.base_url, p, self.redact(text[:200]))
                failed = False
            finally:  # on an error, queued requests are dropped and the error is raised without waiting
                pool.shutdown(wait=not failed, cancel_futures=True)
        return [results[k] for k in keys]

    # -- the Judge interface ------------------------------------------------------------------------------------

    def compare(self, prompts: list, responses_a: list[str], responses_b: list[str], **_columns) -> list[float]:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"judge '{self.name}': {len(prompts)} prompts but {len(responses_a)} and "
                             f"{len(responses_b)} responses")
        n = len(prompts)
        p = self.prefers_first(list(prompts) * 2, list(responses_a) + list(responses_b),
                               list(responses_b) + list(responses_a))
        for a_first, b_first in zip(p[:n], p[n:]):
            self.pairs += 1
            self.flips += (a_first > 0.5 and b_first > 0.5) or (a_first < 0.5 and b_first < 0.5)
            self.verdicts += 2
            self.first_choices += (a_first > 0.5) + (b_first > 0.5)
        averaged = [(a_first + (1 - b_first)) / 2 for a_first, b_first in zip(p[:n], p[n:])]
        return [0.5 if abs(x - 0.5) <= self.tie_tolerance else x for x in averaged]

    def score(self, prompts: list, responses: list[str], **_columns) -> list[float]:
        return self.compare(prompts, responses, [self.reference] * len(responses))
