"""Judges: one interface for labelling preference pairs, rewarding online RL and evaluating policies.

A judge scores responses to prompts (``score``, higher is better) and compares two responses to
the same prompt (``compare``: 1.0 when the first is better, 0.0 when the second is, 0.5 for a
tie). Prompts are a user message (a string) or a conversation (a list of messages), as in the
prompt-only datasets the stages read. Four kinds, chosen in a recipe's ``judges:`` section:

- ``{function: "module:function"}``: any Python function ``(prompts, responses) -> list[float]``,
  e.g. a task's gold oracle, or a TRL reward function ``(prompts, completions, **kwargs)`` such as
  ``trl.rewards.accuracy_reward``; either gets the dataset's other columns (a ground-truth answer) as
  keywords (``FunctionJudge``);
- ``{reward_model: path}``: a trained scalar reward model (a proxy for the gold judge);
- ``{llm: path, template: ...}``: a local causal LM asked which of two responses is better;
- ``{openai: {base_url: URL, model: NAME, api_key_env: VAR, ...}}``: the same question put to a model
  behind an OpenAI-compatible chat completions endpoint (``align.eval.openai_judge``).

A spec is checked and built by ``align.eval.judge_factory``; this module holds the judges themselves.
"""

from __future__ import annotations

import math
import numbers
import string
from pathlib import Path

import torch

from align.errors import AlignError
from align.eval.generation import as_messages, eval_mode, pad_batch
from align.functions import accepted_keywords, import_function


def outcome(difference: float, tie_tolerance: float) -> float:
    """1.0, 0.5 or 0.0 for a score difference a - b; within the tolerance it is a tie."""
    if abs(difference) <= tie_tolerance:
        return 0.5
    return 1.0 if difference > 0 else 0.0


class Judge:
    """Base class: subclasses define ``score``; ``compare`` then ranks by score, ties within ``tie_tolerance``."""

    name = "judge"
    tie_tolerance = 0.0

    def score(self, prompts: list, responses: list[str], **columns) -> list[float]:
        """One score per response; ``columns``: the dataset's other columns, one value per prompt, and TRL's extra
        keywords (``trainer_state`` ...) when called as a reward. Only function judges read them."""
        raise NotImplementedError

    def compare(self, prompts: list, responses_a: list[str], responses_b: list[str], **columns) -> list[float]:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"judge '{self.name}': {len(prompts)} prompts but {len(responses_a)} and "
                             f"{len(responses_b)} responses")
        scores_a, scores_b = self.score(prompts, responses_a, **columns), self.score(prompts, responses_b, **columns)
        return [outcome(a - b, self.tie_tolerance) for a, b in zip(scores_a, scores_b)]


