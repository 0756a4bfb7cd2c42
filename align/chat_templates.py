"""Chat templates: the recipe's choice (``chat_template:``), a default for models without one, and the
template SFT's assistant-only loss needs.

Every prompt and conversation align renders goes through ``render``: the tokenizer's template with the stage's
``chat_template_kwargs`` (e.g. Qwen3's ``enable_thinking: false``), which are kept on the tokenizer and saved with
it, and a dataset row's own ``tools`` and ``chat_template_kwargs`` columns (TRL's per-row convention), so that
sampling, scoring, the context check and TRL's trainers all see the same text.

Hub checkpoints bring their own templates; base models (GPT-2, OPT, most pretrained checkpoints) have none.
``chat_template:`` on a stage names a template TRL ships (``llama3``, ``qwen2_5``, ``gemma3``, ``phi3`` ...),
``default`` (align's, below) or a ``.jinja`` file. A model without a template that meets a conversation gets
align's default, said in the log, as LLaMA-Factory's ``template: default`` does: plain ``User:`` /
``Assistant:`` turns closed by the tokenizer's own EOS, so no new tokens and no embedding resize are needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from align.errors import AlignError

log = logging.getLogger("align")

# The assistant turn (its EOS included) sits inside {% generation %} so SFT can train on it alone. The generation
# prompt ends at the colon and the space belongs to the reply (as in Llama-2's and Mistral's templates): a byte-level
# BPE merges it into the reply's first token ('ĠI'), so a prompt ending in 'Assistant: ' would end every sampling
# context with a lone 'Ġ' the model never saw in training. The reply is trimmed, so a sampled ' I love' renders back
# to the same tokens.
DEFAULT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ 'Assistant:' }}"
    "{%- generation %}{{ ' ' + message['content'] | trim + eos_token }}{%- endgeneration %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'Assistant:' }}{%- endif %}"
)


KWARGS_KEY = "chat_template_kwargs"  # in tokenizer.init_kwargs: saved in tokenizer_config.json, so later stages inherit it


def template_kwargs(tokenizer) -> dict:
    """The keyword arguments every rendering with this tokenizer gets (``chat_template_kwargs:`` of the stage that
    prepared it, or of the stage that saved it)."""
    return dict(getattr(tokenizer, "init_kwargs", {}).get(KWARGS_KEY) or {})


def kwargs_problem(value, where: str) -> str | None:
    """Why a ``chat_template_kwargs:`` value is unusable, or None: a mapping of template variables."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
        return (f"{where}: expected a mapping of template variables, e.g. {{enable_thinking: false}}; "
                f"got {value!r}.")
    reserved = sorted(set(value) & {"messages", "tools", "documents", "add_generation_prompt", "chat_template",
                                    "tokenize", "continue_final_message"})
    if reserved:
        return f"{where}: {', '.join(reserved)} {'is' if len(reserved) == 1 else 'are'} set by align, not a template variable."
    return None


def set_template_kwargs(tokenizer, value, *, where: str) -> dict:
    """Merge the recipe's ``chat_template_kwargs`` over those the tokenizer was saved with; returns the result."""
    problem = kwargs_problem(value, where)
    if problem:
        raise AlignError(problem)
    merged = {**template_kwargs(tokenizer), **(value or {})}
    if value:
        tokenizer.init_kwargs[KWARGS_KEY] = merged
        log.info("%s: every prompt and conversation is rendered with %s", where, merged)
    return merged


def row_options(row) -> dict:
    """What a dataset row adds to rendering it: its ``tools`` (a list or JSON text, as TRL reads them) and its
    ``chat_template_kwargs`` column."""
    import json

    if not isinstance(row, dict):
        return {}
    options = dict(row.get(KWARGS_KEY) or {})
    tools = row.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) and tools.strip() else tools
    return {**options, "tools": tools} if tools else options


def render(tokenizer, conversation, options: dict | None = None, **kwargs):
    """``apply_chat_template`` with the tokenizer's ``chat_template_kwargs``, then the row's ``options``
    (``row_options``), then ``kwargs``: the one way align renders a conversation."""
    return tokenizer.apply_chat_template(list(conversation), **{**template_kwargs(tokenizer), **(options or {}), **kwargs})


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def default_template(tokenizer) -> str:
    """align's template, opened with BOS when the tokenizer adds one to plain text (OPT), as the model was trained."""
    return ("{{ bos_token }}" if adds_bos(tokenizer) else "") + DEFAULT_TEMPLATE


