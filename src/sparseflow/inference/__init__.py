"""Running sparse models fast on CPU: :func:`convert` swaps layers for sparse kernels where they beat dense."""

from sparseflow.inference.convert import LayerReport, convert, deconvert, inference_report

__all__ = ["LayerReport", "convert", "deconvert", "inference_report"]
