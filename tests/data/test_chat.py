"""Chat prompts from a checkpoint's template render exactly as transformers renders them (the reference environment
runs ``transformers.utils.chat_template_utils.render_jinja_template`` on the same template and messages)."""

import json
import os
import subprocess

import pytest

from qwen35_jax.data import get_tokenizer, load_chat_template, render_chat

# A ChatML template in the style of the Qwen checkpoints' (system turn, tools as JSON, a thinking switch on the
# generation prompt, loop controls), written for this test.
TEMPLATE = """{%- if messages[0].role == 'system' %}
<|im_start|>system
{{ messages[0].content }}
{%- if tools %}

Tools: {{ tools | tojson }}
{%- endif %}
<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if loop.first and message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role not in ['user', 'assistant'] %}{{ raise_exception('unknown role ' + message.role) }}{% endif %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}
<think>

</think>

{% endif %}
{%- endif %}
"""

CONVERSATIONS = [
    ([{"role": "user", "content": "Give me a short introduction to JAX."}], {}),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Ünïcode ✓ — and \"quotes\""},
      {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Again?"}], {"enable_thinking": False}),
]


def _transformers_render(template: str) -> list[str]:
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        pytest.fail("HF_REF_PYTHON is unset: point it at the reference interpreter (.venv-ref/bin/python)")
    script = (
        "import json, sys\n"
        "from transformers.utils.chat_template_utils import render_jinja_template\n"
        "job = json.load(sys.stdin)\n"
        "out = []\n"
        "for messages, kwargs in job['conversations']:\n"
        "    texts, _ = render_jinja_template([messages], chat_template=job['template'], add_generation_prompt=True,\n"
        "                                     tools=[{'name': 'now', 'description': 'the time'}], **kwargs)\n"
        "    out.append(texts[0])\n"
        "print(json.dumps(out))\n")
    job = json.dumps({"template": template, "conversations": CONVERSATIONS})
    done = subprocess.run([ref_python, "-c", script], input=job, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_render_matches_transformers():
    ours = [render_chat(TEMPLATE, messages, tools=[{"name": "now", "description": "the time"}], **kwargs)
            for messages, kwargs in CONVERSATIONS]
    assert ours == _transformers_render(TEMPLATE)
    assert ours[0].endswith("<|im_start|>assistant\n")
    assert ours[1].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "Ünïcode ✓" in ours[1]  # tojson / content keep non-ASCII text


def test_rendered_special_tokens_encode_to_their_ids():
    tokenizer = get_tokenizer()
    ids = tokenizer.encode(render_chat(TEMPLATE, CONVERSATIONS[0][0]), allow_special=True)
    assert ids[0] == tokenizer.special_id("<|im_start|>")
    assert ids.count(tokenizer.special_id("<|im_end|>")) == 1


def test_template_is_found_in_either_file_and_its_absence_names_the_fix(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "chat_template.jinja").write_text(TEMPLATE)
    assert load_chat_template(tmp_path / "a") == TEMPLATE
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]}))
    assert load_chat_template(tmp_path / "b") == TEMPLATE
    with pytest.raises(FileNotFoundError, match="no chat template"):
        load_chat_template(tmp_path)


def test_unknown_role_and_malformed_messages_fail_clearly():
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role tool"):
        render_chat(TEMPLATE, [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match=r"messages\[0\].*'role' and 'content'"):
        render_chat(TEMPLATE, [{"text": "hi"}])
