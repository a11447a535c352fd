"""Service configuration from command-line flags, environment variables and a TOML file.

Precedence: flag > environment variable (``XDS_<SERVICE>_<NAME>``) > TOML section
``[<service>]`` > default. Each service declares its options once as :class:`Option`.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # e.g. "database-url"
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch (store_true)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def env_name(service: str, option: Option) -> str:
    return f"XDS_{service.upper().replace('-', '_')}_{option.dest.upper()}"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def build_parser(service: str, description: str, options: Sequence[Option]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"xds-{service}",
        description=description,
        epilog=(
            f"Every option can also be set by the environment variable XDS_{service.upper().replace('-', '_')}_"
            f"<NAME> or in the [{service}] section of the TOML file given by --config. Flags win over the "
            "environment, which wins over the file."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="TOML configuration file", default=None)
    for opt in options:
        env = env_name(service, opt)
        if opt.flag:
            parser.add_argument(f"--{opt.name}", dest=opt.dest, action="store_true", default=None,
                                help=f"{opt.help} [env {env}]")
        else:
            parser.add_argument(f"--{opt.name}", dest=opt.dest, type=opt.type, default=None,
                                help=f"{opt.help} [env {env}; default {opt.default!r}]")
    return parser


def resolve(
    service: str, options: Sequence[Option], args: argparse.Namespace, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """Merge flags, environment and the TOML file into a dict keyed by option dest."""
    environ = dict(os.environ) if environ is None else environ
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None)
    if config_path is not None:
        with open(config_path, "rb") as fh:
            data = tomllib.load(fh)
        section = data.get(service, data)
        file_values = {str(k).replace("-", "_"): val for k, val in section.items()}
    settings: dict[str, Any] = {}
    for opt in options:
        value = getattr(args, opt.dest, None)
        if value is None:
            raw = environ.get(env_name(service, opt))
            if raw is not None:
                value = _parse_bool(raw) if opt.flag else opt.type(raw)
        if value is None and opt.dest in file_values:
            raw = file_values[opt.dest]
            value = _parse_bool(raw) if opt.flag else (opt.type(raw) if isinstance(raw, str) else raw)
        if value is None:
            # Defaults are written as text ("data/registry") like flags; give them the option's type too.
            value = opt.type(opt.default) if isinstance(opt.default, str) and not opt.flag else opt.default
        settings[opt.dest] = value
    return settings
