"""Pretrained text encoders end to end, offline: a tiny BERT-style model with a WordPiece tokenizer (built here,
saved with save_pretrained) → train → export (fp32 and int8) → evaluate → serve → predict, and the refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import intent_rows, make_tiny_bert, run_cli, start_server, stop_server

from maasctl.errors import UsageError

HARD_TEXTS = [
    "Crème brûlée à la façon de grand-mère, s'il vous plaît",
    "the app crashes 🚀🔥 when I upload 😡",
    "東京への航空券を予約したい 我的发票错了",
    "ﬁnancial Ｆｕｌｌｗｉｄｔｈ naïve coöperate",
    "refund " * 500,  # far past max_len: truncated as in training
]


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["text", "label"])
        w.writeheader()
        w.writerows(rows)


def _recipe(ws: Path, name: str, model: dict | None = None, **data: object) -> Path:
    doc = {
        "name": name,
        "data": {"source": "text", "path": "intents.csv", "max_len": 24, **data},
        "model": model or {"name": "hf_encoder", "params": {"pretrained": "tiny-bert"}},
        "train": {"epochs": 2, "batch_size": 16, "optimizer": {"lr": 0.003, "layer_decay": 0.9}, "warmup_epochs": 0.5},
    }
    path = ws / f"{name}.yaml"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def text_ws(tmp_path_factory) -> Path:
    """Trained once, exported fp32 (version 1) and int8 (version 2)."""
    ws = tmp_path_factory.mktemp("hftext")
    rows = intent_rows()
    rows[3]["text"] = "   "  # a blank: dropped and counted
    _write_csv(ws / "intents.csv", rows)
    make_tiny_bert(ws / "tiny-bert", [r["text"] for r in rows])
    trained = run_cli("train", str(_recipe(ws, "intents")), "--set", "train.grad_accumulation=2", cwd=ws)
    assert "dropped 1 record(s)" in trained.stderr and "blank" in trained.stderr
    run_cli("export", "artifacts/runs/intents", cwd=ws)
    quantized = run_cli("export", "artifacts/runs/intents", "--quantize", "int8", "--force", "--json", cwd=ws)
    assert json.loads(quantized.stdout)["compression"]["mode"] == "dynamic"
    return ws


def test_export_files_the_tokenizer_and_three_dynamic_inputs(text_ws):
    manifest = json.loads((text_ws / "artifacts/models/intents/1/model.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i["shape"] == [-1, -1] for i in manifest["inputs"])
    tok = manifest["preprocessing"]["tokenizer"]
    assert (text_ws / "artifacts/models/intents/1" / tok["file"]).is_file() and len(tok["sha256"]) == 64
    assert "tokenizer_json" not in manifest["preprocessing"]  # filed as a file, not inlined
    assert manifest["parity"]["top1_agreement"] == 1.0


def test_a_changed_tokenizer_file_is_refused_at_load(text_ws, tmp_path):
    import shutil

    copy = tmp_path / "repo" / "intents" / "1"
    shutil.copytree(text_ws / "artifacts/models/intents/1", copy)
    (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("[UNK]", "[UNX]"))
    proc = run_cli("predict", str(copy), "--text", "hello", check=False)
    assert proc.returncode == 3 and "tokenizer" in proc.stderr and "sha256" in proc.stderr


def test_served_token_ids_equal_training_token_ids(text_ws, tmp_path, monkeypatch):
    """The training data path (build_dataset) and the serving input path (the filed, verified tokenizer) give the
    same ids for accents, emoji, CJK, compatibility forms and a text far past max_len."""
    from maasctl.data import build_dataset
    from maasctl.inputs.decode import load_source
    from maasctl.inputs.types import ModelInput, Source
    from maasctl.recipe import load_recipe
    from maasctl.repository import ModelRepository
    from maasctl.runtime import load_model

    labels = ["billing", "tech", "travel"]
    rows = [{"text": t, "label": labels[i % 3]} for i, t in enumerate(HARD_TEXTS * 6)]
    _write_csv(tmp_path / "hard.csv", rows)
    monkeypatch.chdir(text_ws)  # the recipe names its model folder relative to where training ran
    recipe = load_recipe(text_ws / "artifacts/runs/intents/recipe.yaml")
    recipe.data.path = str(tmp_path / "hard.csv")
    data = build_dataset(recipe.data, 0)
    train_ids = {}
    for split in (data.train, data.validation, data.test):
        for x in split.x:
            n = int(x[2].sum())
            train_ids.setdefault(n, set()).add(tuple(x[0, :n]))
    model = load_model(ModelRepository(text_ws / "artifacts/models").get("intents", 1))
    spec = ModelInput.from_manifest(model.manifest)
    body = json.dumps({"texts": HARD_TEXTS + [""]}).encode()
    loaded = load_source(Source("<body>", "json", body), spec)
    samples = [s for s in loaded if hasattr(s, "tensor")]
    assert [p.message for p in loaded if not hasattr(p, "tensor")] == ["<body>[5]: an empty text"]
    assert len(samples) == len(HARD_TEXTS)
    for s in samples:
        ids = tuple(s.tensor[0])
        assert ids in train_ids.get(len(ids), set()), s.name
    assert max(len(s.tensor[0]) for s in samples) == 24  # the long one, cut at max_len like training
    long = max(samples, key=lambda s: len(s.tensor[0]))
    assert (long.tensor[0][0], long.tensor[0][-1]) == (2, 3)  # [CLS] ... [SEP]: the tokenizer's own truncation


def test_local_and_served_predictions_agree(text_ws):
    texts = ["my invoice is wrong please", "book a flight to Paris", "東京 🚀", "cannot log in " * 40]
    (text_ws / "q.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    local = run_cli("predict", "intents:1", "q.txt", "--repo", "artifacts/models", "--json", cwd=text_ws)
    local_labels = [p["label"] for p in json.loads(local.stdout)["predictions"]]
    assert [p["input"] for p in json.loads(local.stdout)["predictions"]] == [f"q.txt[{i}]" for i in range(4)]
    server = start_server(text_ws / "artifacts/models", "--version-policy", "all")
    try:
        remote = run_cli(
            "predict", "intents:1", "q.txt", "--url", server.url, "--json", "--batch-size", "2", cwd=text_ws
        )
        assert [p["label"] for p in json.loads(remote.stdout)["predictions"]] == local_labels
        status, doc = server.post(
            "/v2/models/intents/versions/1/predict",
            json.dumps({"texts": texts}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, doc
        assert [p["label"] for p in doc["predictions"]] == local_labels  # input order, though batched by length
        status, doc = server.post(
            "/v2/models/intents/versions/1/predict",
            json.dumps({"texts": ["ok", ""]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 400 and "an empty text" in doc["error"]
        status, doc = server.post(
            "/v2/models/intents/predict",
            json.dumps({"texts": ["x " * 100_000]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200 and len(doc["predictions"]) == 1  # truncated to max_len; int8 version 2 answers
        status, _ = server.get("/v2/health/ready")
        assert status == 200
    finally:
        stop_server(server)


def test_evaluate_needs_only_the_filed_version_and_the_data(text_ws, tmp_path):
    """evaluate encodes the recipe's splits with the filed tokenizer: no model folder needed."""
    import shutil

    shutil.copy(text_ws / "intents.csv", tmp_path / "intents.csv")  # the data, not tiny-bert/
    repo = str(text_ws / "artifacts/models")
    proc = run_cli("evaluate", "intents:1", "--repo", repo, "--json", cwd=tmp_path)
    manifest = json.loads((text_ws / "artifacts/models/intents/1/model.json").read_text())
    assert json.loads(proc.stdout)["metrics"]["accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"])
    bench = run_cli("benchmark", "intents:1", "intents:2", "--repo", repo, "--repeats", "2", "--json", cwd=tmp_path)
    fp32, int8 = json.loads(bench.stdout)
    assert fp32["latency_ms_b32"] > 0 and int8["bytes"] < fp32["bytes"]  # the several inputs were fed