class FunctionJudge(Judge):
    """A Python function named as ``module:function`` (or dotted, ``trl.rewards.accuracy_reward``), in one of two
    calling conventions, told apart by its parameters:

    - align's: ``f(prompts, responses, **columns) -> list[float]``, responses as text;
    - TRL's reward functions (a parameter named ``completions``): ``f(prompts=..., completions=...,
      completion_ids=..., **columns)``, completions as TRL passes them: ``[{"role": "assistant", "content": text}]``
      when the prompt is a conversation, the text otherwise.

    ``columns`` are the dataset's columns other than the prompt (a ground-truth ``answer`` or ``solution``), one
    value per prompt, plus what TRL's GRPOTrainer adds (``trainer_state``, ``log_extra``, ``log_metric``) when it
    is a reward there; each goes to the function only if it names that parameter or takes ``**kwargs``, so
    ``(prompts, responses)`` functions keep working. Called once per batch. If it raises, it is called again one
    sample at a time to name the sample that breaks it; bad return values (wrong length, not numbers, NaN) are
    reported too, because a silently misaligned score would corrupt every preference pair after it.
    """

    def __init__(self, target, *, name: str | None = None, tie_tolerance: float = 0.0):
        import inspect

        self.name = name or getattr(target, "__name__", str(target))
        self.target = target if isinstance(target, str) else self.name
        self.tie_tolerance = float(tie_tolerance)
        self.function = target if callable(target) else import_function(target, f"judges.{self.name}.function")
        try:
            self.trl_style = "completions" in inspect.signature(self.function).parameters
        except (TypeError, ValueError):  # a builtin or C callable: positional (prompts, responses) only
            self.trl_style = False

    def call(self, prompts: list, responses: list[str], columns: dict):
        """The function on one batch, in its own convention, with the columns it accepts."""
        passed = accepted_keywords(self.function, columns)
        if not self.trl_style:
            return self.function(list(prompts), list(responses), **passed)
        completions = [[{"role": "assistant", "content": r}] if isinstance(p, list) else r
                       for p, r in zip(prompts, responses)]
        return self.function(prompts=list(prompts), completions=completions, **passed)

    def score(self, prompts: list, responses: list[str], **columns) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"judge '{self.name}': {len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return []
        try:
            values = self.call(prompts, responses, columns)
        except Exception as e:
            raise AlignError(self.failure(prompts, responses, columns, e)) from e
        return self.checked(values, len(responses))

    def failure(self, prompts: list, responses: list[str], columns: dict, error: Exception) -> str:
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            one = {k: v[i:i + 1] if isinstance(v, list) and len(v) == len(prompts) else v for k, v in columns.items()}
            try:
                self.call([prompt], [response], one)
            except Exception as e:
                return f"judge '{self.name}' failed on sample {i}: {type(e).__name__}: {e}"
        return f"judge '{self.name}' failed on a batch of {len(responses)} samples: {type(error).__name__}: {error}"

    def checked(self, values, n: int) -> list[float]:
        try:
            values = list(values)
        except TypeError:
            raise AlignError(f"judge '{self.name}' ({self.target}) returned {type(values).__name__}; it must return "
                             f"a list with one number per response.") from None
        if len(values) != n:
            raise AlignError(f"judge '{self.name}' ({self.target}) returned {len(values)} scores for {n} responses; "
                             f"it must return one number per response, in order.")
        for i, value in enumerate(values):
            if not isinstance(value, numbers.Real) or math.isnan(value):
                skipped = (" (a TRL reward returns None to skip a sample whose ground truth it cannot parse: check "
                           "that column)" if value is None and self.trl_style else "")
                raise AlignError(f"judge '{self.name}' returned {value!r} for sample {i}; scores must be numbers "
                                 f"(not NaN).{skipped}")
        return [float(v) for v in values]


