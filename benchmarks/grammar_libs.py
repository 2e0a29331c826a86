"""xgrammar against llguidance for sloray's structured output (CPU only), on our tokenizers: the demo's
byte-level BPE (478 tokens) and a 32k byte-level BPE trained here on the Python standard library's source.

    python benchmarks/grammar_libs.py --out DIR [--walks 200] [--smoke]

Per library and tokenizer: tokenizer set-up time; grammar compile time (a JSON schema with nested
objects, arrays, enums, bounded strings and integers; any JSON object; a regex); the time to fill one
request's next-token bitmask at each step of a fixed valid document, and for a batch of 128 requests;
and validity: `--walks` random walks through the grammar (each step a random allowed token, as a random
model would pick, until EOS) whose texts are checked with json.loads + jsonschema. A library that is not
installed is skipped (sloray installs llguidance only). Writes grammar_libs.json and grammar_libs.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "role", "tags", "address", "ok"],
    "additionalProperties": False,
}
DOC = {
    "name": "Ada Lovelace",
    "age": 36,
    "email": "ada@math.com",
    "role": "admin",
    "tags": ["math", "poetry"],
    "address": {"city": "London", "zip": "12345"},
    "ok": True,
}
REGEX = r"(\d{3})-(\d{3})-(\d{4})"


def write_bpe_tokenizer(d: Path, vocab_size: int) -> Path:
    """A byte-level BPE trained on the standard library's .py files (no tests, no site-packages): a
    realistic vocabulary of code and punctuation tokens, made without network access."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if (d / "tokenizer.json").exists():
        return d
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)

    def texts():
        for p in files:
            try:
                yield p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts(), trainer=trainer)
    d.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        str(d)
    )
    return d


class XGrammar:
    name = "xgrammar"

    def __init__(self, hf, vocab: int, eos: int):
        import xgrammar as xgr

        self.xgr = xgr
        t = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=[eos])
        self.init_s = time.perf_counter() - t
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.vocab = vocab

    def compile(self, kind: str, spec):
        c = self.compiler
        if kind == "schema":
            return c.compile_json_schema(json.dumps(spec), any_whitespace=False)
        if kind == "object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
        return c.compile_regex(spec)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, n: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(n, self.vocab)

    def fill(self, m, bitmask, row: int = 0) -> None:
        m.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, ms, bitmask) -> None:
        self.xgr.BatchGrammarMatcher().batch_fill_next_token_bitmask(ms, bitmask)

    def accept(self, m, tok: int) -> bool:
        return m.accept_token(tok)


class LLGuidance:
    name = "llguidance"

    def __init__(self, hf, vocab: int, eos: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        from app.structured import JSON_OPTIONS

        self.llg, self.lt, self.options = llguidance, llguidance.torch, JSON_OPTIONS
        t = time.perf_counter()
        self.tok = llguidance.hf.from_tokenizer(hf, n_vocab=vocab, eos_token=[eos])
        self.init_s = time.perf_counter() - t
        self.executor = llguidance.LLExecutor()
        self.vocab = vocab

    def compile(self, kind: str, spec):
        M = self.llg.LLMatcher
        if kind == "schema":
            g = M.grammar_from_json_schema(spec, defaults=self.options)
        elif kind == "object":
            g = M.grammar_from_json_schema({"type": "object"}, defaults=self.options)
        else:
            g = M.grammar_from_regex(spec)
        m = M(self.tok, g, log_level=0)
        assert not m.is_error(), m.get_error()
        return m

    def matcher(self, compiled):
        return compiled.deep_copy()

    def bitmask(self, n: int) -> torch.Tensor:
        return self.lt.allocate_token_bitmask(n, self.vocab)

    def fill(self, m, bitmask, row: int = 0) -> None:
        self.lt.fill_next_token_bitmask(m, bitmask, row)

    def fill_batch(self, ms, bitmask) -> None:
        self.lt.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(ms)], bitmask)

    def accept(self, m, tok: int) -> bool:
        return m.consume_token(tok)


