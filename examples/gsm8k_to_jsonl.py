"""Convert GSM8K's original JSONL ({"question", "answer": "... #### 72"}) into grpokit prompt rows.

    .venv/bin/python examples/gsm8k_to_jsonl.py gsm8k/train.jsonl data/gsm8k_train.jsonl

Each output row: {"prompt": [system message with the format, user message with the question],
"answer": "72"} (the number after GSM8K's "####", thousands separators dropped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SYSTEM_PROMPT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"


def gsm8k_row(question: str, solution: str) -> dict:
    """One grpokit row from a GSM8K problem; the gold answer is the text after the last '####'."""
    if "####" not in solution:
        raise ValueError(f"no '####' final answer in: {solution[-80:]!r}")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return {"prompt": prompt, "answer": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="GSM8K JSONL with question/answer fields")
    parser.add_argument("target", help="where to write the grpokit JSONL")
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.source).read_text().splitlines() if line.strip()]
    target = Path(args.target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(gsm8k_row(r["question"], r["answer"])) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {target}")


if __name__ == "__main__":
    main()