# --- refusals before training ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_ws(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("hfbad")
    rows = intent_rows(2)
    _write_csv(ws / "intents.csv", rows)
    make_tiny_bert(ws / "tiny-bert", [r["text"] for r in rows], positions=16)
    return ws


def _trainer_error(ws: Path, monkeypatch, **data: object) -> str:
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    monkeypatch.chdir(ws)
    with pytest.raises(UsageError) as info:
        Trainer(load_recipe(_recipe(ws, "bad", **data)))
    assert info.value.exit_code == 2
    return str(info.value)


def test_max_len_beyond_the_position_limit(bad_ws, monkeypatch):
    message = _trainer_error(bad_ws, monkeypatch, max_len=64)
    assert "data.max_len 64" in message and "16" in message


def test_folder_without_a_tokenizer(bad_ws, monkeypatch, tmp_path):
    import shutil

    shutil.copytree(bad_ws / "tiny-bert", bad_ws / "no-tok", dirs_exist_ok=True)
    (bad_ws / "no-tok" / "tokenizer.json").unlink()
    message = _trainer_error(bad_ws, monkeypatch, max_len=8, tokenizer="no-tok")
    assert "no-tok has no tokenizer.json" in message


def test_a_tokenizer_larger_than_the_embeddings(bad_ws, monkeypatch):
    import shutil

    from tokenizers import Tokenizer

    shutil.copytree(bad_ws / "tiny-bert", bad_ws / "big-tok", dirs_exist_ok=True)
    tok = Tokenizer.from_file(str(bad_ws / "big-tok" / "tokenizer.json"))
    tok.add_tokens([f"extra{i}" for i in range(500)])
    tok.save(str(bad_ws / "big-tok" / "tokenizer.json"))
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    monkeypatch.chdir(bad_ws)
    recipe = _recipe(bad_ws, "big", max_len=8)
    doc = json.loads(recipe.read_text())
    doc["model"]["params"]["pretrained"] = "big-tok"
    recipe.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="tokenizer has .* tokens but big-tok's embeddings hold"):
        Trainer(load_recipe(recipe))