def shipped_templates() -> dict[str, Path]:
    """The real chat templates TRL ships (``trl/chat_templates/<name>.jinja``), without its training variants."""
    import trl

    folder = Path(trl.__file__).parent / "chat_templates"
    return {p.stem: p for p in sorted(folder.glob("*.jinja")) if not p.stem.endswith("_training")}


def resolve_chat_template(value: str, *, where: str) -> str:
    """``default``, a TRL-shipped template name, a ``.jinja`` file, or the template text itself."""
    if not isinstance(value, str) or not value.strip():
        raise AlignError(f"{where}: expected a template name, a .jinja file or template text; got {value!r}.")
    if "{%" in value or "{{" in value:
        return value
    shipped = shipped_templates()
    if value in shipped:
        return shipped[value].read_text()
    path = Path(value)
    if path.is_file():
        return path.read_text()
    raise AlignError(f"{where}: {value!r} is neither a template TRL ships ({', '.join(shipped)}), 'default' "
                     f"(align's User:/Assistant: template), nor a .jinja file that exists.")


def prepare_chat_template(tokenizer, value=None, *, where: str, context_check: str | None = "warn", row=None,
                          generation_prompt: str | None = None, kwargs: dict | None = None):
    """Set the recipe's template on ``tokenizer``, or align's default when it has none, and the stage's
    ``chat_template_kwargs`` (``kwargs``, see ``set_template_kwargs``); returns the tokenizer.
    Call it only where conversations are rendered: a template-less model trained on plain text stays template-less.
    Then checks, once, that the context the stage trains or samples in is the one the other stages use
    (``check_context``; ``context_check``: warn, error or off, ``row`` a conversation of the stage's data).
    ``generation_prompt: trained`` samples after the prompt the trainer uses (``trained_generation_prompt``)."""
    if value == "default":
        tokenizer.chat_template = default_template(tokenizer)
        log.info("%s: using align's default chat template", where)
    elif value is not None:
        tokenizer.chat_template = resolve_chat_template(value, where=where)
        log.info("%s: using chat template %s", where, value if len(str(value)) < 60 else "(inline)")
    elif tokenizer.chat_template is None:
        tokenizer.chat_template = default_template(tokenizer)
        log.info("%s: the model has no chat template; conversations use align's default (User:/Assistant: turns "
                 "closed by EOS %r). Set %s to choose another.", where.rsplit(".", 1)[0], tokenizer.eos_token, where)
    stage = where.rsplit(".", 1)[0]
    set_template_kwargs(tokenizer, kwargs, where=f"{stage}.chat_template_kwargs")
    if generation_prompt not in (None, *GENERATION_PROMPTS):
        raise AlignError(f"{stage}.generation_prompt: expected template (the chat template's own) or trained (the "
                         f"prompt the trainer puts before a reply); got {generation_prompt!r}.")
    if generation_prompt == "trained":
        trained_generation_prompt(tokenizer, f"{stage}.generation_prompt")
    check_context(tokenizer, stage, row=row, mode=context_check or "warn")
    return tokenizer


def assistant_only_template(tokenizer) -> str | None:
    """A template with ``{% generation %}`` markers for assistant-only loss: the tokenizer's own when it has them,
    TRL's patched version of a known Hub template, or None when neither exists."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return tokenizer.chat_template
    try:
        return get_training_chat_template(tokenizer) or tokenizer.chat_template
    except ValueError:
        return None


# --------------------------------------------------------------------------- the context invariant

PROBE_REPLY = {"role": "assistant", "content": "I love this kettle. It boils fast."}
PROBE = ({"role": "user", "content": "Write a short review of the kettle."}, PROBE_REPLY)


def _ids(tokenizer, messages, options=None, **kwargs) -> list[int]:
    return list(render(tokenizer, messages, options, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def context_problems(tokenizer, conversation=PROBE, options: dict | None = None) -> list[str]:
    """Where the token context a stage trains on differs from the one the policy is sampled and scored in; empty
    when they agree. ``conversation`` ends with an assistant reply.

    Sampling (preferences, PPO, evaluate, KL) conditions on the prompt rendered with the generation prompt; SFT, DPO
    and the reward model see the whole conversation; TRL's completion-only SFT and DPO take the reply to start where
    the two diverge, and assistant-only SFT where the template's ``{% generation %}`` block starts. One context means
    the prompt's ids are a prefix of the conversation's and, with generation markers, the trained reply starts
    exactly there. ``options``: the row's tools and template arguments (``row_options``)."""
    prompt, reply = list(conversation[:-1]), conversation[-1]
    sampled = _ids(tokenizer, prompt, options, add_generation_prompt=True)
    trained = _ids(tokenizer, [*prompt, reply], options)
    tokens = tokenizer.convert_ids_to_tokens
    common = next((i for i, (a, b) in enumerate(zip(sampled, trained)) if a != b), min(len(sampled), len(trained)))
    problems = []
    if common < len(sampled):
        show = slice(max(0, common - 2), common + 3)
        problems.append(
            f"the policy is sampled after a context it is not trained in: the prompt with the generation prompt "
            f"(what preferences, PPO and evaluate sample after) ends {tokens(sampled[max(0, common - 2):])}, but "
            f"the trained conversation (SFT, DPO, reward) has {tokens(trained[show])} there (first difference at "
            f"token {common}: generation prompt {tokenizer.decode(sampled[common:])!r}). "
            + _why(tokenizer.decode(sampled[common:])))
    training = assistant_only_template(tokenizer)
    if training is not None and not problems:
        rendered = render(tokenizer, [*prompt, reply], options, chat_template=training, tokenize=True,
                          return_dict=True, return_assistant_tokens_mask=True)
        mask = list(rendered["assistant_masks"])
        starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
        # a block that starts earlier also trains the generation prompt's last tokens (TRL's Qwen template trains
        # the newline after 'assistant'): the reply's context is the same; one that starts later leaves it untrained
        if starts and starts[-1] > len(sampled):
            start = starts[-1]
            problems.append(
                f"SFT's assistant-only loss starts the reply at token {start} "
                f"({tokens(list(rendered['input_ids'])[start:start + 2])}) but sampling starts at token {len(sampled)}: "
                f"the reply's first tokens {tokens(trained[len(sampled):start])} are sampled but never trained.")
    return problems


