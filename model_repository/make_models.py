"""Writes the framework examples of this repository: small, real models, the same every time.

    python model_repository/make_models.py [REPOSITORY]    # default: the folder of this script

Needs numpy, onnx, torch and xgboost (`pip install -e '.[test]'` has them). The tests build their
models with the same functions. `sentiment` (the text_classifier ensemble's classifier) reads the
tokenizer's vocab.txt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

FEATURES, HIDDEN, CLASSES = 8, 16, 3


def weights(seed: int = 0, features: int = FEATURES, hidden: int = HIDDEN) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    arrays = (rng.standard_normal((features, hidden)) / np.sqrt(features), rng.standard_normal(hidden) / 10,
              rng.standard_normal((hidden, CLASSES)) / np.sqrt(hidden), rng.standard_normal(CLASSES) / 10)
    return tuple(a.astype(np.float32) for a in arrays)


def onnx_mlp(path: Path, seed: int = 0, features: int = FEATURES, hidden: int = HIDDEN) -> None:
    """x [batch, 8] -> relu(x W1 + b1) W2 + b2 -> softmax -> probabilities [batch, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w1, b1, w2, b2 = weights(seed, features, hidden)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def torch_mlp(seed: int = 0, features: int = FEATURES, hidden: int = HIDDEN):
    import torch
    w1, b1, w2, b2 = weights(seed, features, hidden)
    model = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(),
                                torch.nn.Linear(hidden, CLASSES))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w1.T.copy()))
        model[0].bias.copy_(torch.from_numpy(b1))
        model[2].weight.copy_(torch.from_numpy(w2.T.copy()))
        model[2].bias.copy_(torch.from_numpy(b2))
    return model.eval()


def torchscript_mlp(path: Path, seed: int = 0, features: int = FEATURES, hidden: int = HIDDEN) -> None:
    """The same MLP as TorchScript, returning logits: forward(x) -> [batch, 3]."""
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(torch_mlp(seed, features, hidden)).save(str(path))


def exported_mlp(path: Path, seed: int = 0) -> None:
    """The same MLP as a torch.export program with a dynamic batch dimension."""
    import torch
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(torch_mlp(seed), (torch.zeros(2, FEATURES),),
                                  dynamic_shapes={"input": {0: batch}})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))


def xgboost_classifier(path: Path, seed: int = 0, rounds: int = 20, depth: int = 3) -> None:
    """Three classes from four features: 20 rounds of trees of depth 3 on a synthetic, learnable
    problem."""
    import xgboost as xgb
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int) + (x[:, 2] > 0.8).astype(int)
    booster = xgb.train({"objective": "multi:softprob", "num_class": 3, "max_depth": depth, "eta": 0.3,
                         "seed": seed, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=rounds)
    path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path))


# the sentiment classifier's words, each with the class it counts for (its index)
SENTIMENT_CLASSES = ("negative", "neutral", "positive")
SENTIMENT_WORDS = {"good": 2, "great": 2, "fast": 2, "like": 1, "new": 1, "work": 1, "##ful": 1,
                   "slow": 0, "not": 0, "##less": 0}


def sentiment_onnx(path: Path, vocab: Path) -> None:
    """Token ids and attention mask (the tokenizer's outputs, [batch, tokens] INT64) -> class
    probabilities [batch, 3]: each token found in SENTIMENT_WORDS adds 2 to its class's score, the
    neutral class starts at 1, softmax. A bag of words, small enough to check by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    tokens = vocab.read_text().splitlines()
    weights = np.zeros((len(tokens), len(SENTIMENT_CLASSES)), np.float32)
    for i, token in enumerate(tokens):
        if token in SENTIMENT_WORDS:
            weights[i, SENTIMENT_WORDS[token]] = 2.0
    bias = np.array([0.0, 1.0, 0.0], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["weights", "INPUT_IDS"], ["scores"]),          # [b, t, 3]
         helper.make_node("Cast", ["ATTENTION_MASK"], ["mask"], to=TensorProto.FLOAT),
         helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),                 # [b, t, 1]
         helper.make_node("Mul", ["scores", "mask3"], ["kept"]),                     # padding adds 0
         helper.make_node("ReduceSum", ["kept", "tokens_axis"], ["summed"], keepdims=0),
         helper.make_node("Add", ["summed", "bias"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["PROBABILITIES"], axis=1)],
        "sentiment",
        [helper.make_tensor_value_info("INPUT_IDS", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("ATTENTION_MASK", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("PROBABILITIES", TensorProto.FLOAT,
                                       ["batch", len(SENTIMENT_CLASSES)])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(bias, "bias"),
         numpy_helper.from_array(np.array([2], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "tokens_axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def main(repository: Path) -> None:
    onnx_mlp(repository / "onnx_mlp" / "1" / "model.onnx")
    torchscript_mlp(repository / "torch_mlp" / "1" / "model.pt")
    xgboost_classifier(repository / "xgboost_classifier" / "1" / "model.json")
    sentiment_onnx(repository / "sentiment" / "1" / "model.onnx",
                   repository / "tokenizer" / "1" / "vocab.txt")
    for name in ("onnx_mlp", "torch_mlp", "xgboost_classifier", "sentiment"):
        print(f"wrote {repository / name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
