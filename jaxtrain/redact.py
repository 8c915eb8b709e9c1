"""One rule for credentials, used by everything jaxtrain writes or prints.

config.json, provenance.json (the command line), TensorBoard hparams, error lines
and WORKDIR/jaxtrain.log are copied, shared and uploaded; a password or token in
them is leaked. Whatever is written goes through this module first:

- the password of a URL's userinfo: `postgresql://user:PASSWORD@host/db` ->
  `postgresql://user:***@host/db`, and a credential-named query parameter's value
  (`...?password=PASSWORD` -> `...?password=***`);
- the value of a key whose last component names a credential (password, passwd,
  secret, token, api_key/apikey, credential(s), access_key, secret_key, private_key).

Redacted values are never read back as values: a resume compares redacted with
redacted, and the secret comes again from where the user keeps it (the command line,
the environment).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from jaxtrain import errors

MASK = "***"
_CREDENTIAL = re.compile(
    r"(^|[_.-])(password|passwd|secret|token|api_?key|credentials?|access_?key|secret_?key|"
    r"private_?key)$", re.IGNORECASE)
# scheme://user:password@ -- the user name stays (it says whose), the password goes.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*:)([^\s/@]+)(@)")
# A credential in a URL's query: ?password=...&token=... (database URLs take both forms).
_QUERY_CREDENTIAL = re.compile(
    r"([?&](?:[a-zA-Z0-9]*[_.-])?(?:password|passwd|secret|token|api_?key|credentials?|"
    r"access_?key|secret_?key|private_?key)=)([^&#\s]+)", re.IGNORECASE)


def is_credential_key(key: str) -> bool:
  """Whether a (dotted) key's last component names a credential."""
  return bool(_CREDENTIAL.search(str(key).rsplit(".", 1)[-1]))


def text(s: str) -> str:
  """`s` with every URL password (userinfo or credential-named query value) as ***."""
  s = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), s)
  return _QUERY_CREDENTIAL.sub(lambda m: m.group(1) + MASK, s)


def value(key: str, v: Any) -> Any:
  """`v` as it may be written under `key`."""
  if is_credential_key(key) and v not in (None, "", MASK):
    return MASK
  if isinstance(v, str):
    return text(v)
  if isinstance(v, (list, tuple)):
    return type(v)(value(key, x) for x in v)
  if isinstance(v, dict):
    return tree(v, key)
  return v


def tree(record: dict, prefix: str = "") -> dict:
  """A nested dict (a config as JSON) with every credential redacted."""
  return {k: value(f"{prefix}.{k}" if prefix else k, v) for k, v in record.items()}


def argv(args: list[str]) -> list[str]:
  """A command line with credentials redacted: `--config.x.token=V` and
  `--config.x.token V` lose V, and every URL its password."""
  out, mask_next = [], False
  for arg in args:
    if mask_next:
      out.append(MASK)
      mask_next = False
      continue
    name, eq, val = arg.partition("=")
    flag = name.lstrip("-")
    if arg.startswith("-") and is_credential_key(flag):
      if eq:
        out.append(f"{name}={MASK}")
      else:
        out.append(arg)
        mask_next = True
      continue
    out.append(text(arg))
  return out


def resolve(key: str, value: Any) -> Any:
  """A string value given by reference: 'env:NAME' is the environment variable NAME,
  'file:PATH' the text of that file (stripped); anything else is itself.

  For secrets (a storage or data URL with a password): the config, config.json and
  every record keep the reference, never the secret, and a rerun or --mode=eval reads
  it again from where it is kept. (`file://...` is a URL, not a reference.)

  Raises:
    UserError: the variable is not set or the file cannot be read (naming `key`).
  """
  if not isinstance(value, str):
    return value
  if value.startswith("env:"):
    name = value[len("env:"):]
    if not name or name not in os.environ:
      raise errors.UserError(f"{key}={value!r}: the environment variable {name or '(empty)'} "
                             f"is not set; export {name or 'NAME'}=... before the run, or give "
                             "the value itself")
    return os.environ[name]
  if value.startswith("file:") and not value.startswith("file://"):
    path = Path(value[len("file:"):]).expanduser()
    try:
      return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
      raise errors.UserError(f"{key}={value!r}: cannot read {path} "
                             f"({getattr(e, 'strerror', None) or type(e).__name__}); give a "
                             "readable file, or the value itself") from None
  return value