def _why(generation_prompt: str) -> str:
    if "<think>" in generation_prompt:
        return ("The template opens a think block to sample but strips think blocks from the replies it trains on; "
                "give replies that carry the think block, or set chat_template to a template that samples after the "
                "prompt the trainer used (see README, 'Chat templates').")
    if generation_prompt and not generation_prompt.strip():
        return ("The generation prompt ends in whitespace that the tokenizer merges into the reply's first token; "
                "end the generation prompt before the space and let the reply carry it (align's default template does).")
    return "Use a chat template whose generation prompt is the start of the assistant turn it renders."


GENERATION_PROMPTS = ("template", "trained")
SENTINEL = "\u2063ALIGN-REPLY\u2063"  # invisible separators: no template trims or splits on them


def trained_generation_prompt(tokenizer, where: str) -> str:
    """``generation_prompt: trained``: the template, rewritten so its generation prompt is the text the rendered
    conversation puts before a reply (DeepSeek-R1's ``<｜Assistant｜>``, not ``<｜Assistant｜><think>\n``). The policy is
    then sampled after exactly the context SFT and DPO trained the reply in; its think block, if any, is sampled
    as part of the reply. Sets and returns the new template."""
    prompt = [PROBE[0]]
    try:
        before = render(tokenizer, prompt, tokenize=False)
        full = render(tokenizer, [*prompt, {"role": "assistant", "content": SENTINEL}], tokenize=False)
    except Exception as e:  # noqa: BLE001 -- a template's own exception, e.g. it requires a system message
        raise AlignError(f"{where}: the chat template cannot render a probe conversation ({e}), so align cannot derive "
                         f"the prompt it trains replies after; use generation_prompt: template.") from None
    if SENTINEL not in full or not full.startswith(before):
        raise AlignError(f"{where}: the chat template does not render the prompt alone as the start of the "
                         f"conversation, so align cannot derive the prompt it trains replies after; use "
                         f"generation_prompt: template or a chat_template whose generation prompt fits.")
    opener = full[len(before):full.index(SENTINEL)]
    text = tokenizer.chat_template
    tokenizer.chat_template = ("{%- set align_generation_prompt = add_generation_prompt is defined and add_generation_prompt %}"
                               "{%- set add_generation_prompt = false %}" + text
                               + "{%- if align_generation_prompt %}{{ " + repr(opener) + " }}{%- endif %}")
    log.info("%s: sampling after the prompt the trainer uses (%r) instead of the template's generation prompt",
             where, opener)
    return tokenizer.chat_template


def probe_conversation(row=None) -> list[dict]:
    """A conversation ending with an assistant reply, like ``row`` (messages, a prompt, or a preference pair's
    prompt + chosen) when it is conversational, else align's probe."""
    row = row or {}
    if isinstance(row.get("messages"), list) and row["messages"] and row["messages"][-1].get("role") == "assistant":
        return list(row["messages"])
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt:
        chosen = row.get("chosen") or row.get("completion")
        reply = chosen[-1] if isinstance(chosen, list) and chosen else PROBE_REPLY
        return [*prompt, reply]
    if isinstance(prompt, str) and prompt:
        return [{"role": "user", "content": prompt}, PROBE_REPLY]
    return list(PROBE)