def load_reward_model(path, name: str, device_map=None, model_kwargs: dict | None = None):
    """A scalar-head sequence classifier from a folder (a LoRA adapter is merged into its base), on this process's
    device in its inference dtype (``models.placement``), or spread by transformers with ``device_map``;
    ``model_kwargs`` are the judge's model options (``align.models.MODEL_KWARGS``)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from align.models import (config_kwargs, is_adapter, load_options, load_tokenizer, register_sequence_classifier,
                              remote_code_refused, resolve_model_path)

    field = f"judges.{name}.reward_model"
    path = resolve_model_path(path, field=field)
    options, target = load_options(model_kwargs, field=field,
                                   **({"device_map": device_map} if device_map is not None else {}))
    with remote_code_refused(field, path):
        register_sequence_classifier(path, **config_kwargs(options))  # a family without one: align's scalar head
        if is_adapter(path):
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(path, **options).merge_and_unload()
        else:
            architectures = AutoConfig.from_pretrained(path, **config_kwargs(options)).architectures or []
            if not any(a.endswith("ForSequenceClassification") for a in architectures):
                raise AlignError(f"judges.{name}.reward_model: {path} is not a reward model (architectures: "
                                 f"{', '.join(architectures) or 'unknown'}); loading it as one would give a random "
                                 f"score head. Point it at a reward stage's output, or use {{llm: {path}}} to ask a "
                                 f"language model which response is better.")
            model = AutoModelForSequenceClassification.from_pretrained(path, **options)
    return (model if target is None else model.to(target)), load_tokenizer(path, field=field, model_kwargs=model_kwargs)


class RewardModelJudge(Judge):
    """A trained reward model's scalar output on the full conversation, as TRL's RewardTrainer saw it.

    ``encode`` reproduces RewardTrainer's tokenisation (TRL 1.16): the prompt (a string becomes a
    user message, as the preferences stage writes it) plus ``{"role": "assistant", "content":
    response}`` rendered by the chat template, tokenised with no generation prompt and nothing
    appended (the template closes the turn itself). Without a chat template it is TRL's standard
    format: ``prompt + response + eos``. Sequences are right-padded and the model reads its score at
    the last non-pad token, located from ``config.pad_token_id``, which is therefore always set.
    """

    def __init__(self, path_or_model, tokenizer=None, *, batch_size: int = 32, name: str = "reward_model",
                 tie_tolerance: float = 0.0, device_map=None, model_kwargs: dict | None = None):
        from align.models import load_tokenizer

        self.name, self.batch_size, self.tie_tolerance = name, int(batch_size), float(tie_tolerance)
        if isinstance(path_or_model, (str, Path)):
            self.model, loaded = load_reward_model(path_or_model, name, device_map, model_kwargs)
            self.tokenizer = tokenizer or loaded
        else:
            self.model, self.tokenizer = path_or_model, tokenizer or load_tokenizer(path_or_model.name_or_path)
        if self.model.config.num_labels != 1:
            raise AlignError(f"judge '{name}': a reward model has one output (num_labels=1); this one has "
                             f"{self.model.config.num_labels}.")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.model.config.pad_token_id = self.pad_id

    def encode(self, prompt, response: str, options: dict | None = None) -> list[int]:
        """``options``: the row's tools and template arguments (``row_options``), as RewardTrainer renders them."""
        from align.chat_templates import render

        tokenizer = self.tokenizer
        if isinstance(prompt, str) and tokenizer.chat_template is None:
            eos = tokenizer.eos_token
            return tokenizer(prompt + (response if response.endswith(eos) else response + eos))["input_ids"]
        conversation = as_messages(prompt) + [{"role": "assistant", "content": response}]
        return render(tokenizer, conversation, options, tokenize=True, return_dict=True)["input_ids"]

    def score(self, prompts: list, responses: list[str], **columns) -> list[float]:
        from align.chat_templates import row_options

        rows = [{k: columns[k][i] for k in ("tools", "chat_template_kwargs") if isinstance(columns.get(k), list)}
                for i in range(len(prompts))]
        encoded = [self.encode(p, r, row_options(row)) for p, r, row in zip(prompts, responses, rows, strict=True)]
        scores = []
        with eval_mode(self.model):
            for i in range(0, len(encoded), self.batch_size):
                ids, mask = pad_batch(encoded[i:i + self.batch_size], self.pad_id, "right")
                logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
                scores += logits[:, 0].float().tolist()
        return scores


DEFAULT_TEMPLATE = ("Two assistants answered the same user message.\n\n"
                    "User message: {prompt}\n\n"
                    "Response A: {response_a}\n\n"
                    "Response B: {response_b}\n\n"
                    "Which response is better? Answer A or B.")
TEMPLATE_FIELDS = {"prompt", "response_a", "response_b"}


