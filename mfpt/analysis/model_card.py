"""The model card of a run's exported model (`adapter/README.md`), written by mfpt from the run itself.

peft's `save_pretrained` leaves a template card ("[More Information Needed]" some forty times). A site that
receives the adapter should read what it is: the base model, the method, the languages and data it was trained on,
its scores per language, the privacy guarantee (or that there is none), and how to use it. The front matter uses the
Hugging Face model-card keys, so hub tools read it too.
"""

from __future__ import annotations

from pathlib import Path

from mfpt import __version__
from mfpt.analysis.grouping import config_value
from mfpt.core import files
from mfpt.core.languages import language_name
from mfpt.privacy.accounting import in_words as privacy_in_words
from mfpt.results.schema import ADAPTER_DIR, RunResult

MODEL_CARD = "README.md"


def render_model_card(result: RunResult, run_folder: Path) -> str:
    """The card's Markdown: front matter, what the model is, its data, scores, privacy and usage."""
    full = result.method == "full"
    low = set(result.low_resource)
    front = ["---", f"library_name: {'transformers' if full else 'peft'}", f"base_model: {result.model}",
             "pipeline_tag: text-classification", "language:", *(f"- {lang}" for lang in result.languages),
             "tags:", "- mfpt", "- federated-learning", f"- {result.method}", "---", ""]
    split = "validation-selected round, scored on test" if result.selection.get("rule") == "best-validation" else \
        f"{config_value(result, 'data.eval_split')} split after the last round"
    lines = [
        f"# {run_folder.name}: {result.paradigm} / {result.method} on {result.model}",
        "",
        f"Trained by mfpt {result.versions.get('mfpt', __version__)} (experiment `{result.name}`, seed {result.seed}, "
        f"{result.rounds} round{'s' if result.rounds != 1 else ''}). {result.protocol}",
        "",
        "## Model",
        "",
        f"- Base model: `{result.model}`" + (f" (the folder `{result.model_path}` when it ran)"
                                             if result.model_path and result.model_path != result.model else "")
        + (": this folder holds the whole fine-tuned model." if full else
           ": this folder holds only what was trained, to be loaded onto it."),
        f"- Trained: {result.trainable_params:,} of {result.total_params:,} parameters "
        f"({100 * result.trainable_params / max(result.total_params, 1):.3f}%), method `{result.method}`.",
        f"- Labels, in the order of the classifier's outputs: {', '.join(result.labels)}.",
        "",
        "## Data",
        "",
        f"- Source: `{config_value(result, 'data.source')}`"
        + (f" (`{config_value(result, 'data.path')}`)" if config_value(result, "data.path") else "") + ".",
        f"- Trained on {len(result.languages)} language(s): "
        + ", ".join(f"{lang} ({language_name(lang)}){'†' if lang in low else ''}" for lang in result.languages)
        + (" († low-resource)" if low else "") + ".",
    ]
    if result.heldout_languages:
        lines.append(f"- Evaluated without training data: {', '.join(result.heldout_languages)}.")
    # Classification: accuracy and macro-F1; generation: chrF++ and the exact-match rate (its `accuracy`).
    first, second, names = (("chrf", "accuracy", ("chrF++", "exact match")) if result.generation else
                            ("accuracy", "macro_f1", ("accuracy", "macro-F1")))
    lines += ["", f"## Results ({names[0]} %, {split})", "", f"| language | {names[0]} | {names[1]} | rows scored |",
              "|---|---|---|---|"]
    for lang in [*result.languages, *result.heldout_languages]:
        score = result.per_language.get(lang) or result.heldout.get(lang)
        lines.append(f"| {lang} | {100 * getattr(score, first):.1f} | {100 * getattr(score, second):.1f} | "
                     f"{score.n_test} |" if score else f"| {lang} | - | - | - |")
    if result.average is not None:
        lines.append(f"| **mean** | **{100 * getattr(result.average, first):.1f}** | "
                     f"{100 * getattr(result.average, second):.1f} | |")
    lines += ["", "## Privacy", "",
              privacy_in_words(result.privacy) if result.privacy else
              "No formal privacy guarantee (no `[privacy]` section): the training texts never left their sites, but "
              "the trained tensors were shared, and they can reveal something of the data they were trained on.",
              "", "## Use", "", "```bash",
              f"mfpt predict {run_folder} --input texts.jsonl --out predictions.jsonl   # columns: text, lang",
              "```", ""]
    return "\n".join(front + lines)


def write_model_card(result: RunResult, run_folder: Path) -> Path | None:
    """Write the card into the run's adapter folder (replacing peft's template); None when nothing was exported."""
    adapter = Path(run_folder) / ADAPTER_DIR
    if not adapter.is_dir():
        return None
    return files.write_text(adapter / MODEL_CARD, render_model_card(result, Path(run_folder)))
