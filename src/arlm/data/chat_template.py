"""Chat templates: a model's own Jinja template rendered as transformers renders it, and arlm's plain one for
models that have none."""

from __future__ import annotations

import json
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from arlm.errors import ArlmError

Message = dict[str, str]
# for arlm's own models: "role: content" lines; the end-of-turn id is appended after each answer by the caller
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def apply_chat_template(
    template: str,
    messages: list[Message],
    add_generation_prompt: bool = True,
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render a chat template as transformers does (sandboxed Jinja, trim_blocks, lstrip_blocks)."""

    def raise_exception(message: str) -> None:
        raise ArlmError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token
        )
    except TemplateError as exc:
        raise ArlmError(f"chat template failed to render: {exc}") from None
