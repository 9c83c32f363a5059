"""Charts the benchmarks write as PNG: the library's own learning-curve writer."""

from einc.train.history import curve_png

__all__ = ["curve_png"]