def allowed(row: torch.Tensor, vocab: int) -> list[int]:
    bits = ((row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).view(-1)[:vocab]
    return bits.nonzero().flatten().tolist()


def measure(lib, hf, vocab: int, eos: int, walks: int, seed: int = 0) -> dict:
    import jsonschema

    res = {"tokenizer_init_ms": 1e3 * lib.init_s}
    for kind, spec in (("schema", SCHEMA), ("object", None), ("regex", REGEX)):
        t = time.perf_counter()
        compiled = lib.compile(kind, spec)
        res[f"compile_{kind}_ms"] = 1e3 * (time.perf_counter() - t)
    compiled = lib.compile("schema", SCHEMA)
    ids = hf.encode(json.dumps(DOC), add_special_tokens=False)
    m, bm, fills = lib.matcher(compiled), lib.bitmask(1), []
    for tok in ids + [eos]:
        t = time.perf_counter()
        lib.fill(m, bm)
        fills.append(time.perf_counter() - t)
        assert lib.accept(m, tok), f"{lib.name} refused token {tok} of the valid document"
    fills.sort()
    res |= {
        "doc_tokens": len(ids),
        "fill_us_median": 1e6 * statistics.median(fills),
        "fill_us_mean": 1e6 * statistics.mean(fills),
        "fill_us_p99": 1e6 * fills[int(0.99 * (len(fills) - 1))],
        "fill_us_max": 1e6 * fills[-1],
    }
    # a batch of 128 requests at the same point of the document (a third of the way)
    ms = []
    for _ in range(128):
        m = lib.matcher(compiled)
        for tok in ids[: len(ids) // 3]:
            lib.accept(m, tok)
        ms.append(m)
    bm = lib.bitmask(128)
    lib.fill_batch(ms, bm)  # warm
    t = time.perf_counter()
    for _ in range(5):
        lib.fill_batch(ms, bm)
    res["fill_batch128_ms"] = 1e3 * (time.perf_counter() - t) / 5
    # validity of random walks
    rng, bm = random.Random(seed), lib.bitmask(1)
    invalid, unfinished, examples = 0, 0, []
    for _ in range(walks):
        m, toks = lib.matcher(compiled), []
        for _ in range(400):
            lib.fill(m, bm)
            a = allowed(bm[0], vocab)
            tok = rng.choice(a)
            if tok == eos:
                break
            assert lib.accept(m, tok)
            toks.append(tok)
        else:
            unfinished += 1
            continue
        text = hf.decode(toks)
        try:
            jsonschema.validate(json.loads(text), SCHEMA)
        except (ValueError, jsonschema.ValidationError) as e:
            invalid += 1
            if len(examples) < 2:
                examples.append({"text": text, "error": str(e).splitlines()[0][:120]})
    res |= {"walks": walks, "invalid": invalid, "unfinished": unfinished, "invalid_examples": examples}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="where the tokenizers are written (default: --out)")
    ap.add_argument("--walks", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="the demo tokenizer only, 10 walks")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from app.demo import write_tokenizer

    out = Path(args.out)
    work = Path(args.work or out)
    (work / "demo-tokenizer").mkdir(parents=True, exist_ok=True)
    write_tokenizer(work / "demo-tokenizer")
    toks = {"demo (478)": work / "demo-tokenizer"}
    if not args.smoke:
        toks["stdlib BPE (32000)"] = write_bpe_tokenizer(work / "bpe32k-tokenizer", 32000)
    walks = 10 if args.smoke else args.walks
    results: dict = {"walks": walks, "tokenizers": {}}
    for tname, path in toks.items():
        hf = AutoTokenizer.from_pretrained(str(path))
        vocab, eos = len(hf), hf.eos_token_id
        results["tokenizers"][tname] = {}
        for cls in (XGrammar, LLGuidance):
            try:
                lib = cls(hf, vocab, eos)
            except ImportError:
                print(f"{cls.name} is not installed: skipped")
                continue
            results["tokenizers"][tname][cls.name] = r = measure(lib, hf, vocab, eos, walks)
            print(tname, cls.name, {k: v for k, v in r.items() if k != "invalid_examples"})
    out.mkdir(parents=True, exist_ok=True)
    (out / "grammar_libs.json").write_text(json.dumps(results, indent=1))
    rows = [
        "| tokenizer | library | tokenizer set-up ms | compile schema / object / regex ms "
        "| fill µs median / mean / p99 "
        "| fill 128 requests ms | invalid of walks |",
        "|---|---|---|---|---|---|---|",
    ]
    for tname, libs in results["tokenizers"].items():
        for name, r in libs.items():
            rows.append(
                f"| {tname} | {name} | {r['tokenizer_init_ms']:.1f} | {r['compile_schema_ms']:.2f} / "
                f"{r['compile_object_ms']:.2f} / {r['compile_regex_ms']:.2f} | {r['fill_us_median']:.1f} / "
                f"{r['fill_us_mean']:.1f} / {r['fill_us_p99']:.1f} | {r['fill_batch128_ms']:.2f} | "
                f"{r['invalid']} of {r['walks']} |"
            )
    (out / "grammar_libs.md").write_text(
        "# Grammar libraries on sloray's tokenizers (CPU)\n\n`python benchmarks/grammar_libs.py --out DIR`: "
        "see the script's docstring.\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
