"""The inference-I/O layer with subword text models: texts → token ids → batches of named inputs, by length."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from maasctl.errors import UsageError
from maasctl.inputs.decode import by_length, in_input_order, load_source, stack_batches
from maasctl.inputs.types import ModelInput, Source
from maasctl.preprocess import SubwordEncoder, subword_spec

WORDS = "refund my invoice the app crashes book a flight to paris hotel seat login error"


def _model_input(pair: bool) -> ModelInput:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        [WORDS] * 3, trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    spec = subword_spec(tok.to_str(), 10, names, pair=pair)
    manifest = {"inputs": [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in names], "preprocessing": spec}
    return ModelInput.from_manifest(manifest)


@pytest.fixture(scope="module")
def model_input() -> ModelInput:
    return _model_input(pair=False)


def _body(doc: object) -> Source:
    return Source("<body>", "json", json.dumps(doc).encode())


def test_texts_become_named_inputs_padded_to_each_batchs_longest(model_input):
    texts = ["refund"] * 40 + ["book a flight to paris hotel seat login error refund"] + ["the app"] * 30
    samples = load_source(_body({"texts": texts}), model_input)
    batches = stack_batches(samples, model_input)
    assert [len(b) for b, _ in batches] == [32, 32, 7]
    widths = [x["input_ids"].shape[1] for _, x in batches]
    assert widths[0] < widths[-1] == 10  # the long text (cut at max_len 10) pads only its own batch
    assert widths == [max(s.tensor.shape[1] for s in b) for b, _ in batches]
    for _, x in batches:
        assert set(x) == {"input_ids", "attention_mask", "token_type_ids"}
        assert (x["attention_mask"].sum(1) == (x["input_ids"] != 0).sum(1)).all()
    ranked = [s for b, _ in batches for s in b]
    assert in_input_order(samples, [(s, s.name) for s in ranked]) == [s.name for s in samples]


def test_pairs_get_type_ids_and_empty_texts_are_problems():
    model_input = _model_input(pair=True)
    loaded = load_source(_body({"texts": [["refund", "my invoice"], ["", "x"], "hotel"]}), model_input)
    problems = [p for p in loaded if not hasattr(p, "tensor")]
    samples = [s for s in loaded if hasattr(s, "tensor")]
    assert [p.message for p in problems] == ["<body>[1]: an empty text"]
    assert [s.name for s in samples] == ["<body>[0]", "<body>[2]"]
    types = samples[0].tensor[1].tolist()
    assert types[0] == 0 and types[-1] == 1 and types == sorted(types)  # [CLS] A [SEP] (0s), then B [SEP] (1s)


def test_tensors_are_refused_with_where_to_send_them(model_input):
    with pytest.raises(UsageError, match="go to /infer"):
        load_source(_body([[1, 2, 3]]), model_input)


def test_same_ids_as_the_encoder_training_uses(model_input):
    texts = ["Refund my café invoice 🚀", "東京 hotel", "x " * 300]
    samples = load_source(_body({"texts": texts}), model_input)
    trained = SubwordEncoder(model_input.preprocessing).encode(texts)
    assert all(np.array_equal(s.tensor, t) for s, t in zip(samples, trained))
    assert by_length(samples, 2)[0][0].name == "<body>[1]"