def check_template(template: str, name: str) -> None:
    """A pairwise template must use exactly {prompt}, {response_a} and {response_b}."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as e:  # an unmatched brace
        fields = {f"unreadable: {e}"}
    if fields != TEMPLATE_FIELDS:
        raise AlignError(f"judges.{name}.template: must use exactly the fields {{prompt}}, {{response_a}} and "
                         f"{{response_b}} (write literal braces as {{{{ }}}}); it uses {sorted(fields) or 'none'}.")


def prompt_text(prompt) -> str:
    """A prompt as text for the judge's template: the message, or a multi-turn conversation as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class LLMJudge(Judge):
    """A local causal LM asked "which is better, A or B?", read from its next-token log-probabilities.

    P(first shown is better) = softmax over the log-probs of the two answer tokens. Language models
    favour a position, so every pair is asked in both orders and the two estimates of P(a better)
    are averaged: a judge that always says "A" then returns exactly 0.5, and a real preference
    survives the swap. ``compare`` returns that probability in [0, 1] (within ``tie_tolerance`` of
    0.5 it is a tie, 0.5). ``score`` is P(response better than ``reference``), by default an empty
    response: a usable reward, but only comparable across judges of the same model and template.

    With a chat template the question is a user turn followed by the generation prompt and the
    answer tokens are "A"/"B"; a model without one gets the raw text plus "\\nAnswer:" and " A"/" B".
    """

    def __init__(self, path_or_model, tokenizer=None, template: str = DEFAULT_TEMPLATE, *, batch_size: int = 16,
                 reference: str = "", tie_tolerance: float = 1e-6, name: str = "llm", device_map=None,
                 model_kwargs: dict | None = None):
        from align.models import load_causal_lm, load_tokenizer

        check_template(template, name)
        self.name, self.template, self.reference = name, template, reference
        self.batch_size, self.tie_tolerance = int(batch_size), float(tie_tolerance)
        if isinstance(path_or_model, (str, Path)):
            self.model = load_causal_lm(path_or_model, field=f"judges.{name}.llm", model_kwargs=model_kwargs,
                                        **({"device_map": device_map} if device_map is not None else {}))
            self.tokenizer = tokenizer or load_tokenizer(path_or_model, field=f"judges.{name}.llm",
                                                         model_kwargs=model_kwargs)
        else:
            self.model, self.tokenizer = path_or_model, tokenizer or load_tokenizer(path_or_model.name_or_path)
        self.chat = self.tokenizer.chat_template is not None
        answers = ("A", "B") if self.chat else (" A", " B")
        self.answer_ids = [self.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers]
        if self.answer_ids[0] == self.answer_ids[1]:
            raise AlignError(f"judge '{name}': the tokenizer does not tell the answers {answers} apart by their first token.")

    def question_ids(self, text: str) -> list[int]:
        if self.chat:
            from align.chat_templates import render

            return render(self.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True,
                          tokenize=True, return_dict=True)["input_ids"]
        return self.tokenizer(text + "\nAnswer:")["input_ids"]

    def answer_logprobs(self, texts: list[str]) -> torch.Tensor:
        """[n, 2]: next-token log-probabilities of the answers "A" and "B" after each question."""
        encoded = [self.question_ids(t) for t in texts]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        rows = []
        with eval_mode(self.model):
            for i in range(0, len(encoded), self.batch_size):
                batch = encoded[i:i + self.batch_size]
                ids, mask = pad_batch(batch, pad_id, "right")  # right: positions stay 0..len-1 without position_ids
                logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)).logits
                last = logits[torch.arange(len(batch)), torch.tensor([len(s) - 1 for s in batch])].float()
                rows.append(torch.log_softmax(last, -1)[:, self.answer_ids].cpu())
        return torch.cat(rows) if rows else torch.empty(0, 2)

    def prefers_first(self, prompts: list, first: list[str], second: list[str]) -> list[float]:
        """P(the response shown as A is better), normalised over the two answers."""
        texts = [self.template.format(prompt=prompt_text(p), response_a=a, response_b=b)
                 for p, a, b in zip(prompts, first, second, strict=True)]
        return torch.softmax(self.answer_logprobs(texts), -1)[:, 0].tolist()

    def compare(self, prompts: list, responses_a: list[str], responses_b: list[str], **_columns) -> list[float]:
        n = len(prompts)
        p = self.prefers_first(list(prompts) * 2, list(responses_a) + list(responses_b),
                               list(responses_b) + list(responses_a))
        averaged = [(a_first + (1 - b_first)) / 2 for a_first, b_first in zip(p[:n], p[n:])]
        return [0.5 if abs(x - 0.5) <= self.tie_tolerance else x for x in averaged]

    def score(self, prompts: list, responses: list[str], **_columns) -> list[float]:
        return self.compare(prompts, responses, [self.reference] * len(responses))
