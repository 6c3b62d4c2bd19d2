"""README's real-checkpoint quickstart, run as written on a tiny transformers checkpoint with the real vocabulary.

The Hub's Qwen3.5-0.8B cannot be downloaded here, so ``real_vocab_checkpoint`` makes a stand-in with the same
interface: the tiny ``dense_tied`` fixture (saved by transformers) with its embedding grown to the full 248,320-entry
vocabulary and a chat template beside it. Every README code block marked ``<!-- snippet: NAME -->`` is executed with
the README's checkpoint path pointed at it, and the quickstart's command lines run as subprocesses.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
README_PATH = "checkpoints/Qwen3.5-0.8B"  # where the README's quickstart downloads the checkpoint
CHAT_TEMPLATE = """{%- for message in messages %}
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


def readme_snippets() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    return dict(re.findall(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)```", text, flags=re.S))


@pytest.fixture(scope="module")
def real_vocab_checkpoint(hf_fixtures, tmp_path_factory) -> pathlib.Path:
    from safetensors.numpy import load_file, save_file

    from qwen35_jax.data import MODEL_VOCAB_SIZE

    out = tmp_path_factory.mktemp("Qwen3.5-tiny")
    tensors = load_file(str(hf_fixtures / "dense_tied" / "model.safetensors"))
    embed = tensors["model.embed_tokens.weight"]
    rng = np.random.default_rng(0)
    grown = rng.normal(0.0, float(embed.std()), (MODEL_VOCAB_SIZE, embed.shape[1])).astype(embed.dtype)
    grown[: embed.shape[0]] = embed
    tensors["model.embed_tokens.weight"] = grown
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((hf_fixtures / "dense_tied" / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "vocab_size": MODEL_VOCAB_SIZE}))
    shutil.copy(hf_fixtures / "dense_tied" / "generation_config.json", out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def test_readme_marks_the_quickstart_snippets():
    assert {"using-the-model", "chat"} <= set(readme_snippets())
    assert README_PATH in readme_snippets()["chat"]


@pytest.mark.parametrize("name", ["using-the-model", "chat"])
def test_readme_snippet_runs(name, real_vocab_checkpoint, capsys):
    code = readme_snippets()[name].replace(README_PATH, str(real_vocab_checkpoint))
    namespace: dict = {}
    exec(compile(code, f"README.md:{name}", "exec"), namespace)  # noqa: S102 - the README's own code
    if name == "using-the-model":
        assert namespace["out"].logits.shape[:2] == namespace["ids"].shape
        assert namespace["out"].logits.shape[-1] == 248320
    else:
        assert namespace["prompt"].startswith("<|im_start|>user\n")
        assert namespace["ids"][0] == namespace["tokenizer"].special_id("<|im_start|>")
        assert 1 <= len(namespace["result"].tokens[0]) <= 16
        assert capsys.readouterr().out.strip()  # the decoded continuation was printed


@pytest.mark.parametrize("chat", [False, True])
def test_readme_generate_command_runs(chat, real_vocab_checkpoint):
    cmd = [sys.executable, "-m", "experiments.generate", "--hf_dir", str(real_vocab_checkpoint),
           "--prompt", "The capital of France is", "--max_new_tokens", "4", *(["--chat"] if chat else [])]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "QWEN35_JAX_CACHE": "off"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "=== 'The capital of France is'" in done.stdout
    assert "decode" in done.stdout and "tokens/s" in done.stdout
    if chat:
        assert "<|im_start|>assistant" in done.stdout  # the rendered chat prompt is shown
