"""Pretrained text encoders: exported encoder latency and server-side tokenization throughput, in one run.

    python benchmarks/text.py [--hidden 384 --layers 6 --heads 12] [--seq 128] [--repeats 20] [--threads N] [--json]

A randomly initialised BERT-style encoder of MiniLM's size by default (6 layers, hidden 384: ~22M parameters;
weights do not change latency) is exported the way `maasctl export` exports hf_encoder models
(maasctl/export/text_export.py), quantized int8 dynamically as `--quantize int8` does, and timed at batch 1 and
32, sequence `--seq`: onnxruntime fp32 and int8 against PyTorch eager (median of `--repeats` runs). Then the
serving input path (maasctl/inputs: JSON {"texts": [...]} decoded, tokenized with `tokenizers`, batched by
length, padded) is timed on 4,096 texts of 5-60 words with a WordPiece tokenizer trained on them: texts/s.
`--train` adds fine-tuning throughput (sequences/s, AMP on CUDA) on the device torch picks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maasctl.export.compress import latency_ms


def make_encoder(hidden: int, layers: int, heads: int, vocab: int = 30522):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from maasctl.models.hf import HFEncoder

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        num_labels=4,
    )
    return HFEncoder(BertForSequenceClassification(config).eval(), uses_types=True)


def encoder_latency(args) -> dict:
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from maasctl.export import text_export

    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_encoder(args.hidden, args.layers, args.heads)
    params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    packed = np.zeros((32, 3, args.seq), dtype=np.int64)
    packed[:, 0] = rng.integers(1000, 30000, (32, args.seq))
    packed[:, 2] = 1
    result: dict = {"parameters": params, "seq": args.seq}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        text_export.export(model, packed, fp32, opset=18)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = args.threads
        sessions = {
            name: ort.InferenceSession(str(p), sess_options=options, providers=["CPUExecutionProvider"])
            for name, p in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8))
        }
        for batch in (1, 32):
            feeds = text_export.packed_feeds(packed[:batch], model.input_names)
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            with torch.inference_mode():
                result[f"pytorch eager b{batch} ms"] = latency_ms(lambda: model(**tensors), args.repeats)  # noqa: B023
            for name, s in sessions.items():
                result[f"{name} b{batch} ms"] = latency_ms(lambda: s.run(["logits"], feeds), args.repeats)  # noqa: B023
        result["bytes fp32"], result["bytes int8"] = fp32.stat().st_size, int8.stat().st_size
    return result


def tokenization_throughput(n: int = 4096) -> dict:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    from maasctl.inputs.decode import load_source, stack_batches
    from maasctl.inputs.types import ModelInput, Source
    from maasctl.preprocess import subword_spec

    rng = np.random.default_rng(0)
    words = ["payment", "refund", "café", "naïve", "login", "crash", "東京", "flight", "🚀", "invoice", "hotel", "seat"]
    texts = [" ".join(rng.choice(words, int(rng.integers(5, 60)))) for _ in range(n)]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    spec = subword_spec(tok.to_str(), 128, ["input_ids", "attention_mask", "token_type_ids"])
    manifest = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}], "preprocessing": spec}
    model_input = ModelInput.from_manifest(manifest)
    body = json.dumps({"texts": texts}).encode()

    def once() -> None:
        stack_batches(load_source(Source("<body>", "json", body), model_input), model_input)

    seconds = latency_ms(once, 5, warmup=1) / 1000
    return {"texts": n, "texts/s (decode + tokenize + batch by length + pad)": round(n / seconds)}


def train_throughput(args) -> dict:
    """Sequences/s of fine-tuning steps (AdamW, AMP bf16/fp16 on CUDA) at batch 32, seq `--seq`."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_encoder(args.hidden, args.layers, args.heads).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    ids = torch.randint(1000, 30000, (32, args.seq), device=device)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 4, (32,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(ids, mask, torch.zeros_like(ids)), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    ms = latency_ms(step, args.repeats)
    return {
        "device": str(device),
        "amp": str(dtype) if device.type == "cuda" else "off",
        "train seq/s": round(32000 / ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch and onnxruntime threads (0: their defaults)")
    parser.add_argument("--train", action="store_true", help="also fine-tuning throughput")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = {} if args.skip_latency else encoder_latency(args)
    result.update(tokenization_throughput())
    if args.train:
        result.update(train_throughput(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>48}: {value:.3f}" if isinstance(value, float) else f"{key:>48}: {value}")


if __name__ == "__main__":
    main()
