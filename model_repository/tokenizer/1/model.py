"""WordPiece tokenization as BERT does it: lower-case, split words from punctuation, then cut each
word into the longest pieces found in vocab.txt ("##" marks a piece inside a word), wrapped in
[CLS] ... [SEP]. A word with no way to be cut becomes [UNK]."""
import json
import re
from pathlib import Path

import numpy as np

from naiad.backends.python_api import InferenceResponse, Tensor, TritonError

WORDS = re.compile(r"\w+|[^\w\s]")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_length = int(config["parameters"]["max_length"]["string_value"])
        lines = (Path(__file__).parent / "vocab.txt").read_text().splitlines()
        self.vocab = {token: i for i, token in enumerate(lines)}
        self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]

    def pieces(self, word: str) -> list[int]:
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk]
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [self.cls]
        for word in WORDS.findall(text.lower()):
            ids += self.pieces(word)
        return ids[:self.max_length - 1] + [self.sep]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                texts = [t.decode() for t in request.input("TEXT").reshape(-1)]
            except UnicodeDecodeError as e:
                responses.append(InferenceResponse(error=TritonError(
                    f"TEXT must be UTF-8 text: {e}", TritonError.INVALID_ARG)))
                continue
            rows = [self.encode(text) for text in texts]
            width = max(len(row) for row in rows)
            ids = np.full((len(rows), width), self.pad, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                ids[i, :len(row)] = row
                mask[i, :len(row)] = 1
            responses.append(InferenceResponse([Tensor("INPUT_IDS", ids), Tensor("ATTENTION_MASK", mask)]))
        return responses
