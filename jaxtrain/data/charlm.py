"""`charlm`: a character-level language-modelling dataset made offline from Python's own sources.

The text is a FIXED list of standard-library source files read from the
interpreter that prepares the dataset (`sysconfig` stdlib path), so nothing is
downloaded and the data is the same on every machine with the same Python
version (the version and a sha256 of the text are recorded in the dataset's
description). Tokens are bytes (vocabulary 256; the sources are almost all
ASCII, so a byte is a character). The split is by file: the train files and the
test files share no text.

Each example is one window of `WINDOW` consecutive bytes of the split's files
concatenated in list order, cut without overlap:

  inputs  int32 [WINDOW]   bytes t .. t+WINDOW-1
  labels  int32 [WINDOW]   bytes t+1 .. t+WINDOW (the next byte at every position)

Defining the class registers the name `charlm` with TFDS.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

WINDOW = 128
VOCAB_SIZE = 256

# Paths relative to the stdlib directory. Modules that exist in every Python
# from 3.8 to 3.13; changing either list changes the dataset (bump VERSION).
TRAIN_FILES = (
    "argparse.py", "bisect.py", "calendar.py", "collections/__init__.py", "configparser.py",
    "contextlib.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py", "fractions.py",
    "functools.py", "heapq.py", "inspect.py", "json/decoder.py", "json/encoder.py",
    "logging/__init__.py", "pathlib.py", "random.py", "shutil.py", "statistics.py",
    "string.py", "tempfile.py", "textwrap.py", "typing.py",
)
TEST_FILES = ("abc.py", "ast.py", "copy.py", "pprint.py", "tokenize.py")


def stdlib_dir() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def read_bytes(files: tuple[str, ...]) -> bytes:
  """The files' bytes concatenated in the given order."""
  root = stdlib_dir()
  return b"".join((root / name).read_bytes() for name in files)


def windows(text: bytes, window: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping (inputs, next-byte labels) windows of `text`, int32 [N, window] each."""
  tokens = np.frombuffer(text, np.uint8).astype(np.int32)
  count = (len(tokens) - 1) // window
  inputs = tokens[: count * window].reshape(count, window)
  labels = tokens[1: count * window + 1].reshape(count, window)
  return inputs, labels


class Charlm(tfds.core.GeneratorBasedBuilder):
  """Byte-level next-character prediction on Python standard-library sources."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"First release: {len(TRAIN_FILES)} train files, "
                            f"{len(TEST_FILES)} test files, windows of {WINDOW} bytes."}

  def _info(self) -> tfds.core.DatasetInfo:
    digest = hashlib.sha256(read_bytes(TRAIN_FILES) + read_bytes(TEST_FILES)).hexdigest()
    # Built directly (not dataset_info_from_configs): see builders.py.
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"Bytes of Python {platform.python_version()} standard-library sources "
            f"(sha256 {digest[:16]}); train: {', '.join(TRAIN_FILES)}; "
            f"test: {', '.join(TEST_FILES)}."),
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(WINDOW,), dtype=np.int32),
            # A Tensor, not a Sequence of ClassLabel: data sources decode a Sequence to a
            # Python list, which batches wrongly. The class count goes in the metadata.
            "labels": tfds.features.Tensor(shape=(WINDOW,), dtype=np.int32),
        }),
        supervised_keys=("inputs", "labels"),
        metadata=tfds.core.MetadataDict(num_classes=VOCAB_SIZE),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The text ships with Python itself.
    return {
        "train": self._generate_examples(TRAIN_FILES),
        "test": self._generate_examples(TEST_FILES),
    }

  def _generate_examples(self, files):
    inputs, labels = windows(read_bytes(files))
    for i in range(len(inputs)):
      yield i, {"inputs": inputs[i], "labels": labels[i]}
