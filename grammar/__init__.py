"""einc.grammar: the .pc grammar (``pc.lark``, shipped as package data) and its parser."""

from .parser import parse

__all__ = ["parse"]