def sampling_context(tokenizer, chat: bool = True) -> dict:
    """What a policy is sampled after, for the report: the text its template appends to a prompt to open a reply,
    where that text comes from (the template's own generation prompt, or ``trained``: rewritten by SFT's
    ``generation_prompt: trained`` to the prompt SFT trained replies after), and the context check's problems."""
    if not chat or tokenizer.chat_template is None:
        return {"generation_prompt": None, "source": "raw text (chat: false)" if not chat else "no template",
                "problems": []}
    try:
        before = render(tokenizer, [PROBE[0]], tokenize=False)
        opened = render(tokenizer, [PROBE[0]], tokenize=False, add_generation_prompt=True)
        problems = context_problems(tokenizer)
    except Exception as e:  # noqa: BLE001 -- a template that cannot render the probe is reported, not fatal
        return {"generation_prompt": None, "source": f"not rendered ({type(e).__name__})", "problems": []}
    source = "trained" if "align_generation_prompt" in tokenizer.chat_template else "template"
    return {"generation_prompt": opened[len(before):] if opened.startswith(before) else opened, "source": source,
            "problems": problems}


CONTEXT_CHECK = ("warn", "error", "off")


def check_context(tokenizer, where: str, *, row=None, mode: str = "warn") -> list[str]:
    """Log (once per stage) whether the trained and sampled contexts agree on ``row``'s conversation (see
    ``probe_conversation``); ``mode`` ``error`` makes a disagreement an AlignError naming ``where``, ``off`` skips the
    check. Returns the problems."""
    if mode not in CONTEXT_CHECK:
        raise AlignError(f"{where}: expected one of {', '.join(CONTEXT_CHECK)}; got {mode!r}.")
    if tokenizer.chat_template is None or mode == "off":
        return []
    try:
        problems = context_problems(tokenizer, probe_conversation(row), row_options(row))
    except Exception as e:  # noqa: BLE001 -- a template that cannot render the probe (roles, tools) is not checked
        log.info("%s: the context check could not render a probe conversation (%s: %s)", where, type(e).__name__, e)
        return []
    if not problems:
        log.info("%s: one context: SFT, DPO and reward train after exactly the tokens preferences, PPO and evaluate "
                 "sample after", where)
    for problem in problems:
        if mode == "error":
            raise AlignError(f"{where}: {problem}")
        log.warning("%s: %s", where, problem)
    return problems


def context_findings(path, spec: dict, where: str) -> tuple[list[str], list[str]]:
    """For ``align validate``: the stage's context check on the model in ``path`` (its tokenizer with the stage's
    ``chat_template`` and ``generation_prompt``), without training. Returns (problems, notes): a difference is a
    problem under ``context_check: error``, else a note that the stage will warn."""
    from align.models import load_tokenizer

    mode = spec.get("context_check") or "warn"
    if mode not in CONTEXT_CHECK:
        return [f"{where}.context_check: expected one of {', '.join(CONTEXT_CHECK)}; got {mode!r}."], []
    if mode == "off":
        return [], [f"{where}: context check off"]
    try:
        tokenizer = load_tokenizer(path, field=where)
    except Exception as e:  # noqa: BLE001 -- validate's model check says what is missing; the run would say it too
        return [], [f"{where}: context not checked (its tokenizer does not load: {' '.join(str(e).split())[:200]})"]
    value = spec.get("chat_template")
    if value == "default" or (value is None and tokenizer.chat_template is None):
        tokenizer.chat_template = default_template(tokenizer)
    elif value is not None:
        tokenizer.chat_template = resolve_chat_template(value, where=f"{where}.chat_template")
    if spec.get("generation_prompt") not in (None, *GENERATION_PROMPTS):
        return [f"{where}.generation_prompt: expected template or trained; got {spec['generation_prompt']!r}."], []
    problem = kwargs_problem(spec.get(KWARGS_KEY), f"{where}.{KWARGS_KEY}")
    if problem:
        return [problem], []
    set_template_kwargs(tokenizer, spec.get(KWARGS_KEY), where=f"{where}.{KWARGS_KEY}")
    if spec.get("generation_prompt") == "trained":
        trained_generation_prompt(tokenizer, f"{where}.generation_prompt")
    problems = context_problems(tokenizer)
    if not problems:
        return [], [f"{where}: one context: replies are trained after exactly the tokens the policy is sampled after"]
    if mode == "error":
        return [f"{where}: {p}" for p in problems], []
    return [], [f"{where}: the stage will warn: {p}" for p in problems]
