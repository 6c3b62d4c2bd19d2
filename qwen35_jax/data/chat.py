"""Chat prompts from a checkpoint's own chat template (the Jinja template the Hub's Qwen3.5 directories ship).

The template is read from the checkpoint directory — ``chat_template.jinja``, else the ``chat_template`` entry of
``tokenizer_config.json`` — and rendered with the environment transformers renders it with (sandboxed, blocks
trimmed, ``raise_exception`` / ``strftime_now`` globals, a ``tojson`` that keeps non-ASCII text), so the prompt
string is the one ``tokenizer.apply_chat_template(..., tokenize=False)`` returns (tested against transformers).
Encode the result with ``get_tokenizer().encode(text, allow_special=True)``: the template writes special tokens
such as ``<|im_start|>`` as text.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"


def load_chat_template(checkpoint_dir: str | os.PathLike) -> str:
    """The chat template of a transformers checkpoint directory (``chat_template.jinja`` or
    ``tokenizer_config.json``'s ``chat_template``; a named list picks ``default``)."""
    directory = os.fspath(checkpoint_dir)
    path = os.path.join(directory, TEMPLATE_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    config_path = os.path.join(directory, TOKENIZER_CONFIG)
    template = None
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {entry.get("name"): entry.get("template") for entry in template}.get("default")
    if not isinstance(template, str) or not template:
        raise FileNotFoundError(f"{directory} has no chat template ({TEMPLATE_FILE}, or a chat_template entry in "
                                f"{TOKENIZER_CONFIG}): download the checkpoint's tokenizer files too, or pass the "
                                "prompt as plain text without --chat")
    return template


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:  # a jinja2.Template
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:
        raise ImportError("chat templates need jinja2: pip install 'jinja2>=3.1'") from error
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return environment.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                **template_kwargs: Any) -> str:
    """The prompt text for ``messages`` (``[{"role": "user", "content": "..."}, ...]``); ``template_kwargs`` reach
    the template (e.g. ``enable_thinking=False`` for Qwen3.5's non-thinking mode)."""
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}]={message!r} must be a mapping with 'role' and 'content', e.g. "
                             "{'role': 'user', 'content': 'Hello'}")
    return _compile(template).render(messages=[dict(m) for m in messages],
                                     add_generation_prompt=add_generation_prompt, **template_kwargs)
