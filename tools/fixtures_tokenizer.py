"""Reference token ids for the CLIP tokenizer parity test (tests/parity_tokenizer.rs).

Rerun from the repository root with the reference venv:

    /work/venv-ref/bin/python tools/fixtures_tokenizer.py

For each tiny model (tiny-sd: vocab.json + merges.txt, pads with <|endoftext|>; tiny-sd2:
tokenizer.json only, pads with "!") it writes tests/fixtures/parity/tokenizer_<model>.json with,
for every prompt, the ids transformers' CLIPTokenizer gives with padding="max_length",
max_length=model_max_length, truncation=True, the untruncated length, and whether it truncated.
"""

import json
import os
import sys

import transformers
from transformers import CLIPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "parity")

WORDS_75 = " ".join(f"w{i % 10}" if i % 3 else "cat" for i in range(75))
LONG = "a photograph of an astronaut riding a horse on the moon, " * 8

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "a cat, a dog!",
    "it's",
    "don't",
    "we're they've i'm you'll he'd",
    "IT'S DON'T",
    "hello...world",
    "!!!",
    "a!b",
    "3 cats",
    "1999",
    "3.14",
    "1,000,000 $5 50% #1",
    "  extra   spaces  ",
    "tabs\tand\nnewlines\r\nhere",
    "non\u00a0breaking\u3000space",
    "caf\u00e9",
    "na\u00efve",
    "\u65e5\u672c\u306e\u732b",
    "\U0001f431 cat \U0001f431\U0001f431",
    "e\u0301",
    "cafe\u0301 ",
    "\u00c9COLE",
    "\u0130stanbul \u00df STRASSE",
    "x\u00b2 \u00bd \u2160",
    "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u039f\u03a3",
    "a cat<|endoftext|>!",
    "\u0645\u0631\u062d\u0628\u0627 \u043f\u0440\u0438\u0432\u0435\u0442",
    "<|startoftext|>a cat<|endoftext|>",
    "a <|endoftext|> b",
    "<|ENDOFTEXT|>",
    "<|endoftext|",
    "the cat's hat's",
    "'s 'tis",
    "a_b-c/d\\e",
    "quotes \"here\" and `there`",
    "",
    " ",
    WORDS_75,
    LONG,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def main():
    assert transformers.__version__.startswith("5."), transformers.__version__
    os.makedirs(OUT, exist_ok=True)
    for model in ["tiny-sd", "tiny-sd2"]:
        tok = CLIPTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "models", model, "tokenizer"))
        cases = []
        for p in PROMPTS:
            ids = tok(p, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
            full = tok(p, truncation=False).input_ids
            cases.append(
                {
                    "prompt": p,
                    "ids": ids,
                    "n_tokens": len(full),
                    "truncated": len(full) > tok.model_max_length,
                }
            )
        doc = {
            "transformers": transformers.__version__,
            "model": model,
            "max_length": tok.model_max_length,
            "pad_id": tok.pad_token_id,
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "cases": cases,
        }
        path = os.path.join(OUT, f"tokenizer_{model}.json")
        with open(path, "w", encoding="utf-8") as f:
            # One case per line keeps the file small and its diffs readable.
            f.write("{\n")
            for k in ["transformers", "model", "max_length", "pad_id", "bos_id", "eos_id"]:
                f.write(f"  {json.dumps(k)}: {json.dumps(doc[k])},\n")
            f.write('  "cases": [\n')
            f.write(",\n".join("    " + json.dumps(c, ensure_ascii=True) for c in cases))
            f.write("\n  ]\n}\n")
        print(f"wrote {path}: {len(cases)} prompts", file=sys.stderr)


if __name__ == "__main__":
    main()