def test_a_hub_id_not_in_the_cache_names_what_to_download(bad_ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(bad_ws / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from maasctl.data.text import resolve_pretrained

    with pytest.raises(UsageError, match="hf download someone/minilm"):
        resolve_pretrained("someone/minilm")


def test_non_utf8_text_exits_2_before_training(bad_ws):
    (bad_ws / "latin1.csv").write_bytes("text,label\ncaf\xe9 au lait,a\nthe tea,b\n".encode("latin-1"))
    recipe = _recipe(bad_ws, "latin", path="latin1.csv", max_len=8)
    proc = run_cli("train", str(recipe), cwd=bad_ws, check=False)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr, proc.stderr
    assert not (bad_ws / "artifacts/runs/latin").exists()


def test_subword_tokenizer_trained_for_a_from_scratch_model(bad_ws):
    """data.tokenizer: wordpiece trains a tokenizer on the training split; a GRU reads its ids; the tokenizer is
    filed with the model and predict tokenizes with it (a single-input subword model, padded to max_len)."""
    gru = {"name": "gru", "params": {"hidden": 16, "embed_dim": 8}}
    recipe = _recipe(bad_ws, "scratch", model=gru, max_len=12, tokenizer="wordpiece", vocab_size=60)
    run_cli("train", str(recipe), "--set", "train.epochs=1", cwd=bad_ws)
    run_cli("export", "artifacts/runs/scratch", cwd=bad_ws)
    manifest = json.loads((bad_ws / "artifacts/models/scratch/1/model.json").read_text())
    assert manifest["preprocessing"]["kind"] == "subword" and manifest["preprocessing"]["vocab_size"] <= 60
    assert [i["name"] for i in manifest["inputs"]] == ["input"]
    out = run_cli("predict", "scratch", "--text", "refund my café bill", "--text", "🚀 " * 50, "--json", cwd=bad_ws)
    predictions = json.loads(out.stdout)["predictions"]
    assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"billing", "tech", "travel"}
    # tokenizers' trainers are not deterministic: export and evaluate encode with the trained model's own tokenizer
    evaluated = json.loads(run_cli("evaluate", "scratch", "--json", cwd=bad_ws).stdout)
    assert evaluated["metrics"]["accuracy"] == pytest.approx(manifest["metrics"]["test_accuracy"])


def test_text_pairs_train_with_token_type_ids(bad_ws, monkeypatch):
    """data.text_pair_column: both texts in one sequence, the second marked by token type 1."""
    from maasctl.data import build_dataset
    from maasctl.recipe import load_recipe

    rows = [{"text": r["text"], "other": "refund please", "label": r["label"]} for r in intent_rows(2)]
    with open(bad_ws / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["text", "other", "label"])
        w.writeheader()
        w.writerows(rows)
    monkeypatch.chdir(bad_ws)
    recipe = load_recipe(_recipe(bad_ws, "pairs", path="pairs.csv", max_len=16, text_pair_column="other"))
    data = build_dataset(recipe.data, 0)
    assert data.input_kind == "subword" and data.preprocessing["pair"] is True
    x = data.train.x
    assert x.shape[1:] == (3, 16) and (x[:, 1].max(1) == 1).all()  # every pair has a second segment
    assert ((x[:, 1] == 1) <= (x[:, 2] == 1)).all()  # type 1 only on real tokens
