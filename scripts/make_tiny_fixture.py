"""Write tests/fixtures/tiny_multilingual.jsonl: a small, learnable, 4-language topic task in the universal schema.

Each label has its own stem words; each language spells them with its own affixes, so the label is learnable
within a language and shared structure exists across languages (as in a real multilingual task).
"""

import json
import random
from pathlib import Path

LANGS = {"eng": ("", "s"), "swh": ("ki", "ni"), "hau": ("ma", "wa"), "yor": ("o", "ra")}
LABELS = {"sport": ["ball", "goal", "team", "match", "run"], "health": ["doctor", "fever", "clinic", "medicine", "care"],
          "politics": ["vote", "law", "minister", "election", "court"]}
FILLER = ["the", "today", "people", "said", "new", "city", "week", "many"]


def main() -> None:
    rng = random.Random(0)
    rows = []
    for lang, (prefix, suffix) in LANGS.items():
        for label, stems in LABELS.items():
            for i in range(12):
                words = [prefix + w + suffix for w in rng.sample(stems, 2)] + rng.sample(FILLER, 3)
                rng.shuffle(words)
                rows.append({"text": " ".join(words), "label": label, "lang": lang, "split": "test" if i >= 9 else "train"})
    out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny_multilingual.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
