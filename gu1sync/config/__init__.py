"""config.yaml: its shape (`model`), the one function that loads it (`load_config`), the checks
across the whole file (`checks`) and the translation of errors for people (`problems`).

`load_config` reads the file strictly: every error in the file is reported at once, each with
file:line:column, and a missing environment variable stops start-up naming the variable. It reads
nothing but the file: config tests and the event files they name are read by `check` and
`simulate` (gu1sync.simulate), never at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path as FilePath

from pydantic import ValidationError

from gu1sync.core.yamlfile import ConfigError, Document, Problem, interpolate, parse_yaml

from .checks import check_config
from .model import Config
from .problems import problems_from, sort_problems


def parse_config(
    text: str, file: str = "config.yaml", environ: Mapping[str, str] | None = None, base_dir: str | None = None
) -> Config:
    """Validate config text; raise ConfigError listing every problem."""
    doc: Document = parse_yaml(text, file)
    if not isinstance(doc.data, dict):
        raise ConfigError([Problem(file, 1, 1, "", "the file must be a mapping with version: 1 and sources:")])
    problems = doc.duplicates + interpolate(doc, environ)
    found = check_config(doc)
    problems += [p for p in found if p.severity == "error"]
    warnings = [p for p in found if p.severity != "error"]
    config = None
    try:
        config = Config.model_validate(doc.data)
    except ValidationError as exc:
        problems += problems_from(exc, doc, Config)
    if problems or config is None:
        raise ConfigError(sort_problems(problems + warnings))
    config._warnings = sort_problems(warnings)
    config._file = file
    config._base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(file))
    config._digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    config._document, config._environ = doc, environ
    return config


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`."""
    try:
        text = FilePath(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(path, None, None, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, None, None, "", "the file is not UTF-8 text")]) from None
    return parse_config(text, path, environ)


def json_schema() -> str:
    """The JSON Schema of config.yaml, generated from the models that validate it."""
    schema = Config.model_json_schema(by_alias=True)
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://gu1-sync/config.schema.json",
        **schema,
        "title": "gu1-sync config.yaml",
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


__all__ = ["Config", "ConfigError", "Problem", "json_schema", "load_config", "parse_config"]
