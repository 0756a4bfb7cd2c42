"""Chat templates: the recipe's choice (``chat_template:``), a default for models without one, and the
template SFT's assistant-only loss needs.

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

# The assistant turn (its EOS included) sits inside {% generation %} so SFT can train on it alone.
DEFAULT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ 'Assistant: ' }}"
    "{%- generation %}{{ message['content'] + eos_token }}{%- endgeneration %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'Assistant: ' }}{%- endif %}"
)


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


def prepare_chat_template(tokenizer, value=None, *, where: str):
    """Set the recipe's template on ``tokenizer``, or align's default when it has none; returns the tokenizer.
    Call it only where conversations are rendered: a template-less model trained on plain text stays template-less."""
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
