"""A filter with a secret among its options (``imapproxy check`` must mask it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imapproxy.filters import Filter
from imapproxy.filters.api import FilterFactory
from imapproxy.filters.registry import check_options


class Secretive(Filter):
    name = "secretive"


def make(options: Mapping[str, Any], path: str) -> FilterFactory:
    check_options(options, path, {"api_token": str})
    return lambda info: Secretive()
