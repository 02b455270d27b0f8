"""Is a udhr-topics labelling learnable? A nearest-centroid probe on frozen encoder features, before any training.

With whole articles held out, a labelling is only useful if a classifier can generalise from the training
articles to unseen ones. This measures that for the shipped labels (Cassin's portico, 4 labels) and for the
six-theme grouping that was measured first and rejected (data/udhr-topics/README.md, "How labels were chosen").

Run:  python benchmarks/probe_udhr_labels.py [--model DIR] [--languages eng,fra,swh,hau,yor,amh] [--split validation]
Prints accuracy on the chosen split (validation by default: labels are chosen there, never on test) per language
for [CLS] and mean-pooled features, with the majority-class rate of that split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # the udhr-topics builder

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from udhr_topics import ARTICLE_TOPIC  # noqa: E402

# The first design (rejected): six themes of the same 30 articles.
SIX_THEMES = {**{a: "life_liberty" for a in range(1, 6)}, **{a: "justice_law" for a in range(6, 12)},
              **{a: "civil_political" for a in (13, 14, 18, 19, 20, 21)}, **{a: "family_property" for a in (12, 15, 16, 17)},
              **{a: "economic_social" for a in range(22, 26)}, **{a: "education_culture" for a in range(26, 31)}}


def features(texts: list[str], model_dir: str) -> dict[str, torch.Tensor]:
    """[CLS] and attention-mean-pooled last hidden states, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    cls, mean = [], []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            enc = tokenizer(["query: " + t for t in texts[start:start + 64]], truncation=True, max_length=64,
                            padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            cls.append(hidden[:, 0])
            mean.append((hidden * mask).sum(1) / mask.sum(1))
    return {name: torch.nn.functional.normalize(torch.cat(parts), dim=-1) for name, parts in (("cls", cls), ("mean", mean))}


def probe(feats: torch.Tensor, labels: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Predictions of the nearest class centroid (cosine), centroids from the training rows."""
    classes = sorted(set(labels[train]))
    centroids = torch.stack([feats[torch.from_numpy(train & (labels == c))].mean(0) for c in classes])
    scores = feats @ torch.nn.functional.normalize(centroids, dim=-1).T
    return np.array(classes)[scores.argmax(-1).numpy()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "multilingual-e5-small"))
    parser.add_argument("--languages", default="eng,fra,swh,hau,yor,amh")
    parser.add_argument("--split", choices=("validation", "test"), default="validation",
                        help="the held-out split to score (default: %(default)s)")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"probe: no checkpoint at {args.model}; run `make encoder` or pass --model DIR.")
    langs = args.languages.split(",")
    frame = pd.read_json(ROOT / "data" / "udhr-topics" / "udhr-topics.jsonl", lines=True)
    frame = frame[frame.lang.isin(langs)].reset_index(drop=True)
    feats = features(frame.text.tolist(), args.model)
    train = (frame.split == "train").to_numpy()
    held_out = (frame.split == args.split).to_numpy()
    for name, mapping in (("portico (shipped, 4 labels)", ARTICLE_TOPIC), ("six themes (rejected)", SIX_THEMES)):
        labels = frame.article.map(mapping).to_numpy()
        majority = pd.Series(labels[held_out]).value_counts(normalize=True).iloc[0]
        print(f"{name}: majority class {100 * majority:.1f}% of {args.split}")
        for kind, matrix in feats.items():
            correct = probe(matrix, labels, train) == labels
            per_lang = {lang: correct[held_out & (frame.lang == lang).to_numpy()].mean() for lang in langs}
            cells = "  ".join(f"{lang} {100 * acc:.0f}" for lang, acc in per_lang.items())
            print(f"  {kind:<4} mean {100 * np.mean(list(per_lang.values())):.1f}%  | {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
